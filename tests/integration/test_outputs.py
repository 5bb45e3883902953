"""The output options through real mounts: volumes/<folder>.nrrd, dtype=uint16 with range=,
bin=2, centre-search/, and the slices' calibration for ImageJ.

- volume files: the NRRD header is parsed here (not by a library), the data compared with the
  slice files byte for byte; reading the header computes nothing, reading a middle range
  computes the slices it covers (the engine's counters), with max_chunk=2 at most one more.
- uint16: every value equals min(65535, max(0, floor((v - LO) * s + 0.5))), s = 65535 /
  (HI - LO), computed in double from the float32 slice v; the automatic range equals the
  documented rule applied here to the float slices it samples.
- bin=2 against the phantom's exact truth averaged over 2 x 2 x 2 voxels, inside the circle
  and away from edges: relative RMS error below 1 % of the largest attenuation (the
  full-resolution reconstruction of the same phantom is checked to the same bound).
- centre-search/: each file's pixels equal slices/ exported with that centre, bit for bit.
"""

import json
import math
import os
import random
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (SKIP, Mount, Results, fov_mask, interior_mask, phantom,  # noqa: E402
                    phantom_center, read_tiff, run)

WIDTH, ROWS, PROJ = 128, 12, 120
HEADER = 4096


def parse_nrrd(data):
    """(header length, {field: value}) of an attached-header NRRD, parsed by hand."""
    end = data.index(b"\n\n") + 2
    lines = data[:end].decode("ascii").splitlines()
    assert lines[0] == "NRRD0004", lines[0]
    fields = {}
    for line in lines[1:]:
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    return end, fields


def vectors(text):
    """'(a,b,c) (d,e,f)' -> [[a, b, c], [d, e, f]]"""
    return [[float(x) for x in part.strip("()").split(",")] for part in text.split()]


def status_int(m, key):
    return int(m.status()[key])


