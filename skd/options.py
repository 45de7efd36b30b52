"""Command-line flags of skd-train, skd-eval and skd-test, defined in this one place.

Flag names follow the original SKD scripts and the paper's symbols (`--lambda-pi`, `--pool-scale`,
`--lambda-d`); booleans take the original's `True/False` values as well as a bare flag. Every flag
is range-checked in `check_train_args` before anything is built, so a typo fails in a second,
not after an hour of training.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from skd.errors import SkdError


def str2bool(value: str | bool) -> bool:
    """`True/False`, `yes/no`, `1/0` (any case) -> bool, as the original's argparse flags."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "t", "yes", "y", "1", "on"):
        return True
    if v in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def size_pair(value: str) -> tuple[int, int]:
    """`512` or `512,1024` (H,W) -> (H, W)."""
    try:
        parts = [int(p) for p in value.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W or one integer, got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W or one integer, got {value!r}")
    return parts[0], parts[1]


def _flag(p: argparse.ArgumentParser, name: str, default: bool | None, help: str) -> None:
    p.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)


def add_model_args(p: argparse.ArgumentParser, default_arch: str = "resnet18") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=default_arch,
                   help="PSPNet backbone: resnet18 | resnet34 | resnet50 | resnet101 (default %(default)s)")
    g.add_argument("--width-mult", type=float, default=1.0,
                   help="channel width multiplier of the backbone, e.g. 0.5 for the paper's ResNet18 (0.5)")
    g.add_argument("--stem", choices=["deep", "standard"], default="deep",
                   help="deep (3 convs, the original) or standard (7x7, torchvision's) stem")
    g.add_argument("--norm", choices=["bn", "syncbn", "inplace_abn", "inplace_abn_sync"], default="bn",
                   help="norm layer; syncbn / inplace_abn_sync reduce statistics over ranks")
    g.add_argument("--num-classes", type=int, default=19, help="number of classes (Cityscapes: 19)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    g.add_argument("--data-list", type=Path, default=None,
                   help="list file (image<TAB>label, relative to --data-dir); default: scan the split")
    g.add_argument("--num-workers", type=int, default=2, help="data loading processes")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (default %(default)s)")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="mixed precision with torch.amp (losses stay float32); default off")
    _flag(g, "--channels-last", False, "use channels-last memory format")
    _flag(g, "--compile", False, "torch.compile the network forwards")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--mode", choices=["whole", "sliding"], default="whole",
                   help="whole image (the original) or sliding window of --input-size with 1/3 overlap")
    g.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="test scales; softmax maps are averaged over scales (default 1.0)")
    _flag(g, "--flip", False, "also predict the mirrored image and average")
    g.add_argument("--input-size", type=size_pair, default=(512, 512),
                   help="sliding-window tile H,W (default 512,512)")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skd-train",
        description="Train a PSPNet, supervised or distilled from a teacher (--pi/--pa/--ho, CWD, DIST, KD).")
    add_data_args(p)
    p.add_argument("--val-list", type=Path, default=None, help="list file of the validation images")
    p.add_argument("--val-split", default="val", help="split scanned for validation (default val)")
    add_model_args(p)
    p.add_argument("--restore-from", type=Path, default=None,
                   help="student initialisation: ImageNet backbone file (resnet18-imagenet.pth layout) "
                        "or full PSPNet weights (official or skd checkpoint)")

    g = p.add_argument_group("optimisation (the paper's recipe by default)")
    g.add_argument("--input-size", type=size_pair, default=(512, 512), help="training crop H,W (default 512,512)")
    g.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch, split over ranks (default 8)")
    g.add_argument("--num-steps", type=int, default=40000, help="training steps (default 40000)")
    g.add_argument("--lr-g", type=float, default=0.01, help="student (generator) base lr (default 0.01)")
    g.add_argument("--lr-d", type=float, default=4e-4, help="discriminator base lr (default 4e-4)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    g.add_argument("--power", type=float, default=0.9, help="poly lr power (default 0.9)")
    _flag(g, "--random-mirror", True, "random horizontal mirror (default True)")
    _flag(g, "--random-scale", True, "random scale 0.7..2.1 (default True)")
    g.add_argument("--dropout", type=float, default=0.1,
                   help="Dropout2d rate of the PSP bottleneck and DSN heads (default 0.1, the original)")
    g.add_argument("--aux-weight", type=float, default=0.4, help="weight of the DSN cross-entropy (default 0.4)")
    _flag(g, "--ohem", False, "online hard example mining in the cross-entropy")
    g.add_argument("--ohem-thresh", type=float, default=0.7, help="OHEM probability threshold")
    g.add_argument("--ohem-keep", type=int, default=100000, help="OHEM minimum kept pixels")

    g = p.add_argument_group("teacher")
    g.add_argument("--teacher-ckpt", type=Path, default=None,
                   help="teacher weights (official SKD checkpoint or skd checkpoint); enables distillation")
    g.add_argument("--teacher-arch", default="resnet101", help="teacher backbone (default resnet101)")
    g.add_argument("--teacher-width-mult", type=float, default=1.0, help="teacher width multiplier")
    g.add_argument("--teacher-stem", choices=["deep", "standard"], default="deep", help="teacher stem")

    g = p.add_argument_group("structured distillation (defaults: on when --teacher-ckpt is given)")
    _flag(g, "--pi", None, "pixel-wise distillation")
    g.add_argument("--lambda-pi", type=float, default=10.0, help="lambda_pi, pixel-wise weight (default 10)")
    g.add_argument("--pi-temperature", type=float, default=1.0, help="pixel-wise temperature (1 = the paper)")
    _flag(g, "--pa", None, "pair-wise distillation")
    g.add_argument("--lambda-pa", type=float, default=0.5, help="lambda_pa, pair-wise weight (default 0.5)")
    g.add_argument("--pool-scale", type=float, default=0.5,
                   help="pair-wise node = max-pool of (int(H*s), int(W*s)) feature pixels, the original (default 0.5)")
    g.add_argument("--pa-node-size", type=int, default=None,
                   help="pair-wise node of BETA x BETA feature pixels, the paper's granularity (overrides --pool-scale)")
    g.add_argument("--pa-pool", choices=["max", "avg"], default="max", help="pooling of --pa-node-size nodes")
    _flag(g, "--ho", None, "holistic (adversarial) distillation")
    g.add_argument("--lambda-d", type=float, default=0.1, help="lambda_d, holistic weight (default 0.1)")
    g.add_argument("--lambda-gp", type=float, default=10.0, help="gradient penalty weight (default 10)")
    g.add_argument("--adv-loss-type", choices=["wgan-gp", "hinge"], default="wgan-gp",
                   help="discriminator objective (default wgan-gp)")
    g.add_argument("--d-input-size", type=int, default=0,
                   help="resize the logits to N x N (bilinear) before the discriminator; 0 = as they are, "
                        "the original (65x65 for a 512 crop). The discriminator needs at least 64x64")

    g = p.add_argument_group("related distillation losses")
    _flag(g, "--cwd", False, "channel-wise distillation (Shu et al. 2021)")
    g.add_argument("--lambda-cwd", type=float, default=3.0, help="CWD weight (default 3)")
    g.add_argument("--cwd-tau", type=float, default=4.0, help="CWD temperature tau (default 4)")
    g.add_argument("--cwd-on", choices=["logits", "feat"], default="logits",
                   help="CWD on the logits or on the PSP features (1x1 connector when channels differ)")
    _flag(g, "--dist", False, "DIST (Huang et al. 2022)")
    g.add_argument("--lambda-dist", type=float, default=1.0, help="DIST weight (default 1)")
    g.add_argument("--dist-beta", type=float, default=1.0, help="DIST inter-class weight beta (default 1)")
    g.add_argument("--dist-gamma", type=float, default=1.0, help="DIST intra-class weight gamma (default 1)")
    g.add_argument("--dist-tau", type=float, default=1.0, help="DIST temperature (default 1)")
    _flag(g, "--kd", False, "per-pixel Hinton KD")
    g.add_argument("--lambda-kd", type=float, default=1.0, help="KD weight (default 1)")
    g.add_argument("--kd-temperature", type=float, default=4.0, help="KD temperature (default 4)")

    g = p.add_argument_group("run")
    g.add_argument("--snapshot-dir", type=Path, default=Path("runs/skd"), help="checkpoints and logs")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (newest intact one)")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (default 1000)")
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints kept (default 3); best.pth kept apart")
    g.add_argument("--eval-every", type=int, default=0,
                   help="validate every N steps (and at the end); 0 = only at the end")
    g.add_argument("--max-val-images", type=int, default=0, help="validate on the first N images only (0 = all)")
    g.add_argument("--log-every", type=int, default=10, help="log every N steps (default 10)")
    _flag(g, "--deterministic", False, "deterministic algorithms (bit-exact resume on CPU)")
    g.add_argument("--skip-nonfinite", type=int, default=0,
                   help="skip up to N steps whose loss is NaN/Inf (default 0: stop at the first)")
    _flag(g, "--progress", True, "tqdm progress bar (default True)")
    add_runtime_args(p)
    return p


