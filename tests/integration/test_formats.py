"""The three real scans of ../shared/data, read through real mounts (skipped without the data).

    tooth_aps/tooth.h5     APS Data Exchange HDF5              181 x 2 x 640, 0 .. 179.0055 deg
    i13_24737_tiff/        Diamond I13 TIFF series + angles    91 x 135 x 160, -88.2 .. 91.8 deg
    diad_k11_18014/        Diamond DIAD NXtomo, external links 3001 x 22 x 26, 89.995 .. 269.995 deg

Everything tomofs computes is checked against an independent computation in NumPy, from the
raw files read with h5py and tifffile:

- Preprocessing: absorbance p = ln(max(I0 - D, 2) / max(I - D, 2)) with D the mean dark and
  I0 the mean flat (DIAD: the means of the flats before and after the scan, interpolated
  linearly in frame index). The floor of 2 counts is tomofs's documented guard; without it the
  zero pixels of the I13 projections would give infinities.

- Centre of rotation: phase cross-correlation (scikit-image, 1/50 px) of the first view with
  the mirror image of the view 180 degrees later, interpolated linearly in angle between the
  two nearest views (the tooth stops one step short of 180 degrees; its last view is used).
  With q(u) = p180(N - 1 - u) = p0(u + 2c - N + 1) the shift s that registers q on p0 gives
  c = (s + N - 1) / 2. tomofs's automatic centre must agree within 1 px.

- Slices: read through the mount with the default Chesler filter and zero padding
  (-o pad=zero, since iradon pads with zeros), compared with skimage.transform.iradon
  (filter 'ramp', circle=True, linear interpolation) of the same sinogram, zero-extended and
  smoothed with [1/4, 1/2, 1/4] along the detector, which is the definition of the Chesler
  kernel (Ram-Lak convolved with [1/4, 1/2, 1/4]). Mapping, found once and asserted: iradon
  gets the angles relative to the first projection (tomofs orients slices so that the first
  view is at 0), and its output is used as it is, neither flipped nor rotated. iradon puts the
  axis on a pixel centre (index N2 // 2), tomofs puts pixel centres at j + 0.5 - N/2 from the
  axis at column c; each projection is therefore shifted, band-limited (Fourier) on the
  zero-extended row, by (N2 // 2 - c') - 0.5 cos(theta) + 0.5 sin(theta) (the half-pixel terms
  only for even N), so that no image is resampled. Pearson correlation inside the
  reconstruction circle must be >= 0.99, and the scale (cm^-1 at 1 um pixels, 1e4 times
  iradon's) agree within 2%.
"""

import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import SHARED_DATA, SKIP, TOMOFS, Mount, Results, fov_mask, read_tiff, run  # noqa

SCANS = {
    "tooth": dict(path="tooth_aps/tooth.h5", format="dxchange", proj=181, rows=2, width=640,
                  first=0.0, last=179.0055, flats=10, groups=1, darks=10),
    "i13": dict(path="i13_24737_tiff", format="tiff-series", proj=91, rows=135, width=160,
                first=-88.2, last=91.8, flats=1, groups=1, darks=1),
    "diad": dict(path="diad_k11_18014", format="nxtomo", proj=3001, rows=22, width=26,
                 first=89.995, last=269.995, flats=100, groups=2, darks=100),
}

FLOOR = 2.0


def absorbance(counts, flat, dark):
    return np.log(np.maximum(flat - dark, FLOOR) / np.maximum(counts - dark, FLOOR))


def load_tooth(path):
    import h5py
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"][:].astype(np.float64)
        flat = f["/exchange/data_white"][:].mean(0)
        dark = f["/exchange/data_dark"][:].mean(0)
        theta = f["/exchange/theta"][:]
    return absorbance(data, flat[None], dark[None]), theta


def load_i13(folder):
    import tifffile
    raws = sorted(glob.glob(os.path.join(folder, "raw_*.tiff")))
    data = np.stack([tifffile.imread(r).astype(np.float64) for r in raws])
    flat = tifffile.imread(os.path.join(folder, "flat_00001.tiff")).astype(np.float64)
    dark = tifffile.imread(os.path.join(folder, "dark_00001.tiff")).astype(np.float64)
    angles = np.loadtxt(os.path.join(folder, "angles.txt"))[10:101]  # lines 11..101
    return absorbance(data, flat[None], dark[None]), angles


