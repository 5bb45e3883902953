#!/usr/bin/env python3
"""Noise2Inverse on a noisy phantom: quality against the truth, and the time it takes.

Writes a noisy phantom scan, trains its model with `tomofs train`, mounts it and compares, on
the middle slices and inside the field of view:
  - PSNR against the truth of rings-removed/ (full-data FBP) and of denoised/;
  - SNR = mean of a material region / standard deviation of the air around the sample
    (both eroded 3 pixels away from any edge of the truth).
Prints one table; --save DIR keeps a middle slice of each (and the truth) as .npy files.

  tools/bench/denoise_quality.py --tomofs build/tools/tomofs [--device cuda:0] [options]
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy import ndimage
import tifffile


def sh(*args, **kw):
    print("+", " ".join(map(str, args)), file=sys.stderr, flush=True)
    return subprocess.run(list(map(str, args)), check=True, **kw)


def regions(truth):
    """Masks of the field of view, one uniform material region and the air inside the FOV."""
    n = truth.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2.0
    fov = (xx - c) ** 2 + (yy - c) ** 2 < (0.45 * n) ** 2
    values, counts = np.unique(truth[fov & (truth > 0)], return_counts=True)
    material = ndimage.binary_erosion((truth == values[np.argmax(counts)]) & fov, iterations=3)
    air = ndimage.binary_erosion((truth == 0) & fov, iterations=3)
    return fov, material, air


def psnr(img, truth, fov):
    mse = np.mean((img[fov] - truth[fov]) ** 2)
    peak = truth[fov].max()
    return 10 * np.log10(peak * peak / mse)


def snr(img, material, air):
    return img[material].mean() / img[air].std()


def read_denoised(args, scan, model, options, zs, env):
    mnt = tempfile.mkdtemp(prefix="tomofs-n2i-mnt-")
    sh(args.tomofs, "mount", scan, mnt, "-o", f"cache=none,model={model},{options}", env=env)
    try:
        t0 = time.time()
        out = [tifffile.imread(os.path.join(mnt, "denoised", "slice_%05d.tif" % z)) for z in zs]
        return out, time.time() - t0
    finally:
        sh(args.tomofs, "umount", mnt, env=env)


def compare_backends(args, scan, cache, env):
    """denoised/ computed on the CPU and on the GPU (both exact) from the same model."""
    models = glob.glob(os.path.join(cache, "tomofs", "models", "*.model"))
    if len(models) != 1:
        raise SystemExit(f"expected one model in {cache}, found {models}")
    z0 = (args.rows - args.compare_cpu) // 2
    zs = range(z0, z0 + args.compare_cpu)
    cpu, cpu_s = read_denoised(args, scan, models[0], "device=cpu", zs, env)
    gpu, gpu_s = read_denoised(args, scan, models[0], "device=cuda:0,precision=exact", zs, env)
    worst = 0.0
    for a, b in zip(cpu, gpu):
        worst = max(worst, np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(a ** 2)))
    print(f"denoised/ GPU against CPU, {len(zs)} slices: relative RMS difference at most "
          f"{worst:.2e} (CPU {cpu_s:.1f} s, GPU {gpu_s:.1f} s, no cache)")
    if worst > 1e-4:
        raise SystemExit("GPU and CPU differ by more than 1e-4")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tomofs", default="build/tools/tomofs")
    ap.add_argument("--work", default=None, help="folder for the scan (default: temporary)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--projections", type=int, default=720)
    ap.add_argument("--photons", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--slices-per-epoch", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--net", default="11:32:4")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-slices", type=int, default=16, help="middle slices compared")
    ap.add_argument("--save", default=None, help="folder for .npy images of a middle slice")
    ap.add_argument("--compare-cpu", type=int, default=0, metavar="N",
                    help="also serve N middle slices of denoised/ on the CPU and on the GPU "
                         "(precision=exact, no cache) and compare them")
    args = ap.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="tomofs-n2i-")
    scan = os.path.join(work, "scan")
    cache = os.path.join(work, "cache")
    os.makedirs(cache, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    if not os.path.exists(os.path.join(scan, "output.log")):
        sh(args.tomofs, "phantom", scan, "--width", args.width, "--rows", args.rows,
           "--projections", args.projections, "--photons", args.photons, env=env)

    t0 = time.time()
    sh(args.tomofs, "train", scan, "--epochs", args.epochs, "--slices-per-epoch",
       args.slices_per_epoch, "--batch", args.batch, "--patch", args.patch, "--net", args.net,
       "--device", args.device, env=env)
    train_s = time.time() - t0

    mnt = tempfile.mkdtemp(prefix="tomofs-n2i-mnt-")
    sh(args.tomofs, "mount", scan, mnt, "-o", "device=" + args.device, env=env)
    try:
        z0 = (args.rows - args.eval_slices) // 2
        rows = []
        t0 = time.time()
        first = None
        for z in range(z0, z0 + args.eval_slices):
            name = "slice_%05d.tif" % z
            truth = tifffile.imread(os.path.join(scan, "truth", name))
            fbp = tifffile.imread(os.path.join(mnt, "rings-removed", name))
            t1 = time.time()
            den = tifffile.imread(os.path.join(mnt, "denoised", name))
            if first is None:
                first = time.time() - t1
            fov, material, air = regions(truth)
            rows.append((psnr(fbp, truth, fov), psnr(den, truth, fov), snr(fbp, material, air),
                         snr(den, material, air)))
            if args.save and z == z0 + args.eval_slices // 2:
                os.makedirs(args.save, exist_ok=True)
                np.save(os.path.join(args.save, "truth.npy"), truth)
                np.save(os.path.join(args.save, "rings-removed.npy"), fbp)
                np.save(os.path.join(args.save, "denoised.npy"), den)
        read_s = time.time() - t0
    finally:
        sh(args.tomofs, "umount", mnt, env=env)

    if args.compare_cpu:
        compare_backends(args, scan, cache, env)

    r = np.array(rows)
    print(f"phantom {args.width} x {args.rows} x {args.projections}, {args.photons} photons; "
          f"training {args.epochs} epochs x {args.slices_per_epoch} slices, batch {args.batch}, "
          f"patch {args.patch}, net {args.net}, device {args.device}: {train_s:.1f} s")
    print(f"{'':>16} {'PSNR dB':>9} {'SNR':>8}")
    print(f"{'rings-removed':>16} {r[:, 0].mean():9.2f} {r[:, 2].mean():8.2f}")
    print(f"{'denoised':>16} {r[:, 1].mean():9.2f} {r[:, 3].mean():8.2f}")
    print(f"gain: {r[:, 1].mean() - r[:, 0].mean():+.2f} dB PSNR, "
          f"x{r[:, 3].mean() / r[:, 2].mean():.2f} SNR "
          f"(over {args.eval_slices} middle slices; per slice PSNR gain "
          f"{(r[:, 1] - r[:, 0]).min():+.2f} .. {(r[:, 1] - r[:, 0]).max():+.2f} dB)")
    print(f"first denoised slice through the mount: {first:.3f} s; "
          f"{args.eval_slices} slices of both folders: {read_s:.1f} s")


if __name__ == "__main__":
    main()