def check_train_args(args: argparse.Namespace, world_size: int = 1) -> None:
    """Range checks of every training flag, before anything is built. Raises SkdError."""
    def bad(flag: str, why: str) -> None:
        raise SkdError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: {why}")

    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            bad("--" + name.replace("_", "-"), "must be a finite number")
    for flag in ("--lambda-pi", "--lambda-pa", "--lambda-d", "--lambda-gp", "--lambda-cwd",
                 "--lambda-dist", "--lambda-kd", "--aux-weight", "--weight-decay", "--momentum",
                 "--dist-beta", "--dist-gamma"):
        if getattr(args, flag[2:].replace("-", "_")) < 0:
            bad(flag, "must not be negative")
    for flag in ("--pi-temperature", "--cwd-tau", "--dist-tau", "--kd-temperature",
                 "--lr-g", "--lr-d", "--width-mult", "--teacher-width-mult"):
        if not getattr(args, flag[2:].replace("-", "_")) > 0:
            bad(flag, "must be positive")
    if not 0 <= args.dropout < 1:
        bad("--dropout", "must be in [0, 1)")
    if not 0 < args.pool_scale <= 1:
        bad("--pool-scale", "must be in (0, 1]")
    if args.pa_node_size is not None and args.pa_node_size < 1:
        bad("--pa-node-size", "must be at least 1")
    if not all(16 <= s <= 4096 for s in args.input_size):
        bad("--input-size", "each side must be between 16 and 4096 pixels")
    if args.ho and args.d_input_size == 0 and min(logit_size(args.input_size)) < 64:
        h, w = logit_size(args.input_size)
        raise SkdError(f"--ho: the discriminator needs logits of at least 64x64, and --input-size "
                       f"{args.input_size[0]},{args.input_size[1]} gives {h}x{w}; use a crop of 505 or "
                       f"more, or --d-input-size 65")
    if args.d_input_size and args.d_input_size < 64:
        bad("--d-input-size", "the discriminator needs at least 64")
    if args.num_steps < 1:
        bad("--num-steps", "must be at least 1")
    if args.batch_size < world_size or args.batch_size % world_size:
        raise SkdError(f"--batch-size {args.batch_size}: the global batch must be a multiple of the "
                       f"number of processes ({world_size})")
    if args.num_classes < 2:
        bad("--num-classes", "must be at least 2")
    for flag in ("--save-every", "--keep-last", "--log-every"):
        if getattr(args, flag[2:].replace("-", "_")) < 1:
            bad(flag, "must be at least 1")
    if args.eval_every < 0 or args.max_val_images < 0 or args.skip_nonfinite < 0 or args.num_workers < 0:
        raise SkdError("--eval-every, --max-val-images, --skip-nonfinite and --num-workers must not be negative")
    if args.amp == "fp16" and args.device == "cpu":
        raise SkdError("--amp fp16: float16 autocast needs a GPU; use --amp bf16 or off on the CPU")

    distill_flags = [f for f in ("pi", "pa", "ho") if getattr(args, f)]
    extra = [f for f in ("cwd", "dist", "kd") if getattr(args, f)]
    if args.teacher_ckpt is None and (distill_flags or extra):
        raise SkdError(f"--{(distill_flags + extra)[0]} needs a teacher: give --teacher-ckpt PATH")
    if args.teacher_ckpt is not None and not args.teacher_ckpt.is_file():
        raise SkdError(f"--teacher-ckpt {args.teacher_ckpt}: no such file")
    if args.restore_from is not None and not args.restore_from.is_file():
        raise SkdError(f"--restore-from {args.restore_from}: no such file")
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        raise SkdError(f"--resume {args.resume}: no such file (or use --resume auto)")
    check_writable_dir(args.snapshot_dir, "--snapshot-dir")


def logit_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """Size of the PSPNet logits for an input size: three ceil-halvings (stride-2 conv1, the
    ceil-mode max-pool, layer2), e.g. 512 -> 65, 97 -> 13, 129 -> 17."""
    def down(n: int) -> int:
        n = (n - 1) // 2 + 1          # conv1, 3x3 stride 2 padding 1
        n = -(-(n - 1) // 2) + 1      # max-pool 3x3 stride 2 padding 1, ceil mode
        return (n - 1) // 2 + 1       # layer2, stride 2
    return down(input_size[0]), down(input_size[1])


def resolve_distill_defaults(args: argparse.Namespace) -> None:
    """--pi/--pa/--ho default to on with a teacher (the paper's setting) and off without."""
    for f in ("pi", "pa", "ho"):
        if getattr(args, f) is None:
            setattr(args, f, args.teacher_ckpt is not None)


def check_writable_dir(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SkdError(f"{flag} {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SkdError(f"{flag} {path}: not writable")


def args_to_dict(args: argparse.Namespace) -> dict:
    """Plain-typed copy of the flags (paths as strings) for checkpoints and logs."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