def load_diad(folder):
    import h5py
    with h5py.File(os.path.join(folder, "k11-18014.nxs"), "r") as f:
        data = f["/entry/imaging/data"][:].astype(np.float64)
        key = f["/entry/instrument/imaging/image_key"][:]
        theta = f["/entry/imaging_sum/gts_theta_value"][:]
    flats, darks, proj = (np.where(key == k)[0] for k in (1, 2, 0))
    before, after = flats[flats < proj[0]], flats[flats > proj[-1]]
    w = ((proj - before.mean()) / (after.mean() - before.mean()))[:, None, None]
    flat = (1 - w) * data[before].mean(0)[None] + w * data[after].mean(0)[None]
    return absorbance(data[proj], flat, data[darks].mean(0)[None]), theta[proj]


LOADERS = {"tooth": lambda: load_tooth(os.path.join(SHARED_DATA, SCANS["tooth"]["path"])),
           "i13": lambda: load_i13(os.path.join(SHARED_DATA, SCANS["i13"]["path"])),
           "diad": lambda: load_diad(os.path.join(SHARED_DATA, SCANS["diad"]["path"]))}


def sorted_projections(name, cache={}):
    """Absorbance (angle, row, column) and angles in degrees, sorted by angle."""
    if name not in cache:
        p, a = LOADERS[name]()
        order = np.argsort(a, kind="stable")
        cache[name] = (p[order], a[order])
    return cache[name]


def centre_by_phase_correlation(p, angles):
    from skimage.registration import phase_cross_correlation
    n = p.shape[2]
    target = angles[0] + 180.0
    j = int(np.searchsorted(angles, target))
    if j >= len(angles):
        v180 = p[-1]
    else:
        w = (target - angles[j - 1]) / (angles[j] - angles[j - 1])
        v180 = (1 - w) * p[j - 1] + w * p[j]
    shift, _, _ = phase_cross_correlation(p[0], v180[:, ::-1], upsample_factor=50)
    return (shift[1] + n - 1) / 2


