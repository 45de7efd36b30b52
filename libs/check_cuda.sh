#!/usr/bin/env bash
# Compile-check every libs/src/*.cu with nvcc (no GPU, no CUDA build of torch needed): the .cu
# files include only CUDA headers and libs/src, by design (see libs/src/skd_cuda.h).
# Exits non-zero if any file fails; skips (exit 0) with a message when nvcc is absent.
# NVCC=/path/to/nvcc and CUDA_ARCH=sm_90 override the compiler and the target.
set -euo pipefail

src_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/src" && pwd)"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" ]]; then
  echo "check_cuda.sh: nvcc not found; skipping the CUDA compile check"
  exit 0
fi

out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT
# The same half/bfloat16 restrictions torch's extension builder passes to nvcc.
flags=(-std=c++17 -O3 -I"$src_dir"
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)
if [[ -n "${CUDA_ARCH:-}" ]]; then flags+=(-arch="$CUDA_ARCH"); fi

echo "check_cuda.sh: $("$nvcc" --version | tail -n 1)"
status=0
shopt -s nullglob
files=("$src_dir"/*.cu)
if (( ${#files[@]} == 0 )); then
  echo "check_cuda.sh: no .cu files in $src_dir" >&2
  exit 1
fi
for cu in "${files[@]}"; do
  name="$(basename "$cu")"
  if "$nvcc" "${flags[@]}" -c "$cu" -o "$out_dir/$name.o"; then
    echo "ok $name"
  else
    echo "FAILED $name" >&2
    status=1
  fi
done
exit "$status"
