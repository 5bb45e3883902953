"""Makes the before/after figures of docs/rings.md (docs/images/rings_*.png).

    /usr/bin/python3 tests/tools/rings_figures.py BUILD_DIR

BUILD_DIR holds tests/rings_tool and tools/tomofs (a meson build of this repository). Real
data come from ../shared/data (the sinograms are made as tests/integration/test_rings.py makes
them); every reconstruction is tomofs's own filter and back-projector, through rings_tool.
"""

import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import test_rings as T  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "docs", "images")


def fbp(tool, tmp, sino, center, step, *options):
    src, dst = os.path.join(tmp, "s.f32"), os.path.join(tmp, "i.f32")
    np.ascontiguousarray(sino, np.float32).tofile(src)
    m, n = sino.shape
    subprocess.run([tool, "fbp", src, dst, *map(str, (m, n, center)), "--step", str(step), *options],
                   check=True, capture_output=True)
    return np.fromfile(dst, np.float32).reshape(n, n)


def save(fig, name):
    """8-bit grayscale PNG: the figures have no colour, and this keeps them small."""
    from PIL import Image
    path = os.path.join(OUT, name)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    Image.open(path).convert("L").save(path, optimize=True)


def panel(ax, img, title, lo, hi):
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def tooth(tool, tmp):
    s = T.load_tooth()[0]
    step = 180.0 / s.shape[0]
    imgs = [fbp(tool, tmp, s, 296, step, *o) for o in ([], ["rings=sort"], ["rings=all"])]
    crop = (slice(130, 510), slice(110, 490))
    lo, hi = np.percentile(imgs[0][crop], [0.5, 99.7])
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panel(axes[0], imgs[0][crop], "no ring removal", lo, hi)
    panel(axes[1], imgs[1][crop], "rings=sort (size 7)", lo, hi)
    panel(axes[2], imgs[2][crop], "rings=all", lo, hi)
    d = (imgs[0] - imgs[1])[crop]
    w = np.percentile(np.abs(d), 99.5)
    panel(axes[3], d, "removed by sort (no removal - sort)", -w, w)
    fig.suptitle("APS tooth (tooth.h5, row 0, 181 views x 640 columns, centre 296)")
    fig.tight_layout()
    save(fig, "rings_tooth.png")


def i13(tool, tmp):
    s = T.load_i13()[106]
    out = T.c_remove(tmp, [s], "rings=sort")[0]
    imgs = [fbp(tool, tmp, x, 86, 2.0) for x in (s, out)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    lo, hi = np.percentile(s, [0.5, 99.5])
    panel(axes[0], s, "sinogram", lo, hi)
    panel(axes[1], out, "sinogram, rings=sort (size 5)", lo, hi)
    lo, hi = np.percentile(imgs[0], [0.5, 99.7])
    panel(axes[2], imgs[0], "no ring removal", lo, hi)
    panel(axes[3], imgs[1], "rings=sort", lo, hi)
    for a in axes[:2]:
        a.set_aspect("auto")
    fig.suptitle("Diamond I13 scan 24737, row 106 (91 views x 160 columns, centre 86)")
    fig.tight_layout()
    save(fig, "rings_i13.png")


def phantom(tool, tomofs, tmp):
    scan = os.path.join(tmp, "phantom")
    subprocess.run([tomofs, "phantom", scan, "--width", "512", "--rows", "4", "--projections",
                    "720", "--rings", "--photons", "50000", "--seed", "5"],
                   check=True, capture_output=True)
    z = 1
    truth = T.read_tiff(os.path.join(scan, "truth", f"slice_{z:05d}.tif"))
    recs = [T.volume(scan, os.path.join(tmp, "v" + m), 4, f"rings={m}")[0][z]
            for m in ("none", "sort")]
    lo, hi = -0.1 * truth.max(), 1.1 * truth.max()
    w = 0.08 * truth.max()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panel(axes[0], recs[0], "no ring removal", lo, hi)
    panel(axes[1], recs[1], "rings=sort (size 5)", lo, hi)
    panel(axes[2], recs[0] - truth, "error, no ring removal", -w, w)
    panel(axes[3], recs[1] - truth, "error, rings=sort", -w, w)
    fig.suptitle("tomofs phantom --rings --photons 50000 (512 columns, 720 views), slice 1; "
                 "error = reconstruction - exact truth")
    fig.tight_layout()
    save(fig, "rings_phantom.png")


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    tool = os.path.join(build, "tests", "rings_tool")
    tomofs = os.path.join(build, "tools", "tomofs")
    T.RINGS_TOOL = tool
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="tomofs-figures-")
    tooth(tool, tmp)
    i13(tool, tmp)
    phantom(tool, tomofs, tmp)
    print("wrote", ", ".join(sorted(f for f in os.listdir(OUT) if f.startswith("rings_"))))


if __name__ == "__main__":
    main()
