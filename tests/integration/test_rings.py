"""Ring removal (recon/rings.c) against a plain NumPy/SciPy transcription, and through the engine.

(a) Real sinograms from ../shared/data (the APS tooth, Diamond I13 24737 and DIAD k11-18014),
    made here in Python (flats and darks averaged, counts above dark clipped at 2, -log), go
    through tests/tools/rings_tool and through the transcription below, written from the
    algorithm description (docs/rings.md): np.argsort(kind='stable') along the angles,
    ndimage.median_filter(mode='reflect'), np.put_along_axis back. Algorithm 3 must agree to
    1e-6 of the largest value (it is bit-identical in practice); the whole chain too. Skipped,
    with a message, when the data are not there.
(b) A simulated scan with ring columns (tomofs phantom --rings, 50000 photons) is reconstructed
    through tomo_volume and the engine without and with ring removal, and compared with its
    exact truth: the error inside the field of view, a ring measure (the RMS over radius of the
    azimuthal mean of the residual) and the sharpness of the phantom's edges.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (SHARED_DATA, SOURCE, Results, fov_mask, interior_mask, phantom,  # noqa
                    phantom_center, read_tiff)

RINGS_TOOL = os.environ.get("RINGS_TOOL") or os.path.join(SOURCE, "build", "tests", "rings_tool")
FLOOR = 2.0  # counts above dark below which a pixel is clipped, as tomofs does
FLT_MAX = np.finfo(np.float32).max

# ---------------------------------------------------------------------------------------------
# The transcription: Vo's algorithms 3, 4, 5, 6 and Algotom's chain, with the documented
# deviations (stable sort, no error on noise-free data, double-precision statistics, guarded
# ratios).


def auto_size(width):
    if width > 2000:
        return 21
    s = max(5, int(0.01 * width))
    return s if s % 2 else s + 1


def sort_forward(s):
    idx = np.argsort(s, axis=0, kind="stable")
    return np.take_along_axis(s, idx, 0), idx


def sort_backward(values, idx):
    out = np.empty_like(values)
    np.put_along_axis(out, idx, values, 0)
    return out


def ref_sorting(s, size, dim=1):
    from scipy import ndimage
    ss, idx = sort_forward(s)
    sm = ndimage.median_filter(ss, size=(1, size) if dim == 1 else (size, size), mode="reflect")
    return sort_backward(sm, idx)


def ref_detect(values, snr):
    n = len(values)
    mask = np.zeros(n, bool)
    ndrop = int(0.25 * n)
    a, b = ndrop, n - ndrop - 1
    if b - a < 2:
        return mask
    srt = np.sort(values)
    x = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(x[a:b], srt[a:b], 1)
    y_end = intercept + slope * (n - 1)
    noise = abs(y_end - intercept)
    if not noise >= 1e-5:
        return mask
    if (srt[-1] - y_end) / noise >= snr:
        mask |= values > y_end + 0.5 * snr * noise
    if (intercept - srt[0]) / noise >= snr:
        mask |= values <= intercept - 0.5 * snr * noise
    return mask


def dilate(mask):
    from scipy import ndimage
    return ndimage.binary_dilation(mask, iterations=1)


def ref_large(s, snr=3.0, size=51, drop_ratio=0.1):
    from scipy import ndimage
    m = s.shape[0]
    ss, idx = sort_forward(s)
    sm = ndimage.median_filter(ss, (1, size), mode="reflect")
    ndrop = int(0.5 * min(max(drop_ratio, 0.0), 0.8) * m)
    l1 = ss[ndrop:m - ndrop].astype(np.float64).mean(0)
    l2 = sm[ndrop:m - ndrop].astype(np.float64).mean(0)
    fact = np.ones_like(l1)
    nz = l2 != 0
    fact[nz] = l1[nz] / l2[nz]
    mask = dilate(ref_detect(fact, snr))
    factf = fact.astype(np.float32)
    factf[(factf == 0) | ~np.isfinite(factf)] = 1
    with np.errstate(over="ignore"):
        out = np.clip(s / factf, -FLT_MAX, FLT_MAX).astype(np.float32)
    out[:, mask] = sort_backward(sm, idx)[:, mask]
    return out


def interp_columns(s, mask):
    """Masked columns by linear interpolation between the nearest unmasked ones, row by row,
    computed in double as np.interp does: slope * (x - xa) + f(xa)."""
    out = s.copy()
    good = np.where(~mask)[0]
    for j in np.where(mask)[0]:
        k = np.searchsorted(good, j)
        a, b = good[k - 1], good[k]
        fa, fb = s[:, a].astype(np.float64), s[:, b].astype(np.float64)
        out[:, j] = ((fb - fa) / (b - a) * (j - a) + fa).astype(np.float32)
    return out


def ref_dead(s, snr=3.0, size=51):
    """Returns the corrected sinogram and the mask of the columns it replaced."""
    from scipy import ndimage
    n = s.shape[1]
    smooth = ndimage.uniform_filter1d(s.astype(np.float64), 10, axis=0, mode="reflect")
    diff = np.abs(s - smooth).sum(0)
    bck = ndimage.median_filter(diff, size, mode="reflect")
    mean_abs = np.mean(np.abs(bck))
    nothing = np.zeros(n, bool)
    if not mean_abs > 0:
        return s.copy(), nothing
    bck[bck == 0] = mean_abs
    mask = dilate(ref_detect(diff / bck, snr))
    mask[:2] = False
    mask[-2:] = False
    count = int(mask.sum())
    if count == 0 or 3 * count >= n:
        return s.copy(), nothing
    return interp_columns(s, mask), mask


def ref_all(s, snr=3.0, la_size=51, sm_size=21, drop_ratio=0.1, dim=1):
    s = ref_dead(s, snr, la_size)[0]
    s = ref_large(s, snr, la_size, drop_ratio)
    return ref_sorting(s, sm_size, dim)


# ---------------------------------------------------------------------------------------------
# The C side


def tool(*args):
    p = subprocess.run([RINGS_TOOL, *map(str, args)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"rings_tool {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p.stdout


def c_remove(tmp, sinos, *options, threads=1):
    """Ring removal of a stack of equal-shaped sinograms by tomo_rings_remove(_pool)."""
    stack = np.ascontiguousarray(np.stack(sinos), np.float32)
    k, m, n = stack.shape
    src, dst = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.f32")
    stack.tofile(src)
    tool("remove", src, dst, m, n, "--count", k, "--threads", threads, *options)
    return list(np.fromfile(dst, np.float32).reshape(k, m, n))


# ---------------------------------------------------------------------------------------------
# The real data, as sinograms (angles x columns) of absorbance


def absorbance(raw, flat, dark):
    num = np.maximum(flat.astype(np.float64) - dark, FLOOR)
    den = np.maximum(raw.astype(np.float64) - dark, FLOOR)
    return np.log(num / den).astype(np.float32)


def load_tooth():
    import h5py
    with h5py.File(os.path.join(SHARED_DATA, "tooth_aps", "tooth.h5"), "r") as f:
        p = absorbance(f["/exchange/data"][()], f["/exchange/data_white"][()].mean(0),
                       f["/exchange/data_dark"][()].mean(0))
    return [np.ascontiguousarray(p[:, z, :]) for z in range(p.shape[1])]


def load_i13():
    import tifffile
    d = os.path.join(SHARED_DATA, "i13_24737_tiff")
    raw = np.stack([tifffile.imread(os.path.join(d, f"raw_{i:05d}.tiff")) for i in range(91)])
    p = absorbance(raw, tifffile.imread(os.path.join(d, "flat_00001.tiff")),
                   tifffile.imread(os.path.join(d, "dark_00001.tiff")))
    return [np.ascontiguousarray(p[:, z, :]) for z in range(p.shape[1])]


def load_diad():
    import h5py
    with h5py.File(os.path.join(SHARED_DATA, "diad_k11_18014", "k11-18014.nxs"), "r") as f:
        data = f["/entry/imaging/data"][()]
        key = f["/entry/instrument/imaging/image_key"][()]
    p = absorbance(data[key == 0], data[key == 1].mean(0), data[key == 2].mean(0))
    return [np.ascontiguousarray(p[:, z, :]) for z in range(p.shape[1])]


DATASETS = [("tooth_aps", "tooth_aps/tooth.h5", load_tooth),
            ("i13_24737", "i13_24737_tiff/raw_00000.tiff", load_i13),
            ("diad_k11_18014", "diad_k11_18014/k11-18014.nxs", load_diad)]


def available_datasets():
    """(name, sinograms) of the datasets present; prints why the others are skipped."""
    if not os.path.isdir(SHARED_DATA):
        print(f"skip real-data checks: {os.path.normpath(SHARED_DATA)} not found (the shared "
              "data sit next to the repository)", flush=True)
        return []
    try:
        import h5py  # noqa: F401
        import tifffile  # noqa: F401
    except ImportError as e:
        print(f"skip real-data checks: {e}", flush=True)
        return []
    found = []
    for name, probe, load in DATASETS:
        if os.path.exists(os.path.join(SHARED_DATA, probe)):
            found.append((name, load()))
        else:
            print(f"skip {name}: {probe} not found under {SHARED_DATA}", flush=True)
    return found


# ---------------------------------------------------------------------------------------------
# Phantom measures


def ring_measure(residual, mask, radius, rmax):
    """RMS over 1-pixel radius bins (3 <= r < rmax) of the mean residual in each bin: rings
    are concentric about the rotation axis, so they survive the azimuthal mean and noise and
    other artefacts mostly do not."""
    sel = mask & (radius >= 3) & (radius < rmax)
    b = np.floor(radius[sel]).astype(int)
    n = np.bincount(b)
    s = np.bincount(b, residual[sel])
    prof = s[n > 0] / n[n > 0]
    return float(np.sqrt(np.mean(prof ** 2)))


def edge_pixels(truth):
    e = np.zeros(truth.shape, bool)
    d = truth[1:, :] != truth[:-1, :]
    e[1:, :] |= d
    e[:-1, :] |= d
    d = truth[:, 1:] != truth[:, :-1]
    e[:, 1:] |= d
    e[:, :-1] |= d
    return e


def phantom_measures(rec, truth, center):
    """(relative RMS error inside the circle away from edges, ring measure, mean gradient
    magnitude at the phantom's edges), all relative to the largest attenuation."""
    n = truth.shape[0]
    tmax = float(truth.max())
    r = min(center, n - 1 - center)
    c = np.arange(n) + 0.5 - n / 2
    x, y = np.meshgrid(c, -c)
    radius = np.hypot(x, y)  # slices are centred on the rotation axis
    fov = radius <= 0.95 * r
    inner = fov & interior_mask(truth)
    res = (rec - truth) / tmax
    err = float(np.sqrt(np.mean(res[inner] ** 2)))
    ring = ring_measure(res, inner, radius, 0.9 * r)
    gy, gx = np.gradient(rec.astype(np.float64))
    grad = float(np.hypot(gx, gy)[edge_pixels(truth) & fov].mean() / tmax)
    return err, ring, grad


def volume(scan, out, rows, *options, threads=None):
    args = ["volume", scan, out, 0, rows, f"center={phantom_center(scan)}", *options]
    if threads:
        args += ["--threads", threads]
    tool(*args)
    with open(os.path.join(out, "params.txt")) as f:
        info = dict(line.split(": ", 1) for line in f.read().splitlines())
    n = int(info["size"])
    slices = [np.fromfile(os.path.join(out, f"slice_{z:05d}.f32"), np.float32).reshape(n, n)
              for z in range(rows)]
    return slices, info["folder"] + ": " + info["params"]


# ---------------------------------------------------------------------------------------------


def main():
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-rings-")
    datasets = available_datasets()

    def sorting_matches_transcription():
        for name, sinos in datasets:
            n = sinos[0].shape[1]
            for size, dim in [(0, 1), (21, 1), (5, 2)]:
                width = size or auto_size(n)
                out = c_remove(tmp, sinos, "rings=sort", f"ring_size={size}", f"ring_dim={dim}")
                worst, identical = 0.0, 0
                for s, o in zip(sinos, out):
                    ref = ref_sorting(s, width, dim)
                    worst = max(worst, float(np.abs(o - ref).max() / np.abs(ref).max()))
                    identical += np.array_equal(o, ref)
                print(f"     {name}: {len(sinos)} sinograms {sinos[0].shape}, size {width}, "
                      f"dim {dim}: {identical} bit-identical, largest difference {worst:.2e} "
                      "of the largest value")
                assert worst <= 1e-6, (name, size, dim, worst)

    def chain_matches_transcription():
        for name, sinos in datasets:
            out = c_remove(tmp, sinos, "rings=all")
            worst, identical, changed = 0.0, 0, 0
            for s, o in zip(sinos, out):
                ref = ref_all(s)
                worst = max(worst, float(np.abs(o - ref).max() / np.abs(ref).max()))
                identical += np.array_equal(o, ref)
                changed += not np.array_equal(ref, ref_sorting(s, 21))
            print(f"     {name}: 'all' on {len(sinos)} sinograms: {identical} bit-identical, "
                  f"largest difference {worst:.2e} of the largest value ({changed} where the "
                  "dead/large steps changed something)")
            assert worst <= 1e-5, (name, worst)

    def threads_do_not_matter():
        for name, sinos in datasets:
            for method in ["sort", "all"]:
                one = c_remove(tmp, sinos, f"rings={method}")
                three = c_remove(tmp, sinos, f"rings={method}", threads=3)
                assert all(np.array_equal(a, b) for a, b in zip(one, three)), (name, method)

    def dead_columns_are_a_linear_spline():
        from scipy.interpolate import RectBivariateSpline
        for name, sinos in datasets:
            s = sinos[len(sinos) // 2].copy()
            m, n = s.shape
            if n < 40:
                continue
            for j in (n // 3, n // 3 + 1, 2 * n // 3):
                s[:, j] = np.float32(np.median(s))  # dead pixels: no change with angle
            expect, mask = ref_dead(s)
            assert mask[n // 3] and mask[2 * n // 3], f"{name}: the dead columns were not found"
            out = c_remove(tmp, [s], "rings=dead")[0]
            rows = np.arange(m, dtype=np.float64)
            good, bad = np.where(~mask)[0], np.where(mask)[0]
            spline = RectBivariateSpline(rows, good, s[:, good].astype(np.float64), kx=1, ky=1)
            fill = spline(rows, bad)
            scale = np.abs(s).max()
            d_spline = float(np.abs(out[:, bad] - fill).max() / scale)
            d_interp = max(float(np.abs(expect[i, bad] - np.interp(
                bad, good, s[i, good].astype(np.float64))).max()) for i in range(m)) / scale
            print(f"     {name}: {mask.sum()} dead columns replaced; against a degree-1 "
                  f"RectBivariateSpline {d_spline:.1e}, transcription against np.interp "
                  f"{d_interp:.1e} of the largest value")
            assert np.array_equal(out, expect)
            assert np.array_equal(out[:, ~mask], s[:, ~mask])
            assert d_spline <= 1e-6 and d_interp <= 1e-6

    # the phantom: ring columns with 1-5 % gain errors, 50000 photons
    width, rows, projections = 512, 4, 720
    rings_scan = phantom(os.path.join(tmp, "rings"), width, rows, projections, "--rings",
                         "--photons", 50000, "--seed", 5)
    clean_scan = phantom(os.path.join(tmp, "clean"), width, rows, projections,
                         "--photons", 50000, "--seed", 5)

    def measures(scan, *options, threads=None):
        slices, text = volume(scan, os.path.join(tmp, "v-" + "-".join(options or ["none"])),
                              rows, *options, threads=threads)
        center = phantom_center(scan)
        got = []
        for z, rec in enumerate(slices):
            truth = read_tiff(os.path.join(scan, "truth", f"slice_{z:05d}.tif"))
            if truth.max() > 0:
                got.append(phantom_measures(rec, truth, center))
        return np.mean(np.array(got), axis=0), text, slices

    def rings_removed_on_the_phantom():
        (e0, g0, s0), text0, _ = measures(rings_scan)
        (e1, g1, s1), text1, _ = measures(rings_scan, "rings=sort")
        (e2, g2, s2), text2, _ = measures(rings_scan, "rings=all")
        assert text0.startswith("slices: ") and "rings" not in text0, text0
        assert text1.startswith("rings-removed: "), text1
        assert text1.endswith(f"rings=sort ring_size={auto_size(width)} ring_dim=1"), text1
        assert "rings=all ring_snr=3.000000 ring_la_size=51" in text2, text2
        print(f"     error in the circle  none {e0:.5f}  sort {e1:.5f} ({e0 / e1:.2f}x less)  "
              f"all {e2:.5f}")
        print(f"     ring measure         none {g0:.5f}  sort {g1:.5f} ({g0 / g1:.2f}x less)  "
              f"all {g2:.5f}")
        print(f"     gradient at edges    none {s0:.5f}  sort {s1:.5f} ({s1 / s0:.3f})  "
              f"all {s2:.5f}")
        assert e0 / e1 > 1.2, (e0, e1)
        assert g0 / g1 > 1.8, (g0, g1)
        assert 0.9 < s1 / s0 < 1.1, (s0, s1)

    def clean_phantom_barely_changed():
        (e0, g0, s0), _, _ = measures(clean_scan)
        (e1, g1, s1), _, _ = measures(clean_scan, "rings=sort")
        print(f"     no ring columns: error none {e0:.5f}  sort {e1:.5f}; ring measure "
              f"{g0:.5f} -> {g1:.5f}; edges {s1 / s0:.3f}")
        assert e1 < 1.1 * e0, (e0, e1)
        assert 0.9 < s1 / s0 < 1.1, (s0, s1)

    def engine_threads_do_not_matter():
        # 1 thread; 2 threads (one sinogram per thread); 8 threads (each sinogram over all)
        _, _, plain = measures(rings_scan, threads=2)
        for method in ["sort", "all"]:
            ref = None
            for threads in [1, 2, 8]:
                _, _, slices = measures(rings_scan, f"rings={method}", threads=threads)
                if ref is None:
                    ref = slices
                    assert not any(np.array_equal(a, b) for a, b in zip(ref, plain)), method
                assert all(np.array_equal(a, b) for a, b in zip(ref, slices)), (method, threads)

    if datasets:
        r.check("algorithm 3 equals its NumPy/SciPy transcription on real sinograms",
                sorting_matches_transcription)
        r.check("the 'all' chain equals its transcription on real sinograms",
                chain_matches_transcription)
        r.check("real sinograms: 1 and 3 threads give the same bits", threads_do_not_matter)
        r.check("dead columns are filled like a degree-1 bivariate spline",
                dead_columns_are_a_linear_spline)
    r.check("ring removal through the engine on a phantom with ring columns",
            rings_removed_on_the_phantom)
    r.check("a phantom without ring columns is barely changed", clean_phantom_barely_changed)
    r.check("the engine gives the same pixels with 1, 2 and 8 threads",
            engine_threads_do_not_matter)
    r.finish()


if __name__ == "__main__":
    main()
