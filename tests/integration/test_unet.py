"""The U-Net's CPU backend (denoise/unet_cpu.c) against a NumPy forward pass.

tests/tools/unet_tool dump writes a network's flat parameters and running statistics (every
BatchNorm parameter and statistic drawn away from its initial value), a random input, and what
the backend computed from them. Here the flat arrays are read back through this file's own
transcription of unet.h's layout (PyTorch's order: conv weight [out][in][3][3], gamma, beta;
transposed-conv weight [in][out][2][2], bias; head weight and bias) and the network is run with
NumPy in float64:

  - inference (running statistics): max |C - NumPy| <= 1e-5 x max |NumPy|;
  - training-mode BatchNorm (batch statistics, biased variance): the same bound, and the batch
    means and variances within 1e-5 (relative to 1 + |value|);
  - the running statistics after one train_step with lr 0: 0.9 old + 0.1 batch, the variance
    unbiased (x M / (M - 1)), within 1e-6.

Three networks: a small odd one (5 channels, 6 features, 3 levels, 3 images of 56 x 40), the
default one (11 channels, 32 features, 4 levels) on 2 images of 48 x 64 with 2 threads, and a
1-level one on 2 x 2 images (1 x 1 at the bottom).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import SOURCE, Results  # noqa: E402

UNET_TOOL = os.environ.get("UNET_TOOL") or os.path.join(SOURCE, "build", "tests", "unet_tool")
EPS = 1e-5


def layout(channels, features, levels):
    """Offsets of every tensor in the flat arrays, computed from unet.h's description."""
    p = 0
    b = 0

    def take(shape):
        nonlocal p
        at = p
        p += int(np.prod(shape))
        return (at, shape)

    def take_buf(n):
        nonlocal b
        at = b
        b += n
        return at

    def unit(ci, co):
        return {"w": take((co, ci, 3, 3)), "gamma": take((co,)), "beta": take((co,)),
                "mean": take_buf(co), "var": take_buf(co), "c": co}

    def block(ci, co):
        return [unit(ci, co), unit(co, co)]

    down, up, dec = [], {}, {}
    ci = channels
    for lv in range(levels + 1):
        down.append(block(ci, features << lv))
        ci = features << lv
    for lv in range(levels - 1, -1, -1):
        c = features << lv
        up[lv] = {"w": take((2 * c, c, 2, 2)), "b": take((c,))}
        dec[lv] = block(2 * c, c)
    head = {"w": take((features,)), "b": take((1,))}
    return {"down": down, "up": up, "dec": dec, "head": head, "n_params": p, "n_buffers": b}


def get(params, entry):
    at, shape = entry
    return params[at:at + int(np.prod(shape))].reshape(shape).astype(np.float64)


def conv3x3(x, w):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oi,nihw->nohw", w[:, :, ky, kx], xp[:, :, ky:ky + h, kx:kx + wd])
    return out


class Net:
    def __init__(self, lay, params, buffers, training):
        self.lay, self.p, self.buf, self.training = lay, params, buffers, training
        self.stats = np.zeros(lay["n_buffers"])

    def unit(self, u, x):
        x = conv3x3(x, get(self.p, u["w"]))
        c = u["c"]
        if self.training:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))  # biased
            self.stats[u["mean"]:u["mean"] + c] = mean
            self.stats[u["var"]:u["var"] + c] = var
        else:
            mean = self.buf[u["mean"]:u["mean"] + c].astype(np.float64)
            var = self.buf[u["var"]:u["var"] + c].astype(np.float64)
        g = get(self.p, u["gamma"])
        b = get(self.p, u["beta"])
        y = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)
        return np.maximum(g[None, :, None, None] * y + b[None, :, None, None], 0)

    def block(self, bl, x):
        return self.unit(bl[1], self.unit(bl[0], x))

    def forward(self, x):
        lay = self.lay
        levels = len(lay["down"]) - 1
        skips = []
        for lv in range(levels + 1):
            x = self.block(lay["down"][lv], x)
            skips.append(x)
            if lv < levels:
                n, c, h, w = x.shape
                x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        for lv in range(levels - 1, -1, -1):
            w = get(self.p, lay["up"][lv]["w"])
            b = get(self.p, lay["up"][lv]["b"])
            n, c, h, wd = x.shape
            up = np.zeros((n, w.shape[1], 2 * h, 2 * wd))
            for dy in range(2):
                for dx in range(2):
                    up[:, :, dy::2, dx::2] = (np.einsum("io,nihw->nohw", w[:, :, dy, dx], x)
                                              + b[None, :, None, None])
            x = self.block(lay["dec"][lv], np.concatenate([skips[lv], up], axis=1))
        hw = get(self.p, lay["head"]["w"])
        hb = get(self.p, lay["head"]["b"])
        return np.einsum("c,nchw->nhw", hw, x) + hb[0]


