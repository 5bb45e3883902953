"""The filesystem through a real FUSE mount: names, sizes, bytes, concurrency, errors, lifecycle."""

import errno
import filecmp
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import SKIP, Mount, Results, phantom, read_tiff, run  # noqa: E402

WIDTH, ROWS, PROJ = 128, 12, 120


def slice_names(rows):
    return [f"slice_{z:05d}.tif" for z in range(rows)]


def main():
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("SKIP: /dev/fuse or fusermount3 is missing; FUSE tests cannot run here")
        sys.exit(SKIP)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-mount-")
    scan = phantom(os.path.join(tmp, "scan"), WIDTH, ROWS, PROJ, "--photons", 20000)
    exported = os.path.join(tmp, "export")
    run("export", scan, exported)

    with Mount(scan) as m:
        def listing():
            assert sorted(os.listdir(m.dir)) == [".tomofs", "denoised", "rings-removed", "scan.json",
                                               "slices", "volumes"]
            assert os.listdir(m.path("slices")) == slice_names(ROWS)  # numeric order
            assert os.listdir(m.path("denoised")) == ["README.txt"]
            assert "train" in open(m.path("denoised", "README.txt")).read()
            info = json.load(open(m.path("scan.json")))
            assert info["detector"]["width"] == WIDTH and info["slices"] == ROWS
            assert info["projections"]["count"] == PROJ

        def metadata_never_computes():
            for name in slice_names(ROWS):
                st = os.stat(m.path("slices", name))
                assert st.st_size == 4096 + WIDTH * WIDTH * 4
                assert st.st_blocks == (st.st_size + 511) // 512
            assert not os.path.exists(m.path("slices", "slice_99999.tif"))
            assert not os.path.exists(m.path("slices", "slice_1.tif"))
            assert m.status()["slices_computed"] == "0"

        def sizes_equal_bytes_and_export():
            for name in slice_names(ROWS):
                data = open(m.path("slices", name), "rb").read()
                assert len(data) == os.stat(m.path("slices", name)).st_size
                assert data == open(os.path.join(exported, name), "rb").read(), name

        def cp_and_tifffile():
            dest = os.path.join(tmp, "copied")
            subprocess.run(["cp", "-r", m.path("slices"), dest], check=True)
            assert filecmp.cmpfiles(dest, exported, slice_names(ROWS), shallow=False)[0] == \
                slice_names(ROWS)
            for name in slice_names(ROWS):
                img = read_tiff(m.path("slices", name))
                assert img.dtype == np.float32 and img.shape == (WIDTH, WIDTH)
                assert np.isfinite(img).all()

        def memory_mapping():
            import tifffile
            arr = tifffile.memmap(m.path("slices", "slice_00005.tif"), mode="r")
            assert np.array_equal(arr, read_tiff(os.path.join(exported, "slice_00005.tif")))

        def writes_are_refused():
            for action in [lambda: open(m.path("slices", "slice_00001.tif"), "r+b"),
                           lambda: open(m.path("slices", "new.tif"), "wb"),
                           lambda: os.mkdir(m.path("newdir")),
                           lambda: os.unlink(m.path("scan.json")),
                           lambda: os.truncate(m.path("slices", "slice_00001.tif"), 0)]:
                try:
                    action()
                except OSError as e:
                    assert e.errno == errno.EROFS, e
                else:
                    raise AssertionError("a write succeeded")

        def rings_removed_folder():
            out = os.path.join(tmp, "export-rings")
            run("export", scan, out, "--variant", "rings-removed", "--range", "3:5")
            info = json.load(open(m.path("scan.json")))
            assert info["variants"]["rings-removed"]["parameters"].endswith("ring_dim=1"), info
            for name in ["slice_00003.tif", "slice_00004.tif"]:
                served = open(m.path("rings-removed", name), "rb").read()
                assert served == open(os.path.join(out, name), "rb").read(), name
                assert served != open(m.path("slices", name), "rb").read(), name

        r.check("listing and scan.json", listing)
        r.check("metadata never computes", metadata_never_computes)
        r.check("rings-removed/ serves what export writes for that variant", rings_removed_folder)
        r.check("st_size equals the bytes served, which equal export", sizes_equal_bytes_and_export)
        r.check("cp -r and tifffile read every slice", cp_and_tifffile)
        r.check("slices can be memory-mapped", memory_mapping)
        r.check("every write-type operation gives EROFS", writes_are_refused)

    # a fresh mount: nothing cached, so concurrent readers contend for the same slices
    with Mount(scan) as m:
        def concurrent_readers():
            rng = random.Random(3)
            failures = []

            def reader(seed):
                local = random.Random(seed)
                for _ in range(10):
                    name = f"slice_{local.randrange(ROWS):05d}.tif"
                    with open(m.path("slices", name), "rb") as f:
                        # out-of-order partial reads, then the whole file
                        size = os.fstat(f.fileno()).st_size
                        off = local.randrange(size)
                        f.seek(off)
                        part = f.read(5000)
                        f.seek(0)
                        whole = f.read()
                    ref = open(os.path.join(exported, name), "rb").read()
                    if whole != ref or part != ref[off:off + 5000]:
                        failures.append(name)

            threads = [threading.Thread(target=reader, args=(rng.random(),)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not failures, failures
            st = m.status()
            # single flight: no slice was computed twice
            assert int(st["slices_computed"]) <= ROWS, st

        r.check("8 concurrent readers of random slices get correct data", concurrent_readers)

        def sigterm_unmounts():
            pid = m.pid()
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 30
            while (os.path.ismount(m.dir) or os.path.exists(f"/proc/{pid}")) and \
                    time.time() < deadline:
                time.sleep(0.05)
            assert not os.path.ismount(m.dir), "still mounted after SIGTERM"
            assert not os.path.exists(f"/proc/{pid}"), "daemon still running after SIGTERM"

        r.check("SIGTERM unmounts cleanly", sigterm_unmounts)

    def umount_leaves_no_process():
        with Mount(scan) as m:
            pid = m.pid()
            open(m.path("slices", "slice_00000.tif"), "rb").read(100)
            m.unmount()
            assert not os.path.ismount(m.dir)
            assert not os.path.exists(f"/proc/{pid}"), "daemon left behind"

    r.check("after umount no process is left", umount_leaves_no_process)

    def broken_input_gives_eio_and_keeps_serving():
        broken = os.path.join(tmp, "late-broken")
        shutil.copytree(scan, broken, ignore=shutil.ignore_patterns("truth"))
        # the copy has the scan's fingerprint: without cache=none its slices would come from
        # the disk cache filled above, and the damage would never be read
        with Mount(broken, "-o", "cache=none") as m:
            # damage one projection after the mount validated it: its second half is gone
            frame = sorted(f for f in os.listdir(broken) if f.startswith("q"))[20]
            path = os.path.join(broken, frame)
            os.truncate(path, os.path.getsize(path) - WIDTH * 2 * (ROWS // 2))
            try:
                open(m.path("slices", f"slice_{ROWS - 1:05d}.tif"), "rb").read()
            except OSError as e:
                assert e.errno == errno.EIO, e
            else:
                raise AssertionError("read of a slice with a truncated frame succeeded")
            # rows before the damage are still served, correctly
            data = open(m.path("slices", "slice_00000.tif"), "rb").read()
            assert data == open(os.path.join(exported, "slice_00000.tif"), "rb").read()
            assert int(m.status()["errors"]) >= 1

    r.check("bad input answers EIO for that file and the mount keeps serving",
            broken_input_gives_eio_and_keeps_serving)

    def refuse(name, damage, expect):
        broken = os.path.join(tmp, "broken-" + name)
        shutil.copytree(scan if name != "tiff8" else tif_scan, broken,
                        ignore=shutil.ignore_patterns("truth"))
        damage(broken)
        mnt = tempfile.mkdtemp(prefix="tomofs-mnt-")
        p = run("mount", broken, mnt, check=False, timeout=120)
        mounted = os.path.ismount(mnt)
        if mounted:
            run("umount", mnt)
        os.rmdir(mnt)
        assert p.returncode != 0, f"{name}: mount succeeded"
        assert not mounted, f"{name}: something was mounted"
        msg = p.stderr.strip()
        assert len(msg.splitlines()) == 1, f"{name}: expected one line, got {msg!r}"
        assert expect in msg, f"{name}: {msg!r} does not name {expect!r}"
        print(f"     {name}: {msg}")

    frames = sorted(f for f in os.listdir(scan) if f.startswith("q"))
    victim = frames[len(frames) // 2]

    def edit_log(broken, fn):
        path = os.path.join(broken, "output.log")
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join(fn(lines)) + "\n")

    def truncate(broken):
        os.truncate(os.path.join(broken, victim), 100)

    def mis_size(broken):
        # a valid HiPic frame, but half as wide as every other one
        path = os.path.join(broken, victim)
        data = open(path, "rb").read()
        comment = int.from_bytes(data[2:4], "little")
        header = bytearray(data[:64 + comment])
        header[4:6] = (WIDTH // 2).to_bytes(2, "little")
        open(path, "wb").write(bytes(header) + bytes(WIDTH * ROWS))

    def no_flats(broken):
        edit_log(broken, lambda ls: [" ".join(l.split()[:3] + ["1"]) for l in ls])

    tif_scan = phantom(os.path.join(tmp, "tifscan"), 32, 4, 20, "--format", "tif", "--no-truth")

    def eight_bit(broken):
        import tifffile
        name = sorted(f for f in os.listdir(broken) if f.startswith("q"))[3]
        tifffile.imwrite(os.path.join(broken, name), np.zeros((4, 32), np.uint8))

    r.check("missing frame refuses to mount",
            lambda: refuse("missing", lambda b: os.unlink(os.path.join(b, victim)),
                           victim.split(".")[0].lstrip("q0")))
    r.check("truncated frame refuses to mount", lambda: refuse("truncated", truncate, victim))
    r.check("mis-sized frame refuses to mount", lambda: refuse("missized", mis_size, victim))
    r.check("bad output.log line refuses to mount",
            lambda: refuse("badlog", lambda b: edit_log(b, lambda ls: ls[:5] + ["7 x 0.5 1"] +
                                                        ls[6:]), "output.log:6"))
    r.check("no flats refuses to mount", lambda: refuse("noflats", no_flats, "output.log"))
    r.check("non-16-bit TIFF refuses to mount", lambda: refuse("tiff8", eight_bit, ".tif"))
    r.check("missing dark refuses to mount",
            lambda: refuse("nodark", lambda b: os.unlink(os.path.join(b, "dark.img")), "dark"))
    r.finish()


if __name__ == "__main__":
    main()