def pread_random(path, offset, length):
    """Reads a range with readahead off, so the kernel asks only for the pages read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        data = b""
        while len(data) < length:
            chunk = os.pread(fd, length - len(data), offset + len(data))
            assert chunk, "short read"
            data += chunk
        return data
    finally:
        os.close(fd)


def description(path):
    import tifffile
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        tags = {tag.name: tag.value for tag in page.tags.values()}
        return page.description, tags


def u16_expected(v, lo, hi):
    s = 65535.0 / (hi - lo)
    t = (v.astype(np.float64) - lo) * s
    return np.clip(np.floor(t + 0.5), 0, 65535).astype(np.uint16)


def auto_range_rule(values):
    """The documented automatic range, written out here."""
    v = np.sort(values[np.isfinite(values)].astype(np.float32))
    n = len(v)
    a, b = float(v[int(0.001 * (n - 1))]), float(v[int(0.999 * (n - 1))])
    w = b - a
    a, b = a - 0.1 * w, b + 0.1 * w
    q = 10.0 ** (math.floor(math.log10(b - a)) - 2)
    return float("%.6g" % (math.floor(a / q) * q)), float("%.6g" % (math.ceil(b / q) * q))


def main():
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("SKIP: /dev/fuse or fusermount3 is missing; FUSE tests cannot run here")
        sys.exit(SKIP)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-outputs-")
    scan = phantom(os.path.join(tmp, "scan"), WIDTH, ROWS, PROJ, "--photons", 20000)
    floats = os.path.join(tmp, "floats")
    run("export", scan, floats)
    info = json.load(open(os.path.join(floats, "scan.json")))
    center = info["center"]
    slice_bytes = WIDTH * WIDTH * 4

    # ---- volumes/ ----
    with Mount(scan, "-o", "cache=none,max_chunk=2") as m:
        vpath = m.path("volumes", "slices.nrrd")

        def volumes_listed_and_sized():
            assert sorted(os.listdir(m.path("volumes"))) == ["rings-removed.nrrd", "slices.nrrd"]
            assert os.stat(vpath).st_size == HEADER + ROWS * slice_bytes
            sj = json.load(open(m.path("scan.json")))["variants"]["slices"]
            assert sj["volume"]["file"] == "volumes/slices.nrrd", sj["volume"]
            assert sj["volume"]["bytes"] == HEADER + ROWS * slice_bytes
            assert sj["volume"]["header_bytes"] == HEADER
            assert status_int(m, "slices_computed") == 0

        def header_never_computes():
            end, f = parse_nrrd(pread_random(vpath, 0, HEADER))
            assert end == HEADER, end
            assert f["type"] == "float" and f["dimension"] == "3", f
            assert f["sizes"] == f"{WIDTH} {WIDTH} {ROWS}", f
            assert f["endian"] == "little" and f["encoding"] == "raw", f
            assert vectors(f["space directions"]) == [[1, 0, 0], [0, 1, 0], [0, 0, 1]], f
            sj = json.load(open(m.path("scan.json")))["variants"]["slices"]
            assert vectors(f["space origin"]) == [sj["origin_um"]], (f, sj["origin_um"])
            assert sj["origin_um"] == [0.5 - WIDTH / 2, 0.5 - WIDTH / 2, 0], sj["origin_um"]
            assert f["space units"] == '"um" "um" "um"', f
            assert status_int(m, "slices_computed") == 0

        def middle_range_computes_its_slices():
            # slices 4, 5 and 6 exactly; max_chunk=2 lets the engine add slice 7 at most
            data = pread_random(vpath, HEADER + 4 * slice_bytes, 3 * slice_bytes)
            computed = status_int(m, "slices_computed")
            print(f"     3 slices read from the middle: {computed} computed")
            assert 3 <= computed <= 4, computed
            for i, z in enumerate(range(4, 7)):
                want = open(os.path.join(floats, f"slice_{z:05d}.tif"), "rb").read()[HEADER:]
                assert data[i * slice_bytes:(i + 1) * slice_bytes] == want, z

        def whole_volume_equals_slices():
            data = open(vpath, "rb").read()
            end, f = parse_nrrd(data)
            sizes = [int(x) for x in f["sizes"].split()]
            vol = np.frombuffer(data[end:], dtype="<f4").reshape(sizes[::-1])
            assert vol.shape == (ROWS, WIDTH, WIDTH)
            for z in range(ROWS):
                served = open(m.path("slices", f"slice_{z:05d}.tif"), "rb").read()
                assert data[end + z * slice_bytes:end + (z + 1) * slice_bytes] == served[HEADER:]
                assert np.array_equal(vol[z], read_tiff(m.path("slices", f"slice_{z:05d}.tif")))
            rr = open(m.path("volumes", "rings-removed.nrrd"), "rb").read()
            for z in (0, ROWS - 1):
                served = open(m.path("rings-removed", f"slice_{z:05d}.tif"), "rb").read()
                assert rr[end + z * slice_bytes:end + (z + 1) * slice_bytes] == served[HEADER:]

        def export_volume_equals_mount():
            out = os.path.join(tmp, "export-volume")
            run("export", scan, out, "--volume")
            assert open(os.path.join(out, "slices.nrrd"), "rb").read() == open(vpath, "rb").read()

        def imagej_calibration():
            desc, tags = description(m.path("slices", "slice_00003.tif"))
            assert desc.startswith("ImageJ=1.11a\nunit=um\nspacing=1\nvunit=cm^-1\n"), desc
            num, den = tags["XResolution"]
            assert int(tags["ResolutionUnit"]) == 3  # centimetre
            assert abs(1e4 * den / num - 1.0) < 1e-12, (num, den)  # micrometres per pixel

        r.check("volumes/ lists a file per folder, sized from the geometry",
                volumes_listed_and_sized)
        r.check("the NRRD header is read without computing", header_never_computes)
        r.check("a middle range computes the slices it covers", middle_range_computes_its_slices)
        r.check("the whole volume equals the slice files", whole_volume_equals_slices)
        r.check("export --volume equals volumes/slices.nrrd", export_volume_equals_mount)
        r.check("slices carry ImageJ's calibration (um, cm^-1)", imagej_calibration)

    # ---- uint16 with a given range ----
    f = np.stack([read_tiff(os.path.join(floats, f"slice_{z:05d}.tif")) for z in range(ROWS)])
    inside = f[:, fov_mask(WIDTH, center, WIDTH)]
    lo, hi = float(np.round(np.percentile(inside, 2), 1)), float(np.round(np.percentile(inside, 98), 1))
    opt = f"dtype=uint16,range={lo}:{hi},cache=none"
    with Mount(scan, "-o", opt) as m:
        def uint16_values():
            clipped_low = clipped_high = 0
            for z in range(ROWS):
                path = m.path("slices", f"slice_{z:05d}.tif")
                assert os.stat(path).st_size == HEADER + WIDTH * WIDTH * 2
                u = read_tiff(path)
                assert u.dtype == np.uint16 and u.shape == (WIDTH, WIDTH)
                assert np.array_equal(u, u16_expected(f[z], lo, hi)), z
                clipped_low += int(np.sum(f[z] < lo))
                clipped_high += int(np.sum(f[z] > hi))
            assert clipped_low > 0 and clipped_high > 0  # both clipping ends were exercised

        def uint16_recorded():
            desc, tags = description(m.path("slices", "slice_00002.tif"))
            props = dict(line.split("=", 1) for line in desc.splitlines() if "=" in line)
            assert props["cf"] == "0" and props["vunit"] == "cm^-1", props
            assert float(props["c0"]) == lo
            assert float(props["c1"]) == (hi - lo) / 65535.0
            assert f"range={lo:g}:{hi:g}" in desc, desc
            assert int(tags["BitsPerSample"]) == 16 and int(tags["SampleFormat"]) == 1
            sj = json.load(open(m.path("scan.json")))["variants"]["slices"]
            assert sj["dtype"] == "uint16" and sj["range"] == [lo, hi], sj
            assert sj["range_source"] == "option"
            # the file key names the bytes; the reconstruction's key is the float one
            assert sj["key"] == info["variants"]["slices"]["key"]
            assert sj["file_key"] != sj["key"]
            assert props["key"] == sj["file_key"]

        def uint16_volume():
            vpath = m.path("volumes", "slices.nrrd")
            size = os.stat(vpath).st_size
            n = WIDTH * WIDTH * 2
            assert size == HEADER + ROWS * n
            # first, before anything of the file is in the page cache: ranges that start and
            # end anywhere and span slices (the kernel asks for the pages around them)
            rng = random.Random(5)
            pieces = []
            for _ in range(40):
                a = rng.randrange(size)
                length = min(rng.randrange(1, 3 * n), size - a)
                pieces.append((a, pread_random(vpath, a, length)))
            data = open(vpath, "rb").read()
            end, fl = parse_nrrd(data)
            assert fl["type"] == "uint16", fl
            assert float(fl["old min"]) == lo and float(fl["old max"]) == hi, fl
            for z in range(ROWS):
                served = open(m.path("slices", f"slice_{z:05d}.tif"), "rb").read()
                assert data[end + z * n:end + (z + 1) * n] == served[HEADER:], z
            for a, piece in pieces:
                assert piece == data[a:a + len(piece)], a

        def uint16_export_equals_mount():
            out = os.path.join(tmp, "export-u16")
            run("export", scan, out, "-o", opt, "--range", "5:7")
            for z in (5, 6):
                name = f"slice_{z:05d}.tif"
                assert open(os.path.join(out, name), "rb").read() == \
                    open(m.path("slices", name), "rb").read(), name

        r.check("uint16 = floor((v - LO) s + 0.5), clipped", uint16_values)
        r.check("the range is in the TIFF (ImageJ calibration), scan.json, the file key",
                uint16_recorded)
        r.check("the uint16 volume equals its slices", uint16_volume)
        r.check("uint16 export equals the mount", uint16_export_equals_mount)

    # ---- uint16 with the automatic range ----
    def automatic_range_rule():
        first = run("info", scan, "-o", "dtype=uint16").stdout
        second = run("info", scan, "-o", "dtype=uint16").stdout
        assert first == second  # fixed before any slice is read, and deterministic
        sj = json.loads(first)["variants"]["slices"]
        assert sj["range_source"] == "automatic"
        # 128 pixels: sampled at full resolution, slices (2k + 1) 12 / 10
        sampled = [(2 * k + 1) * ROWS // 10 for k in range(5)]
        values = np.concatenate([f[z][fov_mask(WIDTH, center, WIDTH)] for z in sampled])
        want = auto_range_rule(values)
        print(f"     automatic range {sj['range']} from slices {sampled}")
        assert sj["range"] == list(want), (sj["range"], want)
        with Mount(scan, "-o", "dtype=uint16,cache=none") as m:
            u = read_tiff(m.path("slices", "slice_00007.tif"))
            assert np.array_equal(u, u16_expected(f[7], *want))

    r.check("the automatic range follows the documented rule", automatic_range_rule)

    # ---- bin=2 ----
    clean = phantom(os.path.join(tmp, "clean"), WIDTH, ROWS, PROJ)
    true_center = phantom_center(clean)

    def relative_error(rec, truth, mask):
        return float(np.sqrt(np.mean((rec - truth)[mask] ** 2)) / truth.max())

    def bin2_against_truth():
        full = os.path.join(tmp, "clean-full")
        run("export", clean, full, "-o", f"center={true_center}")
        with Mount(clean, "-o", f"bin=2,center={true_center},cache=none") as m:
            names = sorted(os.listdir(m.path("slices")))
            assert names == [f"slice_{z:05d}.tif" for z in range(ROWS // 2)], names
            sj = json.load(open(m.path("scan.json")))["variants"]["slices"]
            assert sj["pixel_um"] == 2 and sj["slice_spacing_um"] == 2 and sj["files"] == 6, sj
            assert sj["slice_size"] == WIDTH // 2
            assert sj["origin_um"] == [1 - WIDTH / 2, 1 - WIDTH / 2, 0.5], sj["origin_um"]
            desc, tags = description(m.path("slices", "slice_00001.tif"))
            num, den = tags["XResolution"]
            assert abs(1e4 * den / num - 2.0) < 1e-12 and "\nspacing=2\n" in desc
            _, fl = parse_nrrd(open(m.path("volumes", "slices.nrrd"), "rb").read(HEADER))
            assert fl["sizes"] == f"{WIDTH // 2} {WIDTH // 2} {ROWS // 2}", fl
            assert vectors(fl["space directions"]) == [[2, 0, 0], [0, 2, 0], [0, 0, 2]], fl
            errs, full_errs = [], []
            half = WIDTH // 2
            circle = fov_mask(half, true_center / 2, half)  # the circle on the coarse grid
            for k in range(ROWS // 2):
                t = [read_tiff(os.path.join(clean, "truth", f"slice_{z:05d}.tif"))
                     for z in (2 * k, 2 * k + 1)]
                truth = np.mean([x.reshape(half, 2, half, 2).mean(axis=(1, 3)) for x in t], 0)
                interior = np.logical_and.reduce(
                    [interior_mask(x).reshape(half, 2, half, 2).all(axis=(1, 3)) for x in t])
                mask = interior & circle
                if truth.max() <= 0 or mask.sum() < 50:
                    continue
                rec = read_tiff(m.path("slices", f"slice_{k:05d}.tif"))
                errs.append(relative_error(rec, truth, mask))
                for z, x in zip((2 * k, 2 * k + 1), t):
                    fr = read_tiff(os.path.join(full, f"slice_{z:05d}.tif"))
                    fm = fov_mask(WIDTH, true_center, WIDTH) & interior_mask(x)
                    full_errs.append(relative_error(fr, x, fm))
            assert errs, "no binned slice with content"
            err, ferr = float(np.mean(errs)), float(np.mean(full_errs))
            print(f"     bin=2: relative RMS error {err:.5f} (full resolution {ferr:.5f})")
            assert err < 0.01 and ferr < 0.01, (err, ferr)

        out = os.path.join(tmp, "export-bin2")
        run("export", clean, out, "-o", f"bin=2,center={true_center}", "--range", "2:3")
        with Mount(clean, "-o", f"bin=2,center={true_center},cache=none") as m:
            assert open(os.path.join(out, "slice_00002.tif"), "rb").read() == \
                open(m.path("slices", "slice_00002.tif"), "rb").read()

    r.check("bin=2: half the pixels and slices, matches the truth", bin2_against_truth)

    # ---- centre-search/ ----
    def center_search():
        z = 5
        with Mount(scan, "-o", f"center_search={z}:63:65:0.5,cache=none") as m:
            names = os.listdir(m.path("centre-search"))
            want = [f"center_{c:.2f}.tif" for c in (63, 63.5, 64, 64.5, 65)]
            assert names == want, names  # numeric order, which is also sorted order
            for name in names:
                st = os.stat(m.path("centre-search", name))
                assert st.st_size == HEADER + slice_bytes
            assert not os.path.exists(m.path("centre-search", "center_63.0.tif"))
            assert not os.path.exists(m.path("centre-search", "center_63.25.tif"))
            assert status_int(m, "slices_computed") == 0  # listing and stat compute nothing
            for name in names:
                c = float(name[len("center_"):-len(".tif")])
                out = os.path.join(tmp, f"centre-{c}")
                run("export", scan, out, "-o", f"center={c}", "--range", f"{z}:{z + 1}")
                want_px = open(os.path.join(out, f"slice_{z:05d}.tif"), "rb").read()[HEADER:]
                served = open(m.path("centre-search", name), "rb").read()
                assert served[HEADER:] == want_px, name
                desc, _ = description(m.path("centre-search", name))
                assert f"\ncenter={c:.6f}\n" in desc and f"\nslice={z:05d}\n" in desc, desc
            sj = json.load(open(m.path("scan.json")))["variants"]["centre-search"]
            assert sj["center_search"] == {"slice": z, "first": 63, "last": 65, "step": 0.5,
                                           "count": 5}, sj["center_search"]
        # names keep sorting numerically across a power of ten
        sj = json.loads(run("info", scan, "-o", "center_search=2:9.5:10.5:0.25").stdout)
        cs = sj["variants"]["centre-search"]
        assert cs["first_file"] == "center_09.50.tif" and cs["last_file"] == "center_10.50.tif", cs

    r.check("centre-search/ files equal slices/ reconstructed with their centre", center_search)

    def bad_options_fail_clearly():
        for opt, words in [("dtype=int8", "dtype"), ("range=3:1", "range"),
                           ("center_search=1:2:3", "Z:FROM:TO:STEP"),
                           (f"center_search={ROWS}:60:61:0.5", "slice"),
                           ("center_search=1:0:10:0.5", "inside the detector")]:
            p = run("info", scan, "-o", opt, check=False)
            assert p.returncode != 0 and words in p.stderr, (opt, p.stderr)
            assert len(p.stderr.strip().splitlines()) <= 2, p.stderr

    r.check("bad output options give one clear message", bad_options_fail_clearly)
    r.finish()


if __name__ == "__main__":
    main()
