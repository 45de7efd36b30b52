#!/usr/bin/env bash
# Train and validate a PSPNet student, in the spirit of the original SKD run_train_val.sh.
#
#   bash run_train_val.sh --demo                 # synthetic data, teacher + ablation table, CPU, about 3 min
#   bash run_train_val.sh --ablation [flags]     # baseline / +pi / +pi+pa / +pi+pa+ho on DATA_DIR
#   bash run_train_val.sh --compare [flags]      # the CWD paper's Table 2: every method, logits and features
#   bash run_train_val.sh [skd-train flags]      # one distillation run (flags appended last win)
#   GPUS=4 bash run_train_val.sh ...             # torchrun DDP on 4 GPUs (--batch-size is global)
#
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 GPUS=8 bash run_train_val.sh ...
# on every node (NODE_RANK 0, 1, ...).
#
# Like the original: validation after steps 39326, 39697 and 39999 (--eval-at; best.pth is the
# best of them, so the student is SELECTED ON VAL, as the original's released one was), and with
# several processes synchronised batch norm over the whole batch of 8 (the original trained on
# one GPU), unless you pass --norm yourself. RESTORE_FROM must exist, or be "none" to train the
# student from scratch on purpose.
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/cityscapes}
SNAPSHOT_DIR=${SNAPSHOT_DIR:-runs/pspnet_r18_distill}
TEACHER_CKPT=${TEACHER_CKPT:-ckpt/cs_teacher_psp_r101.pth}   # the released PSPNet-R101 teacher
RESTORE_FROM=${RESTORE_FROM:-ckpt/resnet18-imagenet.pth}     # ImageNet deep-stem ResNet-18
BATCH_SIZE=${BATCH_SIZE:-8}
NORM=${NORM:-bn}
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
if [[ "$RESTORE_FROM" == "none" ]]; then
    echo "run_train_val.sh: RESTORE_FROM=none: the student starts from random weights" >&2
elif [[ -f "$RESTORE_FROM" ]]; then
    COMMON+=(--restore-from "$RESTORE_FROM")
else
    echo "run_train_val.sh: error: RESTORE_FROM=$RESTORE_FROM: no such file; give the ImageNet backbone" \
         "(e.g. RESTORE_FROM=ckpt/resnet18-imagenet.pth), or RESTORE_FROM=none to train from scratch" >&2
    exit 2
fi
# Several processes: synchronised norms (NORM=bn -> syncbn, NORM=inplace_abn -> inplace_abn_sync),
# so each normalises over the whole batch as the original's single GPU did. A --norm flag wins.
if [[ " $* " == *" --norm "* || " $* " == *" --norm="* ]]; then
    (( GPUS * NNODES > 1 )) && echo "run_train_val.sh: your --norm is used as given over $((GPUS * NNODES))" \
        "processes (bn and inplace_abn normalise per process; syncbn / inplace_abn_sync over the whole batch)" >&2
else
    if (( GPUS * NNODES > 1 )); then
        case "$NORM" in bn) NORM=syncbn ;; inplace_abn) NORM=inplace_abn_sync ;; esac
        echo "run_train_val.sh: $((GPUS * NNODES)) processes: --norm $NORM (batch statistics over the whole" \
             "batch, as the original's single GPU); pass --norm to choose" >&2
    fi
    COMMON+=(--norm "$NORM")
fi
# The original's validation steps: every int(2975 / batch) steps in the last 1000, and the step
# before the last (train_and_eval.py lines 18 and 27): 39326 39697 39999 for 40000 steps.
EVAL_AT=$(python -c "import sys; n, b = int(sys.argv[1]), int(sys.argv[2]); every = 2975 // b; \
print(' '.join(str(s) for s in sorted({s for s in range(1, n + 1) if s % every == 0 and s > n - 1000} | {max(1, n - 1)})))" \
    "$NUM_STEPS" "$BATCH_SIZE")

if [[ "${1:-}" == "--ablation" ]]; then
    shift
    exec python scripts/ablation.py --data-dir "$DATA_DIR" --teacher-ckpt "$TEACHER_CKPT" \
        --snapshot-root "$SNAPSHOT_DIR" --launch "${LAUNCH[*]}" "$@" -- "${COMMON[@]}"
fi

if [[ "${1:-}" == "--compare" ]]; then
    shift
    exec python scripts/compare.py --data-dir "$DATA_DIR" --teacher-ckpt "$TEACHER_CKPT" \
        --snapshot-root "$SNAPSHOT_DIR" --launch "${LAUNCH[*]}" "$@" -- "${COMMON[@]}"
fi

"${LAUNCH[@]}" "${COMMON[@]}" \
    --arch resnet18 --teacher-arch resnet101 --teacher-ckpt "$TEACHER_CKPT" \
    --pi True --pa True --ho True --lambda-pi 10 --lambda-pa 0.5 --pool-scale 0.5 \
    --lambda-d 0.1 --lambda-gp 10 --adv-loss-type wgan-gp --lr-g 0.01 --lr-d 4e-4 \
    --random-mirror True --random-scale True --eval-at $EVAL_AT \
    --snapshot-dir "$SNAPSHOT_DIR" "$@"
