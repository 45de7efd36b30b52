#!/usr/bin/env bash
# The checks and benchmarks that need a CUDA GPU, in stages that each end well inside a
# 10-minute command. Run from the repository root on the GPU machine:
#
#   bash scripts/gpu_checks.sh tests          # build libs/ with CUDA, pytest -m cuda, then the whole suite
#   bash scripts/gpu_checks.sh losses memory  # pair-wise loss and InPlace-ABN memory benchmarks
#   bash scripts/gpu_checks.sh step           # distillation step and eval, plain vs fast, 512x512 batch 8
#   bash scripts/gpu_checks.sh parity         # mIoU parity of plain and fast; resumes if cut off, so rerun it
#
# Everything lands in $OUT (default /tmp/skd-gpu): one log per stage, the benchmarks' JSON, and
# benchmarks.md, a copy of docs/benchmarks.md with the stages' sections replaced; copy it back
# over docs/benchmarks.md. The extension is built in build/skd_ext (SKD_EXT_DIR), so later
# stages on the same machine reuse it. A stage that fails does not stop the next; the exit
# status is that of the last failure.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=${OUT:-/tmp/skd-gpu}
mkdir -p "$OUT"
[ -f "$OUT/benchmarks.md" ] || cp docs/benchmarks.md "$OUT/benchmarks.md"
export SKD_BENCH_MD="$OUT/benchmarks.md" OUT PYTHONUNBUFFERED=1
export SKD_EXT_DIR=${SKD_EXT_DIR:-$PWD/build/skd_ext}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_checks.sh: torch sees no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

status=0
stage() {  # stage NAME COMMAND...: run it with its output also in $OUT/NAME.log
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=$rc
}

for what in "$@"; do
    case $what in
        tests)
            stage build "$PY" libs/build.py --quiet
            stage pytest-cuda "$PY" -m pytest -q -m cuda
            stage pytest "$PY" -m pytest -q -x -m "not cuda"
            ;;
        losses) stage losses "$PY" scripts/benchmark_losses.py --device cuda ;;
        memory) stage memory "$PY" scripts/benchmark_memory.py --device cuda ;;
        step) stage step "$PY" scripts/benchmark.py --device cuda --crop 512 --batch 8 ;;
        parity) stage parity "$PY" scripts/parity.py --device cuda --seeds 0 1 2 ;;
        *) echo "gpu_checks.sh: unknown stage '$what' (tests, losses, memory, step, parity)" >&2; exit 2 ;;
    esac
done
exit $status
