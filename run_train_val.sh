#!/usr/bin/env bash
# Train and validate a PSPNet student, in the spirit of the original SKD run_train_val.sh.
#
#   bash run_train_val.sh --demo                 # synthetic data, teacher + ablation table, CPU, < 10 min
#   bash run_train_val.sh --ablation [flags]     # baseline / +pi / +pi+pa / +pi+pa+ho on DATA_DIR
#   bash run_train_val.sh [skd-train flags]      # one distillation run (flags appended last win)
#   GPUS=4 bash run_train_val.sh ...             # torchrun DDP on 4 GPUs (--batch-size is global)
#
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 GPUS=8 bash run_train_val.sh ...
# on every node (NODE_RANK 0, 1, ...).
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/cityscapes}
SNAPSHOT_DIR=${SNAPSHOT_DIR:-runs/pspnet_r18_distill}
TEACHER_CKPT=${TEACHER_CKPT:-ckpt/cs_teacher_psp_r101.pth}   # the released PSPNet-R101 teacher
RESTORE_FROM=${RESTORE_FROM:-ckpt/resnet18-imagenet.pth}     # ImageNet deep-stem ResNet-18
BATCH_SIZE=${BATCH_SIZE:-8}
NUM_STEPS=${NUM_STEPS:-40000}
INPUT_SIZE=${INPUT_SIZE:-512,512}
GPUS=${GPUS:-${NPROC:-1}}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

if [[ "${1:-}" == "--demo" ]]; then
    shift
    exec python scripts/ablation.py --demo "$@"
fi

if (( GPUS > 1 || NNODES > 1 )); then
    LAUNCH=(torchrun --nproc_per_node="$GPUS" --nnodes="$NNODES" --node_rank="$NODE_RANK"
            --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m skd.train)
else
    LAUNCH=(python -m skd.train)
fi

COMMON=(--data-dir "$DATA_DIR" --batch-size "$BATCH_SIZE" --num-steps "$NUM_STEPS" --input-size "$INPUT_SIZE")
[[ -f "$RESTORE_FROM" ]] && COMMON+=(--restore-from "$RESTORE_FROM")

if [[ "${1:-}" == "--ablation" ]]; then
    shift
    exec python scripts/ablation.py --data-dir "$DATA_DIR" --teacher-ckpt "$TEACHER_CKPT" \
        --snapshot-root "$SNAPSHOT_DIR" --launch "${LAUNCH[*]}" "$@" -- "${COMMON[@]}"
fi

"${LAUNCH[@]}" "${COMMON[@]}" \
    --arch resnet18 --teacher-arch resnet101 --teacher-ckpt "$TEACHER_CKPT" \
    --pi True --pa True --ho True --lambda-pi 10 --lambda-pa 0.5 --pool-scale 0.5 \
    --lambda-d 0.1 --lambda-gp 10 --adv-loss-type wgan-gp --lr-g 0.01 --lr-d 4e-4 \
    --random-mirror True --random-scale True --eval-every 4000 \
    --snapshot-dir "$SNAPSHOT_DIR" "$@"