def iradon_reference(sino, angles, c):
    """iradon of one sinogram (angle, column) on tomofs's pixel grid; see the module doc."""
    from skimage.transform import iradon
    m, n = sino.shape
    rel = angles - angles[0]
    pad = int(math.ceil(abs(n / 2 - c))) + 8
    s = np.pad(sino, ((0, 0), (pad, pad)))
    s = 0.25 * np.roll(s, 1, axis=1) + 0.5 * s + 0.25 * np.roll(s, -1, axis=1)
    n2 = s.shape[1]
    th = np.deg2rad(rel)
    d = (n2 // 2 - (c + pad)) + (-0.5 * np.cos(th) + 0.5 * np.sin(th)) * (n % 2 == 0)
    k = np.fft.fftfreq(n2)
    s = np.real(np.fft.ifft(np.fft.fft(s, axis=1) * np.exp(-2j * np.pi * k[None] * d[:, None]),
                            axis=1))
    img = iradon(s.T, theta=rel, filter_name="ramp", circle=True, output_size=n2,
                 interpolation="linear")
    o = n2 // 2 - n // 2
    return img[o:o + n, o:o + n]


def writable_copy(src, dst):
    """Copies a file or folder of the read-only shared data, leaving the copy writable."""
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    for root, dirs, files in os.walk(dst):
        for entry in dirs + files:
            os.chmod(os.path.join(root, entry), 0o755 if entry in dirs else 0o644)
    os.chmod(dst, 0o755 if os.path.isdir(dst) else 0o644)
    return dst


def info(name, *options):
    p = run("info", os.path.join(SHARED_DATA, SCANS[name]["path"]), *options)
    return json.loads(p.stdout)


def main():
    if not os.path.isdir(SHARED_DATA):
        print(f"SKIP: no real data at {os.path.abspath(SHARED_DATA)}")
        sys.exit(SKIP)
    try:
        import h5py  # noqa: F401
        import skimage  # noqa: F401
        import tifffile  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {e} (tools/install-deps installs python3-h5py, -skimage, -tifffile)")
        sys.exit(SKIP)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-formats-")
    found = {}

    def check_info(name):
        def fn():
            want = SCANS[name]
            j = info(name)
            found[name] = j
            assert j["scan"]["format"] == want["format"], j["scan"]
            assert j["detector"]["width"] == want["width"], j["detector"]
            assert j["detector"]["rows"] == want["rows"], j["detector"]
            pr = j["projections"]
            assert pr["count"] == want["proj"], pr
            assert abs(pr["first_angle_deg"] - want["first"]) < 0.01, pr
            assert abs(pr["last_angle_deg"] - want["last"]) < 0.01, pr
            assert j["flats"]["count"] == want["flats"], j["flats"]
            assert j["flats"]["groups"] == want["groups"], j["flats"]
            assert j["darks"]["count"] == want["darks"], j["darks"]
            print(f"     {name}: {j['scan']['format']}, {pr['count']} x {want['rows']} x "
                  f"{want['width']}, {pr['first_angle_deg']:.4f} .. {pr['last_angle_deg']:.4f} deg, "
                  f"{j['flats']['count']} flats in {j['flats']['groups']} groups, "
                  f"{j['darks']['count']} darks, centre {j['center']:.3f}")
        return fn

    def check_centre(name):
        def fn():
            p, a = sorted_projections(name)
            estimate = centre_by_phase_correlation(p, a)
            c = found[name]["center"] if name in found else info(name)["center"]
            print(f"     {name}: tomofs {c:.3f}, phase correlation {estimate:.3f}, "
                  f"difference {c - estimate:+.3f} px")
            assert abs(c - estimate) < 1.0, (c, estimate)
        return fn

    def check_slices(name):
        def fn():
            p, a = sorted_projections(name)
            rows, n = p.shape[1], p.shape[2]
            zs = sorted({0, rows // 2, rows - 1})
            with Mount(os.path.join(SHARED_DATA, SCANS[name]["path"]), "-o", "pad=zero") as m:
                with open(m.path("scan.json")) as f:
                    c = json.load(f)["center"]
                slices = {z: read_tiff(m.path("slices", f"slice_{z:05d}.tif")) for z in zs}
            mask = fov_mask(n, c, n)
            worst = 1.0
            for z in zs:
                ours = slices[z].astype(np.float64)
                ref = iradon_reference(p[:, z, :], a, c)
                corr = np.corrcoef(ours[mask], ref[mask])[0, 1]
                scale = np.std(ours[mask]) / np.std(ref[mask]) / 1e4
                print(f"     {name} slice {z}: correlation {corr:.5f}, scale {scale:.4f}")
                worst = min(worst, corr)
                assert corr >= 0.99, (name, z, corr)
                assert abs(scale - 1) < 0.02, (name, z, scale)
            assert np.all(slices[zs[0]][~mask] == 0)
        return fn

    def broken_inputs_give_one_clear_line():
        import h5py
        cases = []
        # DXchange without angles
        tooth = writable_copy(os.path.join(SHARED_DATA, SCANS["tooth"]["path"]),
                              os.path.join(tmp, "tooth.h5"))
        with h5py.File(tooth, "a") as f:
            del f["/exchange/theta"]
        cases.append((tooth, "no projection angles"))
        # NXtomo whose frames file is missing: the external link dangles
        diad = writable_copy(os.path.join(SHARED_DATA, SCANS["diad"]["path"]),
                             os.path.join(tmp, "diad"))
        os.remove(os.path.join(diad, "k11-18014", "k11-18014-imaging.h5"))
        cases.append((diad, "k11-18014/k11-18014-imaging.h5"))
        # TIFF series with an odd number of extra angles
        i13 = writable_copy(os.path.join(SHARED_DATA, SCANS["i13"]["path"]),
                            os.path.join(tmp, "i13"))
        with open(os.path.join(i13, "angles.txt"), "a") as f:
            f.write("\n91.8\n")  # the file ends without a line break
        cases.append((i13, "112 angles for 91 projections"))
        for path, want in cases:
            p = run("info", path, check=False)
            lines = p.stderr.strip().splitlines()
            print(f"     {lines[-1] if lines else '(nothing)'}")
            assert p.returncode == 1, (path, p.returncode, p.stderr)
            assert len(lines) == 1 and want in lines[0], (path, p.stderr)

    def damaged_after_mount_gives_eio():
        """Frames truncated under a mount: that read fails with EIO; the daemon keeps serving."""
        folder = writable_copy(os.path.join(SHARED_DATA, SCANS["diad"]["path"]),
                               os.path.join(tmp, "diad-mounted"))
        with Mount(folder) as m:
            good = read_tiff(m.path("slices", "slice_00000.tif"))
            os.truncate(os.path.join(folder, "k11-18014", "k11-18014-imaging.h5"), 65536)
            try:
                with open(m.path("slices", "slice_00020.tif"), "rb") as f:
                    f.read()
                raise AssertionError("read of a truncated scan succeeded")
            except OSError as e:
                assert e.errno == 5, e  # EIO
            again = read_tiff(m.path("slices", "slice_00000.tif"))
            assert np.array_equal(good, again)
            assert os.path.ismount(m.dir)

    for name in SCANS:
        r.check(f"info reports {name}", check_info(name))
    for name in SCANS:
        r.check(f"automatic centre of {name} agrees with phase correlation", check_centre(name))
    for name in SCANS:
        r.check(f"slices of {name} agree with iradon", check_slices(name))
    r.check("broken inputs give one clear line", broken_inputs_give_one_clear_line)
    r.check("a scan damaged after mounting gives EIO, not a crash", damaged_after_mount_gives_eio)
    shutil.rmtree(tmp, ignore_errors=True)
    r.finish()


if __name__ == "__main__":
    main()
