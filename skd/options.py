"""Command-line flags of skd-train, skd-eval and skd-test, defined in this one place (the
distillation terms' own flags come from the term list, skd.engine.terms).

Flag names follow the original SKD scripts and the paper's symbols (`--lambda-pi`, `--pool-scale`,
`--lambda-d`); booleans take the original's `True/False` values as well as a bare flag. Each
flag's range is checked by its type while the command line is parsed (skd.flags), so a typo
fails in a second, as one line naming the flag; the rules that involve several flags are in
`check_train_args`.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch

from skd.config import add_config_args
from skd.data.info import DatasetInfo
from skd.data.registry import dataset_info, dataset_names, dataset_recipe
from skd.engine.terms import term_flags
from skd.models.resnet import STEMS
from skd.models.segnet import ARCHS as MODEL_ARCHS
from skd.models.segnet import HEADS, VARIANTS
from skd.errors import SkdError
from skd.flags import (FRACTION, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, UNIT, Flag, choice, number,
                       size_pair, str2bool, switch)

__all__ = ["SkdArgumentParser", "args_to_dict", "check_train_args", "check_writable_dir", "eval_parser",
           "logit_size", "resolve_dataset", "resolve_distill_defaults", "size_pair", "str2bool", "test_parser", "train_parser"]



class SkdArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one SkdError line (`--flag VALUE: why`), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if m:
            flag = m.group(1).split("/")[-1]
            message = f"{flag} {m.group(2)}" if not m.group(2).startswith(("invalid", "expected")) else \
                f"{flag}: {m.group(2)}"
        raise SkdError(f"{message} (see {self.prog} --help)")


def crop(text: str) -> tuple[int, int]:
    """--input-size: H,W (or one integer), each side 16..4096 pixels."""
    h, w = size_pair(text)
    if not (16 <= h <= 4096 and 16 <= w <= 4096):
        raise argparse.ArgumentTypeError(f"{text}: each side must be between 16 and 4096 pixels")
    return h, w


def device_name(text: str) -> str:
    """--device: auto, cpu, cuda or cuda:N, refused when this torch build has no such device."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text}: expected auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this torch build has no CUDA device "
                                             f"(torch {torch.__version__}); use --device cpu or auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def _add(group: argparse._ActionsContainer, *flags: Flag) -> None:
    for flag in flags:
        flag.add_to(group)


def recipes_epilog() -> str:
    """The published training defaults of every dataset, for --help."""
    lines = ["dataset recipes (crop, global batch, steps, lr; start from these with --dataset):"]
    for name in dataset_names():
        r = dataset_recipe(name)
        if r is not None:
            lines.append(f"  {name}: --input-size {r.crop[0]},{r.crop[1]} --batch-size {r.batch_size} "
                         f"--num-steps {r.num_steps} --lr-g {r.lr:g}  ({r.source})")
    return "\n".join(lines)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    _add(g, choice("--dataset", dataset_names(), "cityscapes",
                   "dataset layout, classes, palette and splits (default %(default)s; docs/datasets.md)"))
    g.add_argument("--data-dir", type=Path, required=True,
                   help="the dataset's root as downloaded (Cityscapes: leftImg8bit/, gtFine/)")
    g.add_argument("--data-list", type=Path, default=None,
                   help="list file in the dataset's list format (Cityscapes: image<TAB>label, relative to "
                        "--data-dir); default: the split's own images")
    _add(g, Flag("--num-workers", NONNEG_INT, 2, "data loading processes (default %(default)s)"))


# The flags of a network's architecture (skd.models.build_model's keys) and their defaults when
# nothing else says: the original's PSPNet-R18.
ARCH_DEFAULTS = {"arch": "resnet18", "head": "psp", "variant": "skd", "width_mult": 1.0, "stem": None}


