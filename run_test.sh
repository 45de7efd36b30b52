#!/usr/bin/env bash
# Evaluate a checkpoint on the validation split and write test-set predictions (Cityscapes: the
# submission format). The checkpoint describes its network: no architecture flags are needed.
#
#   CKPT=runs/pspnet_r18_distill/best.pth bash run_test.sh [extra flags, e.g. --mode sliding --flip]
#   DATASET=voc DATA_DIR=data/VOCdevkit CKPT=... bash run_test.sh
set -euo pipefail
cd "$(dirname "$0")"

DATASET=${DATASET:-cityscapes}
DATA_DIR=${DATA_DIR:-data/cityscapes}
CKPT=${CKPT:-runs/pspnet_r18_distill/best.pth}
OUT=${OUT:-${CKPT%.pth}_test}
GPUS=${GPUS:-${NPROC:-1}}

if (( GPUS > 1 )); then
    LAUNCH=(torchrun --standalone --nproc_per_node="$GPUS")
else
    LAUNCH=(python)
fi

"${LAUNCH[@]}" -m skd.evaluate --dataset "$DATASET" --data-dir "$DATA_DIR" --ckpt "$CKPT" "$@"
"${LAUNCH[@]}" -m skd.predict --dataset "$DATASET" --data-dir "$DATA_DIR" --ckpt "$CKPT" --out "$OUT" "$@"
