#!/usr/bin/env bash
# Evaluate a checkpoint on Cityscapes val and write test-set predictions (submission format).
#
#   CKPT=runs/pspnet_r18_distill/best.pth bash run_test.sh [extra flags, e.g. --mode sliding --flip]
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/cityscapes}
CKPT=${CKPT:-runs/pspnet_r18_distill/best.pth}
ARCH=${ARCH:-resnet18}
OUT=${OUT:-${CKPT%.pth}_test}
GPUS=${GPUS:-${NPROC:-1}}

if (( GPUS > 1 )); then
    LAUNCH=(torchrun --nproc_per_node="$GPUS")
else
    LAUNCH=(python)
fi

"${LAUNCH[@]}" -m skd.evaluate --data-dir "$DATA_DIR" --split val --ckpt "$CKPT" --arch "$ARCH" "$@"
"${LAUNCH[@]}" -m skd.predict --data-dir "$DATA_DIR" --split test --ckpt "$CKPT" --arch "$ARCH" --out "$OUT" "$@"