def add_model_args(p: argparse.ArgumentParser, *, prefix: str = "", describes_itself: bool = False,
                   norm: bool = True, classes: bool = True, title: str = "model") -> None:
    """--[prefix]arch/head/variant/width-mult/stem (and --num-classes, --norm).

    With `describes_itself` the defaults are None: the checkpoint file says what it is, and a
    flag that is given must agree with it (`skd.engine.build.network_from_args`)."""
    d = dict.fromkeys(ARCH_DEFAULTS) if describes_itself else ARCH_DEFAULTS
    g = p.add_argument_group(title + (" (default: what the checkpoint file describes; a flag given must agree "
                                      "with it)" if describes_itself else ""))
    _add(g, choice(f"--{prefix}arch", MODEL_ARCHS, d["arch"], f"backbone: {' | '.join(MODEL_ARCHS)}"
                   + ("" if describes_itself else " (default %(default)s)")),
         choice(f"--{prefix}head", tuple(HEADS), d["head"], "decode head: psp (PSPNet) or aspp (DeepLabV3)"
                + ("" if describes_itself else " (default %(default)s)")),
         choice(f"--{prefix}variant", tuple(VARIANTS), d["variant"],
                "skd (the original SKD networks: BGR minus the mean, align_corners True) or mmseg "
                "(mmsegmentation's ResNetV1c-D8 / heads: RGB mean/std, align_corners False)"
                + ("" if describes_itself else " (default %(default)s)")),
         Flag(f"--{prefix}width-mult", POSITIVE, d["width_mult"],
              "channel width multiplier of the backbone, e.g. 0.5 for the paper's ResNet18 (0.5)"),
         choice(f"--{prefix}stem", STEMS, None, "ResNet stem: deep (3 convs, the original), standard "
                                                "(torchvision's 7x7) or v1c (mmseg's); default: the variant's"))
    if norm:
        _add(g, choice("--norm", ("bn", "syncbn", "inplace_abn", "inplace_abn_sync"), "bn",
                       "norm layer; syncbn / inplace_abn_sync reduce statistics over ranks (default bn)"))
    if classes:
        _add(g, Flag("--num-classes", number(int, 2), None, "number of classes (default: the dataset's, e.g. 19 "
                                                            "for Cityscapes); a value that differs from the "
                                                            "dataset's is refused"))


def model_flags(args: argparse.Namespace, prefix: str = "", classes: bool = True) -> dict:
    """The architecture values the flags give (None: not given), as build_model keys."""
    out = {k: getattr(args, prefix + k) for k in ARCH_DEFAULTS if getattr(args, prefix + k, None) is not None}
    if classes and getattr(args, "num_classes", None) is not None:
        out["num_classes"] = args.num_classes
    return out


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    _add(g, Flag("--device", device_name, "auto", "auto | cpu | cuda | cuda:N (default %(default)s)"),
         choice("--amp", ("off", "bf16", "fp16"), "off",
                "mixed precision with torch.amp (losses stay float32); default off"),
         switch("--channels-last", False, "use channels-last memory format"),
         switch("--compile", False, "torch.compile the network forwards"),
         switch("--tf32", False, "let float32 convolutions and matmuls run as TF32 on GPUs that have it "
                                 "(PyTorch's own default for convolutions); default False: true float32, "
                                 "the numerics of the original (pre-TF32 GPUs)"))


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    _add(g, choice("--mode", ("whole", "sliding"), "whole",
                   "whole image (the original) or sliding window of --input-size with 1/3 overlap"),
         Flag("--scales", POSITIVE, [1.0], "test scales (default 1.0)", nargs="+"),
         choice("--ms-average", ("logits", "probs"), "logits",
                "what several scales / the flip average: the upsampled logits (the original's "
                "networks/evaluate.py, lines 115-134) or the softmax maps"),
         switch("--flip", False, "also predict the mirrored image and average"),
         Flag("--input-size", crop, (512, 512), "sliding-window tile H,W (default 512,512)"))


def add_vis_args(p: argparse.ArgumentParser, default_dir: str) -> None:
    g = p.add_argument_group("visual panels")
    _add(g, Flag("--vis", NONNEG_INT, 0, "write panels (image | ground truth | prediction | errors [| teacher]) "
                                         "of the first N images, in the dataset's palette (default 0)"),
         switch("--vis-overlay", False, "blend the predictions over the image in the panels"))
    g.add_argument("--vis-dir", type=Path, default=None, help=f"folder of the panels (default {default_dir})")
    g.add_argument("--teacher-ckpt", type=Path, default=None,
                   help="a teacher whose predictions the panels show too (any checkpoint that describes itself)")


