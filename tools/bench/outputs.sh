#!/bin/bash
# Times the output options (docs/performance.md, "Output files"): the automatic uint16 range
# at mount (tomofs info with and without dtype=uint16), and reading volumes/slices.nrrd and the
# slice files through a mount once their slices are in the RAM tier, float32 and uint16.
# Usage: tools/bench/outputs.sh [WORKDIR]   (tomofs from build/ unless $TOMOFS)
set -euo pipefail
cd "$(dirname "$0")/../.."
tomofs=${TOMOFS:-$PWD/build/tools/tomofs}
work=${1:-$(mktemp -d /tmp/tomofs-outputs-bench-XXXXXX)}
mkdir -p "$work/mnt"
scan=$work/scan mnt=$work/mnt
width=1024 rows=32 proj=900
[ -f "$scan/output.log" ] ||
  "$tomofs" phantom "$scan" --width $width --rows $rows --projections $proj --photons 20000 \
    >/dev/null
center=512.25 # given, so that info does not time the centre search

seconds() { /usr/bin/python3 -c 'import sys,time,subprocess
t=time.perf_counter(); subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,
stderr=subprocess.DEVNULL); print("%.2f" % (time.perf_counter()-t))' "$@"; }

for run in 1 2 3; do
  echo "run $run: info float32 $(seconds "$tomofs" info "$scan" -o center=$center) s," \
    "info uint16 (automatic range) $(seconds "$tomofs" info "$scan" -o center=$center,dtype=uint16) s"
done

rate() { # MB/s of reading a file or files once
  /usr/bin/python3 - "$@" <<'PY'
import sys, time
t = time.perf_counter(); n = 0
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
print("%.0f MB/s (%d MB)" % (n / (time.perf_counter() - t) / 1e6, n // 1000000))
PY
}

for dtype in float32 uint16; do
  opts=center=$center,cache=none,dtype=$dtype
  [ $dtype = uint16 ] && opts=$opts,range=-10:70
  "$tomofs" mount "$scan" "$mnt" -o "$opts" 2>/dev/null
  cat "$mnt"/slices/* >/dev/null # computes every slice into the RAM tier
  echo "$dtype: volumes/slices.nrrd from the RAM tier: $(rate "$mnt/volumes/slices.nrrd")"
  echo "$dtype: volumes/rings-removed.nrrd, computing: $(rate "$mnt/volumes/rings-removed.nrrd")"
  "$tomofs" umount "$mnt"
done
