"""Noise2Inverse: the split sub-reconstructions and denoised/, against independent computations.

- Splits (read through the library with n2i_tool, which uses tomo_volume_fetch):
  split 0 equals, to float rounding, the reconstruction of the same scan written with only its
  projections; every split equals a NumPy filtered back-projection of its own projections
  (written from backproject.h's definition, Ram-Lak kernel convolved directly); the mean of
  the K splits equals slices/ without ring removal (linear), and is close to rings-removed/.
- denoised/ through a real mount: README.txt without a model; with a model holding a small
  random network (every BatchNorm parameter and statistic random), every slice read equals a
  NumPy forward pass of the network described in denoise/unet.h, on the X:1 inputs of
  denoise/model.h built here from the splits, reflected at the first and last slice and
  padded by reflection; for K = 2 and K = 3. Bad model files fail the mount with one message.
"""

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
from common import Mount, Results, fov_mask, phantom, phantom_center, read_tiff, run  # noqa

N2I_TOOL = os.environ.get("N2I_TOOL") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "tests", "n2i_tool")

WIDTH, ROWS, PROJ = 100, 12, 120
LEVELS, FEATURES, CHANNELS = 3, 4, 11

# float32 arithmetic in tomofs against float64 here
FBP_TOL = 5e-5          # NumPy FBP against a split, relative to the slice maximum
LINEAR_TOL = 2e-5       # mean of splits against slices/ (no ring removal)
RINGS_TOL = 2e-2        # mean of splits against rings-removed/, relative RMS
NET_TOL = 1e-4          # denoised/ against the NumPy network, relative to the slice's range


