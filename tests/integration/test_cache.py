"""The disk cache through real mounts: hits across mounts, new keys for new options, sharing,
the cache command, and the faults: a killed daemon, a full disk, an unusable folder."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import SKIP, Mount, Results, phantom, run  # noqa: E402

WIDTH, ROWS, PROJ = 128, 12, 120
# big enough that slices are still being compressed and committed when the daemon is killed,
# and that their 11 MB of compressed pixels overflow a 2 MB disk
BIG_WIDTH, BIG_ROWS, BIG_PROJ = 256, 64, 360


def names(rows):
    return [f"slice_{z:05d}.tif" for z in range(rows)]


def read_all(m, rows, folder="slices"):
    return {name: open(m.path(folder, name), "rb").read() for name in names(rows)}


def same_as_export(data, exported):
    bad = [name for name, b in data.items()
           if b != open(os.path.join(exported, name), "rb").read()]
    assert not bad, f"differ from export: {bad}"


def counter(m, key):
    return int(m.status()[key])


def settled_status(m, key, want, timeout=5):
    """The status once m.status()[key] == want; a read is answered before its decode is counted."""
    deadline = time.time() + timeout
    st = m.status()
    while st[key] != want and time.time() < deadline:
        time.sleep(0.02)
        st = m.status()
    return st


def cache_stats(cache):
    out = run("cache", "stats", "--cache", cache).stdout
    entries = int(re.search(r"^entries: (\d+) slices", out, re.M).group(1))
    ratio = float(re.search(r"^ratio: ([0-9.]+)", out, re.M).group(1))
    return entries, ratio, out


def warnings_about(stderr, needle):
    return [line for line in stderr.splitlines() if "warning" in line and needle in line]


def stop_foreground(m):
    """Unmounts a foreground mount and returns what the daemon wrote to stderr."""
    # not 'tomofs umount': it waits for the pid to vanish, and our unreaped child never does
    subprocess.run(["fusermount3", "-u", m.dir], check=True)
    _, stderr = m.proc.communicate(timeout=60)
    return stderr


def main():
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("SKIP: /dev/fuse or fusermount3 is missing; FUSE tests cannot run here")
        sys.exit(SKIP)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-cache-")
    scan = phantom(os.path.join(tmp, "scan"), WIDTH, ROWS, PROJ, "--photons", 20000)
    exported = os.path.join(tmp, "export")
    run("export", scan, exported)
    cache = os.path.join(tmp, "cache")

    def second_mount_recomputes_nothing():
        with Mount(scan, "-o", f"cache={cache}") as m:
            same_as_export(read_all(m, ROWS), exported)
            assert counter(m, "slices_computed") >= ROWS
        assert oct(os.stat(cache).st_mode & 0o777) == "0o700", "cache folder not private"
        with Mount(scan, "-o", f"cache={cache}") as m:
            same_as_export(read_all(m, ROWS), exported)
            st = settled_status(m, "cache_hits", str(ROWS))
            assert st["slices_computed"] == "0", st
            assert st["cache_hits"] == str(ROWS) and st["cache_misses"] == "0", st
            assert st["cache_damaged"] == "0", st

    def other_options_are_computed():
        ramlak = os.path.join(tmp, "export-ramlak")
        run("export", scan, ramlak, "-o", "filter=ram-lak")
        with Mount(scan, "-o", f"cache={cache},filter=ram-lak") as m:
            same_as_export(read_all(m, ROWS), ramlak)
            st = m.status()
            assert int(st["slices_computed"]) >= ROWS and st["cache_hits"] == "0", st
        # both parameter sets are now cached, side by side
        assert cache_stats(cache)[0] == 2 * ROWS

    def two_mounts_share_one_cache():
        shared = os.path.join(tmp, "cache-shared")
        with Mount(scan, "-o", f"cache={shared}") as a, Mount(scan, "-o", f"cache={shared}") as b:
            results, errors = {}, []

            def reader(m, key, order):
                try:
                    results[key] = {n: open(m.path("slices", n), "rb").read() for n in order}
                except OSError as e:
                    errors.append(e)

            threads = [threading.Thread(target=reader, args=(m, i, o))
                       for i, (m, o) in enumerate([(a, names(ROWS)), (b, names(ROWS)[::-1]),
                                                   (a, names(ROWS)[::-1]), (b, names(ROWS))])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            for data in results.values():
                same_as_export(data, exported)
        p = run("cache", "verify", "--cache", shared)
        assert " 0 damaged" in p.stdout and "totals ok" in p.stdout, p.stdout
        assert cache_stats(shared)[0] == ROWS  # each slice stored once

    def stats_and_clear():
        entries, ratio, out = cache_stats(cache)
        print("     " + "\n     ".join(out.splitlines()[:8]))
        assert entries == 2 * ROWS, out
        assert 1.0 < ratio < 10, out
        assert scan in out and "filter=ram-lak" in out and "filter=chesler" in out, out
        p = run("cache", "clear", "--cache", cache)
        assert f"{2 * ROWS} slices" in p.stdout, p.stdout
        assert cache_stats(cache)[0] == 0
        with Mount(scan, "-o", f"cache={cache}") as m:
            same_as_export(read_all(m, ROWS), exported)
            assert counter(m, "slices_computed") >= ROWS  # nothing left to serve

    def cache_none_writes_nothing():
        default = os.path.join(os.environ["XDG_CACHE_HOME"], "tomofs")
        with Mount(scan, "-o", "cache=none") as m:
            same_as_export(read_all(m, ROWS), exported)
            assert m.status()["cache"] == "off"
        assert not os.path.exists(default), "cache=none created the default cache"

    def unusable_folder_still_serves():
        plain = os.path.join(tmp, "plain-file")
        open(plain, "w").close()
        bad = os.path.join(plain, "cache")
        with Mount(scan, "-o", f"cache={bad}", foreground=True) as m:
            same_as_export(read_all(m, ROWS), exported)
            assert m.status()["cache"] == "off"
            stderr = stop_foreground(m)
        found = warnings_about(stderr, bad)
        assert len(found) == 1, stderr
        print("     " + found[0])

    r.check("a second mount serves every slice from the cache, recomputing none",
            second_mount_recomputes_nothing)
    r.check("other options give other keys: computed, not served from the cache",
            other_options_are_computed)
    r.check("two mounts of one scan at once share the cache", two_mounts_share_one_cache)
    r.check("cache stats shows entries and ratio; cache clear empties it", stats_and_clear)
    r.check("cache=none touches no cache", cache_none_writes_nothing)
    r.check("an unusable cache folder: the mount serves, with one warning",
            unusable_folder_still_serves)

    big = phantom(os.path.join(tmp, "big"), BIG_WIDTH, BIG_ROWS, BIG_PROJ, "--photons", 5000)
    big_exported = os.path.join(tmp, "big-export")
    run("export", big, big_exported)

    def killed_daemon_leaves_nothing_bad():
        for round in range(3):
            killed = os.path.join(tmp, f"cache-killed-{round}")
            m = Mount(big, "-o", f"cache={killed}")
            m.__enter__()
            pid = m.pid()
            stop = threading.Event()

            def reader(order):
                while not stop.is_set():
                    for n in order:
                        try:
                            open(m.path("slices", n), "rb").read()
                        except OSError:
                            return

            orders = [names(BIG_ROWS), names(BIG_ROWS)[::-1], names(BIG_ROWS)[::3]]
            threads = [threading.Thread(target=reader, args=(o,)) for o in orders]
            for t in threads:
                t.start()
            # kill while slices wait for compression or commit, later in each round
            deadline = time.time() + 20
            while time.time() < deadline:
                st = m.status()
                if int(st["cache_writes_queued"]) > 0 and int(st["cache_writes"]) >= 8 * round:
                    break
            os.kill(pid, signal.SIGKILL)
            stop.set()
            for t in threads:
                t.join(timeout=30)
            subprocess.run(["fusermount3", "-u", "-z", m.dir])
            os.rmdir(m.dir)
            print(f"     killed with {st['slices_computed']} computed, {st['cache_writes']} "
                  f"committed, {st['cache_writes_queued']} queued")
            p = run("cache", "verify", "--cache", killed)
            assert " 0 damaged" in p.stdout and "totals ok" in p.stdout, p.stdout
            with Mount(big, "-o", f"cache={killed}") as m2:
                same_as_export(read_all(m2, BIG_ROWS), big_exported)
                st = m2.status()
                assert st["cache_damaged"] == "0", st
            p = run("cache", "verify", "--cache", killed)
            assert p.returncode == 0 and f"checked {BIG_ROWS} slices" in p.stdout, p.stdout

    def full_disk_still_serves():
        tiny = os.path.join(tmp, "tiny")
        os.mkdir(tiny)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", tiny],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"     SKIP: cannot mount a 2 MB tmpfs ({p.stderr.strip()}); needs root")
            return
        try:
            with Mount(big, "-o", f"cache={tiny}", foreground=True) as m:
                same_as_export(read_all(m, BIG_ROWS), big_exported)
                st = m.status()
                assert st["cache_writable"] == "0", st
                # what was committed before the disk filled is still served
                assert int(st["cache_entries"]) > 0, st
                stderr = stop_foreground(m)
            found = warnings_about(stderr, tiny)
            assert len(found) == 1, stderr
            print("     " + found[0])
            with Mount(big, "-o", f"cache={tiny}") as m:
                same_as_export(read_all(m, BIG_ROWS), big_exported)
                assert int(m.status()["cache_hits"]) > 0
        finally:
            subprocess.run(["umount", "-l", tiny])

    r.check("kill -9 while writing, then remount: verify is clean, every slice is right",
            killed_daemon_leaves_nothing_bad)
    r.check("a full disk: the mount serves correct slices, with one warning",
            full_disk_still_serves)
    r.finish()


if __name__ == "__main__":
    main()
