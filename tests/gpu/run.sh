#!/bin/bash
# Builds tomofs with CUDA and runs the GPU tests and benchmarks. Needs a machine with an
# NVIDIA GPU, nvcc, and the build dependencies (pkg-config must find them).
#
#   tests/gpu/run.sh [parity|bench|mount|export|unet|denoise|all]...    (default: all)
#
# parity  CPU against CUDA (exact and fast) on phantoms and on the real scans in
#         ../shared/data (or $TOMOFS_DATA) when present, rings-removed/ with rings=sort and
#         with the stripe removal chain (rings=all, large, dead); ring removal against the
#         CPU value for value on every method (gpu_check rings-exact)
# bench   back-projection ms per slice at 2048 x 1800 and 4432 x 3600; ring removal ms per
#         sinogram (sort and the chain) at the same sizes
# mount   first slice through the mount of an uncached 4432-wide, 3600-projection phantom
#         (raw files in the page cache), then consecutive slices
# export  tomofs export of a 2048-wide, 2048-projection phantom against dd's write bandwidth
# unet    the denoising network's CUDA backend against PyTorch (float64, needs python3 with
#         torch) and against the CPU backend, out-of-memory handling; ms per 4448 x 4448
#         inference (cuDNN's heuristic and timed algorithms) and per training step on 2 and 4
#         patches of 2208 x 2208 (the default patch 2216 rounded down to a multiple of 16),
#         with a profile of each
# denoise Noise2Inverse end to end: a noisy 512-wide phantom, `tomofs train` on the GPU, PSNR
#         and SNR of denoised/ against rings-removed/ (tools/bench/denoise_quality.py), and
#         denoised/ served on the GPU against the CPU; bin=2 and centre-search/ exports on a
#         GPU host equal the CPU's
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build-gpu}
work=${WORK:-/tmp/tomofs-gpu}
data=${TOMOFS_DATA:-../shared/data}
mkdir -p "$work"
[ -f "$build/build.ninja" ] || meson setup "$build" --buildtype=release -Dcuda=enabled \
    -Dgpu_arch="${GPU_ARCH:-90}" >/dev/null
if [ "${*:-all}" = unet ]; then ninja -C "$build" tests/unet_check >/dev/null; else ninja -C "$build" >/dev/null; fi
tomofs=$PWD/$build/tools/tomofs
check=$PWD/$build/tests/gpu_check
nproc=$(nproc)
failed=0
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }

phantom() { # DIR WIDTH ROWS PROJECTIONS [options]
  local dir=$1; shift
  [ -f "$dir/output.log" ] || "$tomofs" phantom "$dir" --width "$1" --rows "$2" \
      --projections "$3" "${@:4}" --no-truth --threads "$nproc" >/dev/null
}

run_parity() {
  echo "== parity: CPU against CUDA"
  phantom "$work/p256" 256 12 360
  phantom "$work/p512n" 512 16 720 --photons 20000 --rings
  phantom "$work/p1000" 1000 8 900 --photons 5000
  for scan in "$work/p256" "$work/p512n" "$work/p1000"; do
    "$check" parity "$scan" 0 8 || failed=1
  done
  for rings in all large dead; do # the phantom with ring columns
    "$check" parity "$work/p512n" 0 8 "$rings" || failed=1
  done
  for scan in "$data/tooth_aps/tooth.h5" "$data/i13_24737_tiff" "$data/diad_k11_18014/k11-18014.nxs"; do
    if [ -e "$scan" ]; then
      if "$tomofs" info "$scan" >/dev/null 2>&1; then
        for rings in sort all large dead; do
          "$check" parity "$scan" 0 2 "$rings" || failed=1
        done
      else
        echo "skip $scan: this build cannot read it"
      fi
    else
      echo "skip $scan: not present"
    fi
  done
  echo "== ring removal: GPU against CPU, value for value"
  "$check" rings-exact || failed=1
}

run_bench() {
  echo "== back-projection benchmark"
  "$check" bench-bp 2048 1800 5
  "$check" bench-bp 4432 3600 3
  echo "== ring removal benchmark"
  "$check" bench-rings 2048 1800 21 5 sort,all,large,dead || failed=1
  "$check" bench-rings 4432 3600 21 5 sort,all,large,dead || failed=1
}