def tool(*args):
    p = subprocess.run([N2I_TOOL, *map(str, args)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"n2i_tool {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p.stdout.strip()


def read_splits(outdir, K, size=WIDTH):
    """splits[k][z] from n2i_tool split's files."""
    return np.stack([np.stack([np.fromfile(os.path.join(outdir, f"split_{k}_{z:05d}.f32"),
                                           np.float32).reshape(size, size)
                               for z in range(ROWS)]) for k in range(K)])


def reflect(i, n):
    """denoise/model.h's tomo_model_reflect: -1 -> 1, n -> n - 2."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


# ---- an independent filtered back-projection (recon/backproject.h's definition) ----

def read_log(scan):
    rows = [line.split() for line in open(os.path.join(scan, "output.log")) if line.strip()]
    return [(int(r[0]), float(r[1]), float(r[2]), int(r[3])) for r in rows]


def absorbance(scan):
    """-log of the flat- and dark-corrected projections, flats interpolated in time between
    the mean of each run of consecutive flats; returns (angles in degrees, p[m][row][col])."""
    import tifffile
    log = read_log(scan)
    dark = tifffile.imread(os.path.join(scan, "dark.tif")).astype(np.float64)
    frame = lambda n: tifffile.imread(os.path.join(scan, f"q{n:04d}.tif")).astype(np.float64)
    groups, current, prev_flag = [], [], None
    for n, t, a, flag in log:
        if flag == 0:
            if prev_flag != 0:
                current = []
                groups.append(current)
            current.append((n, t))
        prev_flag = flag
    group_t = [np.mean([t for _, t in g]) for g in groups]
    group_f = [np.mean([frame(n) for n, _ in g], axis=0) for g in groups]
    angles, proj = [], []
    for n, t, a, flag in log:
        if flag != 1:
            continue
        after = next((i for i, gt in enumerate(group_t) if gt >= t), len(groups) - 1)
        before = max(after - 1, 0)
        if group_t[after] < t or after == before:
            flat = group_f[after]
        else:
            w = (t - group_t[before]) / (group_t[after] - group_t[before])
            flat = (1 - w) * group_f[before] + w * group_f[after]
        i = np.maximum(frame(n) - dark, 2.0)
        proj.append(-np.log(i / np.maximum(flat - dark, 2.0)))
        angles.append(a)
    return np.array(angles), np.array(proj)


def ramlak_fbp(p, angles_deg, first_deg, center, width, pixel_cm=1e-4):
    """p[m][x] -> width x width slice in cm^-1: the Ram-Lak kernel (h0 = 1/4,
    h_odd = -1/(pi n)^2) convolved directly with the zero-padded rows, weights pi / M (uniform
    views), linear interpolation, zero outside the reconstruction circle."""
    n = np.arange(-(width - 1), width)
    h = np.where(n == 0, 0.25, np.where(n % 2 != 0, -1.0 / (np.pi * np.maximum(abs(n), 1)) ** 2,
                                         0.0))
    q = np.array([np.convolve(row, h, mode="full")[width - 1:2 * width - 1] for row in p])
    theta = np.radians(angles_deg - first_deg)
    w = np.pi / len(theta)
    c = np.arange(width) + 0.5 - width / 2
    X, Y = np.meshgrid(c, -c)
    out = np.zeros((width, width))
    cols = np.arange(width)
    for m in range(len(theta)):
        r = X * np.cos(theta[m]) + Y * np.sin(theta[m]) + center
        out += w * np.interp(r, cols, q[m], left=0, right=0)
    out /= pixel_cm
    out[~fov_mask(width, center, width)] = 0
    return out


def write_subset_scan(scan, out, k, K):
    """The same scan with only projections k, k + K, ...: every flat kept, frames linked."""
    os.makedirs(out)
    log = read_log(scan)
    lines, m = [], 0
    for n, t, a, flag in log:
        if flag == 1:
            keep = m % K == k
            m += 1
            if not keep:
                continue
        lines.append(f"{n}\t{t:.4f}\t{a:.6f}\t{flag}\n")
        os.symlink(os.path.join(scan, f"q{n:04d}.tif"), os.path.join(out, f"q{n:04d}.tif"))
    open(os.path.join(out, "output.log"), "w").writelines(lines)
    os.symlink(os.path.join(scan, "dark.tif"), os.path.join(out, "dark.tif"))


# ---- the network of denoise/unet.h, in NumPy ----

def unet_layout(cin, f, levels):
    """Offsets in PyTorch's order, as unet.h lays them out (computed here independently)."""
    p = {"n": 0}
    b = {"n": 0}

    def take(d, size):
        at = d["n"]
        d["n"] += size
        return at

    def unit(i, o):
        return dict(i=i, o=o, w=take(p, o * i * 9), g=take(p, o), b=take(p, o),
                    mean=take(b, o), var=take(b, o))

    def block(i, o):
        return (unit(i, o), unit(o, o))

    down, ch = [], cin
    for l in range(levels + 1):
        down.append(block(ch, f << l))
        ch = f << l
    up, dec = [None] * levels, [None] * levels
    for l in range(levels - 1, -1, -1):
        i, o = f << (l + 1), f << l
        up[l] = dict(i=i, o=o, w=take(p, i * o * 4), b=take(p, o))
        dec[l] = block(2 * o, o)
    head = dict(w=take(p, f), b=take(p, 1))
    return down, up, dec, head, p["n"], b["n"]


def conv3x3(x, w):
    """x [c][h][w], w [o][c][3][3], zero padding 1, no bias."""
    c, hh, ww = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], hh, ww))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + hh, dx:dx + ww])
    return out


