#!/bin/bash
# Times reading cached 2048 x 2048 slices through a mount (docs/performance.md, "Slice cache"):
# a first mount computes and caches them; a fresh mount (empty RAM tier) then reads each once
# from the disk cache, and again from the page cache; with --cold (root) the OS caches are
# dropped before the fresh mount, so the cache file itself is read from disk.
# Usage: tools/bench/cache_read.sh [--cold] [WORKDIR]   (tomofs from build/ unless $TOMOFS)
set -euo pipefail
cd "$(dirname "$0")/../.."
cold=0
[ "${1:-}" = --cold ] && { cold=1; shift; }
tomofs=${TOMOFS:-$PWD/build/tools/tomofs}
work=${1:-$(mktemp -d /tmp/tomofs-cache-read-XXXXXX)}
mkdir -p "$work/mnt"
scan=$work/scan cache=$work/cache mnt=$work/mnt
rows=8
[ -f "$scan/output.log" ] ||
  "$tomofs" phantom "$scan" --width 2048 --rows $rows --projections 720 --photons 2000 >/dev/null
rm -rf "$cache"

time_reads() { # prints milliseconds per file for each slice, in order
  /usr/bin/python3 - "$mnt/slices" $rows <<'PY'
import os, sys, time
folder, rows = sys.argv[1], int(sys.argv[2])
out = []
for z in range(rows):
    t = time.perf_counter()
    with open(os.path.join(folder, f"slice_{z:05d}.tif"), "rb") as f:
        n = len(f.read())
    out.append((time.perf_counter() - t) * 1e3)
    assert n == 4096 + 2048 * 2048 * 4
print(" ".join(f"{ms:.1f}" for ms in out), "ms; median %.1f ms" % sorted(out)[len(out) // 2])
PY
}

"$tomofs" mount "$scan" "$mnt" -o "cache=$cache" 2>/dev/null
echo "computing $rows slices (first mount): $(time_reads)"
"$tomofs" umount "$mnt"
"$tomofs" cache stats --cache "$cache" | grep -E '^(entries|ratio|file)'
if [ $cold = 1 ]; then
  sync
  echo 3 >/proc/sys/vm/drop_caches
fi
"$tomofs" mount "$scan" "$mnt" -o "cache=$cache" 2>/dev/null
echo "fresh mount, from the disk cache$([ $cold = 1 ] && echo ' (cold)'): $(time_reads)"
echo "again, from the page cache: $(time_reads)"
grep -E '^(slices_computed|cache_hits|cache_misses)' "$mnt/.tomofs/status" | tr '\n' ' '
echo
"$tomofs" umount "$mnt"
