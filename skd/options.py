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
import codecs
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

__all__ = ["RESUME_SAFE", "SkdArgumentParser", "args_to_dict", "check_list_file", "check_output_file",
           "check_train_args", "check_writable_dir", "eval_parser", "logit_size", "resolve_dataset",
           "resolve_distill_defaults", "size_pair", "str2bool", "test_parser", "train_parser"]



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


def _flag_name(text: str) -> str:
    """--allow-change: a flag name (lr-g, --lr-g or lr_g) -> its dest (lr_g); 'all' stays."""
    return text.lstrip("-").replace("-", "_")


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
    _add(g, Flag("--num-workers", number(int, 0, 256), 2, "data loading processes, 0..256 (default %(default)s)"))


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
        # 255 at most: labels are uint8 and 255 is the ignore label, so it cannot be a class
        _add(g, Flag("--num-classes", number(int, 2, 255), None, "number of classes, 2..255 (default: the dataset's, "
                                                                 "e.g. 19 for Cityscapes); a value that differs from "
                                                                 "the dataset's is refused"))


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
         Flag("--threads", number(int, 0, 1024), 0,
              "torch CPU threads of this process (default 0: torch's choice, one per core). A CPU run's "
              "sums are split over the threads, so its figures depend on the count in the last digits; "
              "the demo runs with 1, the same on every machine, two runs side by side on 2 cores"),
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
    _add(g, Flag("--seed", number(int, 0, 2 ** 32 - 1), 0, "random seed, 0..2^32-1 (default 0)"))
    g.add_argument("--resume", default=None,
                   help="continue a run: 'auto' (the newest intact checkpoint of --snapshot-dir; from scratch "
                        "when it holds none) or the PATH of a checkpoint_<step>.pth. The flags must be the "
                        "checkpoint's, except those that do not change what is trained (logging, evaluation, "
                        "saving, workers, device, a longer --num-steps; see --allow-change)")
    _add(g, switch("--overwrite", False,
                   "start (or resume) in a --snapshot-dir that holds files of another run: delete them first "
                   "(numbered checkpoints, best.pth, final.pth, metrics.jsonl, val_final.json; each one logged). "
                   "Without it such a run is refused; default False"),
         Flag("--allow-change", _flag_name, [],
              "with --resume: flags whose change from the checkpoint's value is allowed although it alters "
              "the recipe, by name without dashes (e.g. lr-g seed), or 'all'", nargs="+"))
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
    if args.allow_change and args.resume is None:
        raise SkdError("--allow-change: only means something with --resume")
    unknown = sorted(set(args.allow_change) - set(vars(args)) - {"all"})
    if unknown:
        raise SkdError(f"--allow-change {unknown[0].replace('_', '-')}: no such flag of skd-train")
    for flag, path in (("--data-list", args.data_list), ("--val-list", args.val_list)):
        if path is not None:
            check_list_file(path, flag)
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


# Flags a resumed run may change (dest -> why, None: not worth saying): they decide what is logged, validated or saved,
# where the files are, or how fast and on what the same steps run; not what is trained. Any other
# change is refused on --resume unless --allow-change names it (a longer --num-steps is allowed
# too: skd.engine.checkpoint.recipe_changes).
RESUME_SAFE = {
    "data_dir": "where the data is; the images are those of --data-list or the split",
    "num_workers": "loading processes; the batches are the same",
    "val_list": "validation images; best.pth then compares validations on other images",
    "val_split": "validation images; best.pth then compares validations on other images",
    "max_val_images": "validation images; best.pth then compares validations on other images",
    "eval_every": "when to validate", "eval_at": "when to validate", "log_every": "when to log",
    "progress": "the progress bar", "save_every": "when to save", "keep_last": "how many checkpoints are kept",
    "snapshot_dir": "where the run writes", "resume": None, "overwrite": None, "allow_change": None,
    "skip_nonfinite": "how many non-finite steps may be skipped",
    "restore_from": "read only when a run starts; a resumed run continues from the checkpoint",
    "device": "the same steps on another device, not bit for bit",
    "compile": "the same steps compiled or eager, not bit for bit",
    "channels_last": "the same steps in another memory layout, not bit for bit",
    "amp": "the same steps at another precision, not bit for bit",
    "tf32": "the same steps at another matmul precision, not bit for bit",
    "threads": "the same steps over another number of CPU threads, not bit for bit",
    "deterministic": "the same steps with other kernels, not bit for bit",
    "restore_norm_weight": "read only when a run starts; a resumed run continues from the checkpoint",
    "tensorboard": "TensorBoard events beside metrics.jsonl",
    "config": None, "print_config": None,
    # The teacher's architecture flags only check --teacher-ckpt's file, whose content is compared.
    "teacher_arch": None, "teacher_head": None, "teacher_variant": None, "teacher_width_mult": None,
    "teacher_stem": None,
}


def check_list_file(path: Path, flag: str) -> None:
    """A list file must be a UTF-8 text file: SkdError naming `flag` for a missing one, a folder,
    or a binary file (a NUL byte or invalid UTF-8 in its first MiB), before the reader chokes on it."""
    if not Path(path).is_file():
        raise SkdError(f"{flag} {path}: no such file; expected a list file of lines 'image<TAB>label'")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:
        raise SkdError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < 1 << 20)
        bad = head.find(b"\0")
    except UnicodeDecodeError as e:
        bad = e.start
    if bad >= 0:
        raise SkdError(f"{flag} {path}: not a text list file (byte {bad} is {head[bad]:#04x}, not UTF-8 text); "
                       f"expected lines 'image<TAB>label' relative to --data-dir")


def check_output_file(path: Path, flag: str) -> None:
    """An output file's folder must exist (it is created) and be writable, and the path must not be
    a folder: SkdError naming `flag` before any work is done, not after it."""
    path = Path(path)
    if path.is_dir():
        raise SkdError(f"{flag} {path}: is a folder; pass the path of a file to write")
    check_writable_dir(path.parent, flag)


def check_writable_dir(path: Path, flag: str) -> None:
    """`path` is a writable folder (created if missing), or SkdError naming `flag`."""
    if path.exists() and not path.is_dir():
        raise SkdError(f"{flag} {path}: is a file, not a folder")
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
