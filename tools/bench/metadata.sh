#!/bin/bash
# Times metadata on a 20,000-slice scan through a mount (docs/performance.md, "Metadata"):
# `ls -l slices`, ImageJ's pattern (list the folder, then stat every name), `find -type f` and
# `du -s`, each on a fresh mount (cold: the kernel knows no name yet) and again on the same mount
# (warm), best of RUNS; then ImageJ's own import of the folder as a virtual stack, if ImageJ is
# installed. Checks that nothing was reconstructed: the status file's requests stay 0 (1 after
# ImageJ, which opens the first slice to learn the image size).
# Usage: tools/bench/metadata.sh [ROWS [RUNS]]   (tomofs from build/ unless $TOMOFS)
set -euo pipefail
cd "$(dirname "$0")/../.."
tomofs=${TOMOFS:-$PWD/build/tools/tomofs}
rows=${1:-20000}
runs=${2:-5}
work=$(mktemp -d /tmp/tomofs-metadata-XXXXXX)
trap 'mountpoint -q "$work/mnt" && "$tomofs" umount "$work/mnt"; rm -rf "$work"' EXIT
mkdir "$work/mnt"
# a narrow detector with few projections: 20,000 slices of 16 x 16 pixels, a 9 MB scan
"$tomofs" phantom "$work/scan" --width 16 --rows "$rows" --projections 4 --no-truth >/dev/null
mnt=$work/mnt slices=$work/mnt/slices

# prints the seconds one command takes
timed() {
  /usr/bin/python3 - "$@" <<'PY'
import subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(f"{time.perf_counter() - t:.3f}")
PY
}

# ImageJ's FolderOpener: File.list(), then File.isDirectory() on every name
list_then_stat='
import os, sys
d = sys.argv[1]
n = sum(1 for name in os.listdir(d) if not os.path.isdir(os.path.join(d, name)))
assert n == int(sys.argv[2]), n'

requests() { sed -n 's/^requests: //p' "$mnt/.tomofs/status"; }

declare -A cold warm
commands=("ls -l" "list then stat" "find -type f" "du -s")
run_command() {
  case $1 in
    "ls -l") timed ls -l "$slices" ;;
    "list then stat") timed /usr/bin/python3 -c "$list_then_stat" "$slices" "$rows" ;;
    "find -type f") timed find "$slices" -type f ;;
    "du -s") timed du -s "$slices" ;;
  esac
}
best() { printf '%s\n' "$@" | sort -g | head -1; }

for c in "${commands[@]}"; do
  c_times=() w_times=()
  for _ in $(seq "$runs"); do
    "$tomofs" mount "$work/scan" "$mnt" -o center=8.75,cache=none 2>/dev/null
    c_times+=("$(run_command "$c")")
    w_times+=("$(run_command "$c")")
    [ "$(requests)" = 0 ] || { echo "$c reconstructed something: $(requests) requests" >&2; exit 1; }
    "$tomofs" umount "$mnt"
  done
  cold[$c]=$(best "${c_times[@]}")
  warm[$c]=$(best "${w_times[@]}")
done

echo "$rows slices, best of $runs; nothing reconstructed (status requests: 0)"
printf '%-16s %8s %8s\n' command cold warm
for c in "${commands[@]}"; do
  printf '%-16s %7.3fs %7.3fs\n' "$c" "${cold[$c]}" "${warm[$c]}"
done

if command -v imagej >/dev/null && command -v xvfb-run >/dev/null; then
  "$tomofs" mount "$work/scan" "$mnt" -o center=8.75,cache=none 2>/dev/null
  macro=$work/import.ijm
  cat >"$macro" <<EOF
setBatchMode(true);
t0 = getTime();
run("Image Sequence...", "dir=[$slices/] sort use");
print("RESULT " + nSlices + " slices in " + (getTime() - t0) + " ms");
run("Quit");
EOF
  # (Debian's imagej wrapper exits 1 even when the macro succeeds)
  out=$( (HOME=$work xvfb-run -a imagej -b "$macro" 2>/dev/null || true) | sed -n 's/^RESULT //p')
  echo "ImageJ Import > Image Sequence, virtual stack: $out; requests $(requests) (the first slice)"
  "$tomofs" umount "$mnt"
fi