run_mount() {
  echo "== first slice through the mount: 4432 wide, 3600 projections, 256 rows"
  local scan=$work/big mnt=$work/mnt
  local t0=$(now) t1
  phantom "$scan" 4432 256 3600
  echo "phantom written in $(calc "$(now) - $t0") s"
  cat "$scan"/q* "$scan"/dark.img > /dev/null # the raw files in the page cache
  mkdir -p "$mnt"
  for precision in fast exact; do
    "$tomofs" mount "$scan" "$mnt" -o "precision=$precision,cache=none" 2>&1 | tail -1 || \
      "$tomofs" mount "$scan" "$mnt" -o "precision=$precision"
    grep backend "$mnt/.tomofs/status"
    t0=$(now)
    head -c 4096 "$mnt/slices/slice_00128.tif" > /dev/null
    t1=$(now)
    echo "$precision: first slice (128) read in $(calc "$t1 - $t0") s"
    grep -E "slices_computed|chunks|busy|read_seconds" "$mnt/.tomofs/status" | tr '\n' ' '; echo
    t0=$(now)
    for z in $(seq 129 192); do cat "$mnt/slices/slice_00$z.tif"; done > /dev/null
    t1=$(now)
    echo "$precision: 64 consecutive slices (129-192) in $(calc "$t1 - $t0") s," \
         "$(calc "64 / ($t1 - $t0)") slices/s"
    grep -E "slices_computed|chunks|busy|read_seconds" "$mnt/.tomofs/status" | tr '\n' ' '; echo
    "$tomofs" umount "$mnt"
  done
}

run_export() {
  echo "== export: 2048 wide, 2048 projections, 256 rows"
  local scan=$work/exp out=$work/exported
  phantom "$scan" 2048 256 2048
  cat "$scan"/q* > /dev/null
  rm -rf "$out"
  mkdir -p "$out"
  sync
  local t0=$(now)
  "$tomofs" export "$scan" "$out" -o cache=none 2>&1 | tail -1 || "$tomofs" export "$scan" "$out"
  sync
  local t1=$(now)
  local secs=$(calc "$t1 - $t0")
  local bytes=$(du -sb "$out" | cut -f1)
  echo "export: 256 slices in $secs s: $(calc "256 / $secs") slices/s," \
       "$(calc "$bytes / $secs / 1e6") MB/s (sync included)"
  rm -rf "$out"
  local dd_line
  dd_line=$(dd if=/dev/zero of="$work/dd.bin" bs=16M count=256 conv=fdatasync 2>&1 | tail -1)
  rm -f "$work/dd.bin"
  echo "dd write bandwidth of the same disk: $dd_line"
}

run_unet() {
  local unet=$PWD/$build/tests/unet_check
  echo "== denoising network: CUDA against PyTorch (float64)"
  rm -rf "$work/unet"
  "$unet" torch "$work/unet" || failed=1
  python3 tests/gpu/unet_torch.py "$work/unet" || failed=1
  echo "== denoising network: CUDA against the CPU backend"
  "$unet" cpu || failed=1
  echo "== denoising network: benchmarks"
  "$unet" bench-infer 4448 5 || failed=1
  TOMOFS_CUDNN_SEARCH=find "$unet" bench-infer 4448 5 || failed=1
  "$unet" bench-train 2208 2 5 || failed=1
  "$unet" bench-train 2208 4 3 || failed=1
  TOMOFS_UNET_PROFILE=1 "$unet" bench-infer 4448 3 || failed=1
  TOMOFS_UNET_PROFILE=1 "$unet" bench-train 2208 2 3 || failed=1
  echo "== denoising network: out of GPU memory"
  "$unet" nomem || failed=1
}

run_denoise() {
  echo "== denoising: Noise2Inverse on a noisy phantom, trained on the GPU"
  rm -rf "$work/n2i"
  python3 tools/bench/denoise_quality.py --tomofs "$tomofs" --work "$work/n2i" --width 512 \
      --rows 64 --projections 720 --photons 300 --epochs 30 --slices-per-epoch 200 --batch 8 \
      --patch 256 --device cuda:0 --eval-slices 16 --compare-cpu 3 --save "$work/n2i/images" \
      || failed=1
  echo "== bin=2 and centre-search/ on a GPU host against the CPU"
  local p=$work/n2i/scan
  for d in cpu cuda:0; do
    rm -rf "$work/bin-$d" "$work/cs-$d"
    "$tomofs" export "$p" "$work/bin-$d" --range 0:8 -o "bin=2,device=$d,cache=none" >/dev/null
    "$tomofs" export "$p" "$work/cs-$d" --variant centre-search \
        -o "center_search=32:255:258:0.5,device=$d,cache=none" >/dev/null
  done
  if diff -r -x scan.json "$work/bin-cpu" "$work/bin-cuda:0" >/dev/null &&
     diff -r -x scan.json "$work/cs-cpu" "$work/cs-cuda:0" >/dev/null; then
    echo "ok   bin=2 and centre-search/ equal on cpu and cuda:0"
  else
    echo "FAIL bin=2 or centre-search/ differ between cpu and cuda:0"; failed=1
  fi
}

steps=${*:-all}
for step in $steps; do
  case $step in
  parity) run_parity ;;
  bench) run_bench ;;
  mount) run_mount ;;
  export) run_export ;;
  unet) run_unet ;;
  denoise) run_denoise ;;
  all) run_parity; run_bench; run_mount; run_export; run_unet; run_denoise ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
exit $failed