def check_network(channels, features, levels, batch, height, width, threads, seed):
    with tempfile.TemporaryDirectory(prefix="unet-") as d:
        subprocess.run([UNET_TOOL, "dump", d, "--channels", str(channels), "--features",
                        str(features), "--levels", str(levels), "--batch", str(batch),
                        "--height", str(height), "--width", str(width), "--threads",
                        str(threads), "--seed", str(seed)], check=True, timeout=600)
        cfg = dict(line.split() for line in open(os.path.join(d, "config.txt")))
        lay = layout(channels, features, levels)
        assert int(cfg["n_params"]) == lay["n_params"], (cfg["n_params"], lay["n_params"])
        assert int(cfg["n_buffers"]) == lay["n_buffers"]

        def raw(name, shape=None):
            a = np.fromfile(os.path.join(d, name), dtype="<f4")
            return a.reshape(shape) if shape else a

        params, buffers = raw("params.f32"), raw("buffers.f32")
        assert params.size == lay["n_params"] and buffers.size == lay["n_buffers"]
        x = raw("input.f32", (batch, channels, height, width)).astype(np.float64)

        for mode, name in ((0, "infer.f32"), (1, "train.f32")):
            net = Net(lay, params, buffers, mode)
            ref = net.forward(x)
            got = raw(name, (batch, height, width))
            scale = np.abs(ref).max()
            err = np.abs(got - ref).max()
            print(f"  {'training' if mode else 'inference'}: max |C - NumPy| = {err:.3g}, "
                  f"max |NumPy| = {scale:.3g}")
            assert scale > 0.01, scale
            assert err <= 1e-5 * scale, (err, scale)
            if mode:
                stats = raw("stats.f32")
                serr = (np.abs(stats - net.stats) / (1 + np.abs(net.stats))).max()
                print(f"  batch statistics: max relative difference {serr:.3g}")
                assert serr <= 1e-5, serr
                # Running statistics after train_step with lr 0.
                running = raw("running.f32").astype(np.float64)
                expect = 0.9 * buffers.astype(np.float64)
                units = [u for bl in lay["down"] + list(lay["dec"].values()) for u in bl]
                for u in units:
                    c = u["c"]
                    lv = int(np.log2(c // features))
                    m = batch * (height >> lv) * (width >> lv)
                    sm = slice(u["mean"], u["mean"] + c)
                    sv = slice(u["var"], u["var"] + c)
                    expect[sm] += 0.1 * net.stats[sm]
                    expect[sv] += 0.1 * net.stats[sv] * m / (m - 1)
                rerr = (np.abs(running - expect) / (1 + np.abs(expect))).max()
                print(f"  running statistics: max relative difference {rerr:.3g}")
                assert rerr <= 1e-6, rerr


def main():
    if not os.path.exists(UNET_TOOL):
        print(f"SKIP: {UNET_TOOL} not built")
        sys.exit(77)
    r = Results()
    r.check("small network, 3 levels, 56 x 40",
            lambda: check_network(5, 6, 3, 3, 40, 56, 1, 7))
    r.check("default network, 48 x 64, 2 threads",
            lambda: check_network(11, 32, 4, 2, 64, 48, 2, 8))
    r.check("1 level, 2 x 2 images",
            lambda: check_network(2, 3, 1, 2, 2, 2, 1, 9))
    r.finish()


if __name__ == "__main__":
    main()
