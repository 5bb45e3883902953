#!/bin/bash
# CPU reconstruction time per slice, tomofs against scikit-image's iradon on the same sinogram.
# Usage: tools/bench/cpu_vs_iradon.sh [WORKDIR]
# For each size: generates a noisy phantom, runs `tomofs bench` (best of 3, all cores), saves
# the preprocessed sinogram of one row, and times iradon (filter 'hann', the same window as
# chesler) on it in the same run, then prints both times, their ratio and the correlation of
# the two reconstructions inside the reconstruction circle.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/build >/dev/null
tomofs=$PWD/build/tools/tomofs
work=${1:-$(mktemp -d /tmp/tomofs-bench-XXXXXX)}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
for spec in "512 720" "2048 1800"; do
  set -- $spec
  width=$1 proj=$2 scan=$work/phantom-$1
  [ -f "$scan/output.log" ] || "$tomofs" phantom "$scan" --width "$width" --rows 8 \
      --projections "$proj" --photons 20000 --no-truth >/dev/null
  echo "== width $width, $proj projections: tomofs bench $scan --rows 8"
  "$tomofs" bench "$scan" --rows 8 --save-sinogram "$work/sino-$width.npy" \
      --save-slice "$work/tomofs-$width.npy" | tee "$work/tomofs-$width.txt"
  center=$("$tomofs" info "$scan" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["center"])')
  /usr/bin/python3 - "$scan/output.log" "$work/sino-$width.npy" "$work/tomofs-$width.npy" \
      "$center" "$work/tomofs-$width.txt" <<'PY'
import re
import sys
import time

import numpy as np
from scipy import ndimage
from skimage.transform import iradon

log, sino_path, ours_path, center, ours_txt = sys.argv[1:6]
center = float(center)
angles = sorted(float(l.split()[2]) for l in open(log) if l.split() and l.split()[3] == "1")
sino = np.load(sino_path).astype(np.float64)          # projections x columns
n = sino.shape[1]
# iradon puts the axis at column n // 2: move ours there
shifted = ndimage.shift(sino, (0, n // 2 - center), order=1, mode="nearest")
t0 = time.perf_counter()
rec = iradon(shifted.T, theta=np.array(angles) - angles[0], filter_name="hann",
             interpolation="linear", circle=True)
t = time.perf_counter() - t0
ours = np.load(ours_path)
txt = open(ours_txt).read()
stage = lambda name: float(re.search(rf"^{name}\s+([0-9.]+)", txt, re.M).group(1))
ms_ours = stage("filter") + stage("backproject")
yy, xx = np.mgrid[:n, :n]
r = min(center, n - 1 - center) * 0.95
mask = (xx + 0.5 - n / 2) ** 2 + (yy + 0.5 - n / 2) ** 2 <= r * r
best = max(np.corrcoef(np.rot90(f, k)[mask], ours[mask])[0, 1]
           for f in (rec, rec[:, ::-1]) for k in range(4))
print(f"iradon (scikit-image, one thread): {1e3 * t:.1f} ms/slice")
print(f"tomofs filter + back-projection: {ms_ours:.2f} ms/slice -> {1e3 * t / ms_ours:.1f}x iradon's speed")
print(f"correlation of the two reconstructions inside the circle: {best:.4f}")
PY
done