def unet_forward(x, params, buffers, layout):
    down, up, dec, head, _, _ = layout

    def unit(x, u):
        w = params[u["w"]:u["w"] + u["o"] * u["i"] * 9].reshape(u["o"], u["i"], 3, 3)
        g, b = params[u["g"]:u["g"] + u["o"]], params[u["b"]:u["b"] + u["o"]]
        mean, var = buffers[u["mean"]:u["mean"] + u["o"]], buffers[u["var"]:u["var"] + u["o"]]
        y = conv3x3(x, w)
        y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * g[:, None, None] \
            + b[:, None, None]
        return np.maximum(y, 0)

    def block(x, bl):
        return unit(unit(x, bl[0]), bl[1])

    skips = []
    for l, bl in enumerate(down):
        if l > 0:
            c, hh, ww = x.shape
            x = x.reshape(c, hh // 2, 2, ww // 2, 2).max(axis=(2, 4))
        x = block(x, bl)
        skips.append(x)
    for l in range(len(up) - 1, -1, -1):
        u = up[l]
        w = params[u["w"]:u["w"] + u["i"] * u["o"] * 4].reshape(u["i"], u["o"], 2, 2)
        c, hh, ww = x.shape
        y = np.einsum("chw,coab->ohawb", x, w).reshape(u["o"], 2 * hh, 2 * ww)
        y += params[u["b"]:u["b"] + u["o"]][:, None, None]
        x = block(np.concatenate([skips[l], y]), dec[l])
    hw = params[head["w"]:head["w"] + x.shape[0]]
    return np.einsum("c,chw->hw", hw, x) + params[head["b"]]


def numpy_denoised(splits, z, model_path, mean, std, center):
    """denoise/model.h's formula for slice z, from splits[k][z] (float64)."""
    K = splits.shape[0]
    context = (CHANNELS - 1) // 2
    params = np.fromfile(model_path + ".params.f32", np.float32).astype(np.float64)
    buffers = np.fromfile(model_path + ".buffers.f32", np.float32).astype(np.float64)
    layout = unet_layout(CHANNELS, FEATURES, LEVELS)
    assert layout[4] == params.size and layout[5] == buffers.size, "layout disagrees"
    S = splits.shape[-1]
    unit = 1 << LEVELS
    P = (S + unit - 1) // unit * unit
    lo = (P - S) // 2
    zs = [reflect(z - context + c, ROWS) for c in range(CHANNELS)]
    s = splits[:, zs].astype(np.float64)  # [K][C][S][S]
    acc = np.zeros((S, S))
    for k in range(K):
        x = (np.delete(s, k, axis=0).mean(axis=0) - mean) / std
        x = np.pad(x, ((0, 0), (lo, P - S - lo), (lo, P - S - lo)), mode="reflect")
        acc += unet_forward(x, params, buffers, layout)[lo:lo + S, lo:lo + S]
    out = std * acc / K + mean
    out[~fov_mask(S, center, WIDTH)] = 0
    return out


def main():
    if not os.path.exists(N2I_TOOL):
        print(f"SKIP: {N2I_TOOL} not built")
        sys.exit(77)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-n2i-")
    cache = os.path.join(os.environ["XDG_CACHE_HOME"], "tomofs")
    scan = phantom(os.path.join(tmp, "scan"), WIDTH, ROWS, PROJ, "--format", "tif",
                   "--photons", "20000", "--seed", "3")
    clean = phantom(os.path.join(tmp, "clean"), WIDTH, ROWS, PROJ, "--format", "tif")
    center = phantom_center(scan)
    fixed = f"center={center},pad=zero"
    # the mount's own splits are what serving uses; the tool reads them the same way
    splits_sort = os.path.join(tmp, "splits-sort")
    tool("split", scan, splits_sort, 0, ROWS, "-o", fixed + ",cache=none")
    splits2 = read_splits(splits_sort, 2)

    def readme_without_model():
        with Mount(scan, "-o", fixed) as m:
            names = os.listdir(m.dir)
            assert {"denoised", "rings-removed", "scan.json", "slices"} <= set(names), names
            assert not any("split" in name for name in names), names
            assert os.listdir(m.path("denoised")) == ["README.txt"]
            text = open(m.path("denoised", "README.txt")).read()
            info = json.load(open(m.path("scan.json")))
            d = info["denoising"]
            assert d["model_loaded"] is False and d["splits"] == 2, d
            assert d["base"] == "rings-removed", d
            assert d["model"].startswith(os.path.join(cache, "models") + "/"), d
            for needle in ["tomofs train " + scan, d["model"], "-o model="]:
                assert needle in text, (needle, text)
            assert not any("split" in v for v in info["variants"]), info["variants"]
            for name in ["split_0_of_2", "split_1_of_2"]:
                assert not os.path.exists(m.path(name)), name

    def split0_is_the_subset_scan():
        sub = os.path.join(tmp, "subset-0-of-2")
        write_subset_scan(scan, sub, 0, 2)
        with Mount(sub, "-o", fixed + ",cache=none") as m:
            for z in range(ROWS):
                ref = read_tiff(m.path("rings-removed", f"slice_{z:05d}.tif"))
                # the same operations on the same numbers: equal bit for bit
                assert np.array_equal(splits2[0, z], ref), (z, np.abs(splits2[0, z] - ref).max())

    def every_split_is_an_fbp_of_its_projections():
        for K in [2, 3]:
            out = os.path.join(tmp, f"splits-fbp-{K}")
            tool("split", clean, out, 0, ROWS, "-o",
                 f"{fixed},rings=none,filter=ram-lak,splits={K},cache=none")
            splits = read_splits(out, K)
            angles, p = absorbance(clean)
            worst = 0
            for k in range(K):
                for z in [2, 6, 9]:
                    ref = ramlak_fbp(p[k::K, z], angles[k::K], angles[0], center, WIDTH)
                    err = np.abs(splits[k, z] - ref).max() / np.abs(ref).max()
                    worst = max(worst, err)
                    assert err <= FBP_TOL, (K, k, z, err)
            print(f"     K={K}: splits against NumPy FBP: max |diff| / max {worst:.2e}")

    def mean_of_splits_is_the_full_reconstruction():
        out = os.path.join(tmp, "splits-linear")
        tool("split", scan, out, 0, ROWS, "-o", fixed + ",rings=none,cache=none")
        linear = read_splits(out, 2)
        with Mount(scan, "-o", fixed + ",cache=none") as m:
            worst, rms = 0, []
            for z in range(ROWS):
                full = read_tiff(m.path("slices", f"slice_{z:05d}.tif"))
                err = np.abs(linear[:, z].mean(0) - full).max() / np.abs(full).max()
                worst = max(worst, err)
                assert err <= LINEAR_TOL, (z, err)
                rr = read_tiff(m.path("rings-removed", f"slice_{z:05d}.tif"))
                mask = fov_mask(WIDTH, center, WIDTH)
                rms.append(np.sqrt(np.mean((splits2[:, z].mean(0) - rr)[mask] ** 2))
                           / np.sqrt(np.mean(rr[mask] ** 2)))
            print(f"     mean of 2 splits: against slices/ max |diff| / max {worst:.2e}, "
                  f"against rings-removed/ relative RMS {max(rms):.2e}")
            assert max(rms) <= RINGS_TOL, rms

    model_mean, model_std = float(splits2.mean()), float(splits2.std())

    def denoised_equals_numpy(K, splits, extra_options, model_arg, seed):
        path = tool("model", scan, model_arg, "--levels", LEVELS, "--features", FEATURES,
                    "--channels", CHANNELS, "--splits", K, "--seed", seed, "--mean",
                    model_mean, "--std", model_std, "-o", fixed + f",cache={cache}")
        opts = fixed + extra_options + (f",model={path}" if model_arg != "default" else "")
        with Mount(scan, "-o", opts) as m:
            assert "denoised" in os.listdir(m.dir)
            names = sorted(os.listdir(m.path("denoised")))
            assert names == [f"slice_{z:05d}.tif" for z in range(ROWS)], names
            info = json.load(open(m.path("scan.json")))
            d = info["denoising"]
            assert d["model_loaded"] is True and d["splits"] == K and d["model"] == path, d
            params = info["variants"]["denoised"]["parameters"]
            assert f"model={d['model_id']}" in params, params
            worst = 0
            for z in [0, 1, ROWS // 2, ROWS - 2, ROWS - 1]:
                fname = m.path("denoised", f"slice_{z:05d}.tif")
                assert os.path.getsize(fname) == 4096 + WIDTH * WIDTH * 4
                got = read_tiff(fname)
                ref = numpy_denoised(splits, z, path, model_mean, model_std, center)
                err = np.abs(got - ref).max() / (ref.max() - ref.min())
                worst = max(worst, err)
                assert err <= NET_TOL, (K, z, err)
                # not simply the input: the network changed the slice
                assert np.abs(got - splits[:, z].mean(0)).max() > 0.01 * np.abs(ref).max()
            print(f"     K={K}: denoised/ against NumPy: max |diff| / range {worst:.2e} "
                  f"(slices 0, 1, {ROWS // 2}, {ROWS - 2}, {ROWS - 1})")
        return path

    def denoised_k2_default_place():
        denoised_equals_numpy(2, splits2, "", "default", 5)

    def denoised_k3_model_option():
        out = os.path.join(tmp, "splits-3")
        tool("split", scan, out, 0, ROWS, "-o", fixed + ",splits=3,cache=none")
        denoised_equals_numpy(3, read_splits(out, 3), "", os.path.join(tmp, "k3.model"), 6)

    def tiles_equal_the_full_slice_inside():
        # 98 columns, 2 levels: padded to 100, one column of reflection before the slice; an
        # output pixel sees 7 * 4 - 5 = 23 pixels either side, so with the default margin (28)
        # tiles must give the full slice's pixels at least 23 from the padded border
        scan98 = phantom(os.path.join(tmp, "scan98"), 98, 8, 96, "--format", "tif",
                         "--photons", "20000")
        opts = f"center={phantom_center(scan98)},pad=zero,cache=none"
        path = tool("model", scan98, os.path.join(tmp, "m98.model"), "--levels", 2,
                    "--features", FEATURES, "--mean", 30, "--std", 60, "-o", opts)
        opts += f",model={path}"

        def denoised(name, *flags):
            out = os.path.join(tmp, name)
            tool("denoise", scan98, out, 3, 4, *flags, "-o", opts)
            backend = open(os.path.join(out, "backend.txt")).read().strip()
            return np.fromfile(os.path.join(out, "denoised_00003.f32"),
                               np.float32).reshape(98, 98), backend

        full, b = denoised("full")
        assert "full 98 x 98 slice" in b, b
        inside = (slice(22, 76), slice(22, 76))
        for tile in [64, 80]:
            tiled, b = denoised(f"tiles{tile}", "--tile", tile)
            assert f"{tile} x {tile} tiles overlapping by 28" in b, b
            assert np.array_equal(tiled[inside], full[inside]), \
                np.abs(tiled - full)[inside].max()
        # a margin short of the reach changes pixels inside too: the check can fail
        short, b = denoised("short", "--tile", 48, "--margin", 16)
        assert np.abs(short - full)[inside].max() > 1e-3 * (full.max() - full.min())
        print(f"     tiles 64 and 80: equal inside; at the edges max |diff| / range "
              f"{np.abs(tiled - full).max() / (full.max() - full.min()):.2e}")

    def readers_export_and_sigterm():
        # the K = 2 model of the default place, from the check before
        opts = fixed
        exported = os.path.join(tmp, "export-denoised")
        run("export", scan, exported, "--variant", "denoised", "--range", f"{ROWS - 4}:{ROWS}",
            "-o", opts)
        with Mount(scan, "-o", opts + ",cache=none") as m:
            failures = []

            def reader(seed):
                local = random.Random(seed)
                for _ in range(6):
                    name = f"slice_{local.randrange(ROWS - 4, ROWS):05d}.tif"
                    with open(m.path("denoised", name), "rb") as f:
                        off = local.randrange(4096 + WIDTH * WIDTH * 4)
                        f.seek(off)
                        part = f.read(3000)
                        f.seek(0)
                        whole = f.read()
                    ref = open(os.path.join(exported, name), "rb").read()
                    if whole != ref or part != ref[off:off + 3000]:
                        failures.append(name)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not failures, failures
        print("     6 concurrent readers of denoised/ read what export wrote")

        # SIGTERM while a slice of a larger network is being denoised: the daemon cancels it,
        # stops the denoiser before the engine and exits
        big = tool("model", scan, os.path.join(tmp, "big.model"), "--levels", 4, "--features",
                   32, "--mean", model_mean, "--std", model_std, "-o", fixed + ",cache=none")
        with Mount(scan, "-o", fixed + f",cache=none,model={big}") as m:
            pid = m.pid()
            outcome = []

            def read_one():
                t0 = time.time()
                try:
                    outcome.append(len(open(m.path("denoised", "slice_00005.tif"), "rb").read()))
                except OSError as e:
                    outcome.append(e.errno)
                outcome.append(time.time() - t0)

            t = threading.Thread(target=read_one)
            t.start()
            time.sleep(0.5)
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 60
            while (os.path.ismount(m.dir) or os.path.exists(f"/proc/{pid}")) and \
                    time.time() < deadline:
                time.sleep(0.05)
            t.join(60)
            assert not os.path.exists(f"/proc/{pid}"), "daemon still running after SIGTERM"
            assert not os.path.ismount(m.dir), "still mounted after SIGTERM"
            print(f"     SIGTERM during a denoised read: the reader got {outcome[0]} after "
                  f"{outcome[1]:.1f} s; the daemon exited")

    def bad_models_fail_the_mount():
        bad = os.path.join(tmp, "bad.model")
        open(bad, "wb").write(b"TOMOFS-N2I-MODEL" + b"\0" * 100)
        other = os.path.join(tmp, "other.model")
        tool("model", clean, other, "--levels", LEVELS, "--features", FEATURES, "-o",
             fixed + ",cache=none")
        for path, why in [(bad, ""), (os.path.join(tmp, "missing.model"), ""), (other, "scan")]:
            mnt = tempfile.mkdtemp(prefix="tomofs-mnt-")
            p = run("mount", scan, mnt, "-o", fixed + f",model={path}", check=False)
            assert p.returncode != 0 and not os.path.ismount(mnt), p
            msg = p.stderr.strip().splitlines()[-1]
            assert path in msg and why in msg, msg
            print(f"     {msg}")
            os.rmdir(mnt)
        for value in ["1", "17", "x"]:
            p = run("info", scan, "-o", f"splits={value}", check=False)
            assert p.returncode != 0 and f"splits={value}" in p.stderr, p
        print(f"     {p.stderr.strip()}")

    r.check("denoised/ holds README.txt until a model exists", readme_without_model)
    r.check("split 0 equals the scan written with only its projections",
            split0_is_the_subset_scan)
    r.check("every split equals a NumPy FBP of its projections (K = 2, 3)",
            every_split_is_an_fbp_of_its_projections)
    r.check("the mean of the splits is the full reconstruction",
            mean_of_splits_is_the_full_reconstruction)
    r.check("denoised/ equals the NumPy network, K = 2, model at the default place",
            denoised_k2_default_place)
    r.check("denoised/ equals the NumPy network, K = 3, -o model=",
            denoised_k3_model_option)
    r.check("concurrent readers and export agree; SIGTERM during denoising exits",
            readers_export_and_sigterm)
    r.check("tiles give the full slice's pixels beyond the network's reach",
            tiles_equal_the_full_slice_inside)
    r.check("unusable models fail the mount with one message", bad_models_fail_the_mount)
    shutil.rmtree(tmp, ignore_errors=True)
    r.finish()


if __name__ == "__main__":
    main()