def inference_parser(prog: str, description: str, split: str) -> argparse.ArgumentParser:
    """What skd-eval and skd-test share: data, --split, --ckpt, the model, evaluation and runtime."""
    p = SkdArgumentParser(prog=prog, description=description)
    add_data_args(p)
    p.add_argument("--split", default=None, help=f"split (default: the dataset's {split} split)")
    p.add_argument("--ckpt", type=Path, required=True,
                   help="the network: an skd checkpoint, an official SKD .pth or an mmsegmentation checkpoint")
    add_model_args(p, describes_itself=True, norm=False)
    add_eval_args(p)
    add_runtime_args(p)
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = inference_parser("skd-eval", "mIoU of a PSPNet on a labelled split.", "validation")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: next to --ckpt)")
    _add(p, Flag("--max-images", NONNEG_INT, 0, "only the first N images (0 = all)"))
    add_vis_args(p, "<ckpt>_<split>_vis next to --ckpt")
    return p


def test_parser() -> argparse.ArgumentParser:
    p = inference_parser("skd-test", "Write predictions for a split in the dataset's own label encoding "
                                     "(Cityscapes: the submission format).", "test")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_vis_args(p, "<out>/vis")
    return p


def train_parser() -> argparse.ArgumentParser:
    p = SkdArgumentParser(
        prog="skd-train",
        description="Train a PSPNet, supervised or distilled from a teacher (--pi/--pa/--ho, CWD, DIST, KD).",
        epilog=recipes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--train-split", default=None, help="training split (default: the dataset's, e.g. train)")
    p.add_argument("--val-list", type=Path, default=None, help="list file of the validation images")
    p.add_argument("--val-split", default=None, help="validation split (default: the dataset's, e.g. val)")
    add_model_args(p, title="student")
    p.add_argument("--restore-from", type=Path, default=None,
                   help="student initialisation: an ImageNet backbone file (the original's resnet18-imagenet.pth, "
                        "torchvision's resnet*/mobilenet_v2, mmseg's resnet*_v1c) or a whole network of the "
                        "student's architecture (skd, official SKD or mmseg checkpoint)")
    _add(p, choice("--restore-norm-weight", ("auto", "abs", "plain"), "auto",
                   "norm weights of an ImageNet file: auto = |w| + 1e-5 for the original's deep-stem file (what its "
                   "InPlace-ABN computed, docs/models.md), as they are for torchvision's and mmseg's; abs / plain "
                   "force either"))

    g = p.add_argument_group("optimisation (the original SKD recipe by default)")
    _add(g, Flag("--input-size", crop, (512, 512), "training crop H,W (default 512,512)"),
         Flag("--batch-size", POSITIVE_INT, 8, "GLOBAL batch, split over ranks (default 8)"),
         Flag("--num-steps", POSITIVE_INT, 40000, "training steps (default 40000)"),
         Flag("--lr-g", POSITIVE, 0.01, "student (generator) base lr (default 0.01)"),
         Flag("--lr-d", POSITIVE, 4e-4, "discriminator base lr (default 4e-4)"),
         choice("--d-optimizer", ("sgd", "adam"), "sgd",
                "discriminator optimizer: sgd with --momentum and --weight-decay, the original's "
                "(SKD networks/kd_model.py line 75; default), or adam with betas 0.9/0.99 and no weight "
                "decay, TorchDistiller's (the CWD code, SemSeg-distill/networks/kd_model.py line 100)"),
         Flag("--momentum", number(float, 0, 1, high_open=True), 0.9, "SGD momentum (default 0.9)"),
         Flag("--weight-decay", NONNEG, 5e-4, "SGD weight decay (default 5e-4, SKD run_train_val.sh line 13)"),
         Flag("--power", NONNEG, 0.9, "poly lr power (default 0.9)"),
         switch("--random-mirror", True, "random horizontal mirror (default True)"),
         switch("--random-scale", True, "random scale 0.7..2.1 (default True)"),
         Flag("--dropout", FRACTION, 0.1,
              "Dropout2d rate of the PSP bottleneck and DSN heads (default 0.1, the original)"),
         Flag("--aux-weight", NONNEG, 0.4, "weight of the DSN cross-entropy (default 0.4)"),
         switch("--ohem", False, "online hard example mining in the cross-entropy"),
         Flag("--ohem-thresh", UNIT, 0.7, "OHEM probability threshold"),
         Flag("--ohem-keep", NONNEG_INT, 100000, "OHEM minimum kept pixels"))

    p.add_argument("--teacher-ckpt", type=Path, default=None,
                   help="the teacher, a file that describes its network (skd, official SKD or mmseg checkpoint); "
                        "enables distillation")
    add_model_args(p, prefix="teacher-", describes_itself=True, norm=False, classes=False, title="teacher")

    for term, flags in term_flags():
        _add(p.add_argument_group(f"{term.name}: {term.help}"), *flags)

    g = p.add_argument_group("run")
    g.add_argument("--snapshot-dir", type=Path, default=Path("runs/skd"), help="checkpoints and logs")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (newest intact one)")
    _add(g, Flag("--save-every", POSITIVE_INT, 1000, "checkpoint every N steps (default 1000)"),
         Flag("--keep-last", POSITIVE_INT, 3, "checkpoints kept (default 3); best.pth kept apart"),
         Flag("--eval-every", NONNEG_INT, 0, "validate every N steps (and at the end); 0 = only at the end"),
         Flag("--eval-at", POSITIVE_INT, [], "also validate after these steps, e.g. 39326 39697 39999 (the "
                                            "original's protocol); best.pth is the best validation", nargs="+"),
         Flag("--max-val-images", NONNEG_INT, 0, "validate on the first N images only (0 = all)"),
         Flag("--log-every", POSITIVE_INT, 10, "log every N steps, averaged over them (default 10)"),
         switch("--deterministic", False, "deterministic algorithms (bit-exact resume on CPU)"),
         Flag("--skip-nonfinite", NONNEG_INT, 0, "skip up to N steps whose loss is NaN/Inf (default 0: stop at "
                                                 "the first)"),
         switch("--progress", True, "tqdm progress bar (default True)"),
         switch("--tensorboard", False, "also write the logged scalars and validations as TensorBoard events to "
                                        "<snapshot-dir>/tensorboard (pip install 'skd[tensorboard]'); "
                                        "metrics.jsonl stays the record"))
    add_runtime_args(p)
    add_config_args(p)
    return p


def resolve_dataset(args: argparse.Namespace, **splits: str) -> DatasetInfo:
    """The --dataset's info; --num-classes defaults to its class count (a different value is
    refused), and each `attr="train" | "val" | "test"` split flag left unset to its standard split."""
    info = dataset_info(args.dataset, args.data_dir)
    if args.num_classes is None:
        args.num_classes = info.num_classes
    elif args.num_classes != info.num_classes:
        raise SkdError(f"--num-classes {args.num_classes}: --dataset {info.name} has {info.num_classes} classes")
    for attr, which in splits.items():
        if getattr(args, attr) is None:
            setattr(args, attr, getattr(info, f"{which}_split"))
    return info


def check_train_args(args: argparse.Namespace, world_size: int = 1) -> None:
    """The rules that involve several flags (each flag's own range is its type's), before
    anything is built. Raises SkdError."""
    if args.ho and args.d_input_size == 0 and min(logit_size(args.input_size)) < 64:
        h, w = logit_size(args.input_size)
        raise SkdError(f"--ho: the discriminator needs logits of at least 64x64, and --input-size "
                       f"{args.input_size[0]},{args.input_size[1]} gives {h}x{w}; use a crop of 505 or "
                       f"more, or --d-input-size 65")
    if args.batch_size < world_size or args.batch_size % world_size:
        raise SkdError(f"--batch-size {args.batch_size}: the global batch must be a multiple of the "
                       f"number of processes ({world_size})")
    if args.batch_size // world_size < 2 and args.norm in ("bn", "inplace_abn"):
        raise SkdError(f"--batch-size {args.batch_size} over {world_size} process(es) leaves "
                       f"{args.batch_size // world_size} image per rank, and --norm {args.norm} needs at least 2 "
                       f"for its batch statistics; use a larger batch or --norm syncbn / inplace_abn_sync")
    if args.amp == "fp16" and args.device == "cpu":
        raise SkdError("--amp fp16: float16 autocast needs a GPU; use --amp bf16 or off on the CPU")
    past = [s for s in args.eval_at if s > args.num_steps]
    if past:
        raise SkdError(f"--eval-at {past[0]}: after the last step (--num-steps {args.num_steps})")

    on = [t for t, _ in term_flags() if getattr(args, t.name)]
    if args.teacher_ckpt is None and on:
        raise SkdError(f"--{on[0].name} needs a teacher: give --teacher-ckpt PATH")
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
    """The paper's terms (pi, pa, ho) default to on with a teacher and off without."""
    for term, _ in term_flags():
        if getattr(args, term.name) is None:
            setattr(args, term.name, args.teacher_ckpt is not None)


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
