"""What a run is made of, built from the flags: the data, the student, the teacher, the critic,
the optimizers. Read by skd-train and by scripts/benchmark.py, which times exactly this.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from skd.data import EvalTransform, TrainTransform
from skd.data.base import SegmentationDataset
from skd.data.cityscapes import MAX_PIXELS, DataFileError
from skd.data.labels import IGNORE_INDEX
from skd.data.registry import build_dataset
from skd.data.sampler import SeededDataset, StepSampler
from skd.engine import rundir
from skd.engine.distributed import DistInfo
from skd.engine.runtime import RecoveringCompile, ignore_stop_signals
from skd.engine.steps import CriticLoss, DistillStudent, StepConfig, Training
from skd.engine.terms import TERMS_BY_NAME
from skd.errors import SkdError
from skd.options import ARCH_DEFAULTS, model_flags
from skd.models import (Discriminator, build_model, check_model_config, load_backbone, load_model, load_weights,
                        read_model_file)
from skd.nn.norm import make_norm

log = logging.getLogger(__name__)


def network_from_args(args, path: Path | None, *, prefix: str = "", source: str = "--ckpt",
                      norm: str = "bn", classes: bool = True) -> nn.Module:
    """The network of a checkpoint file and/or the architecture flags.

    With `path`: the network the file describes (`load_model`: skd, official SKD, mmseg
    checkpoints), and every architecture flag given (not None) must agree with it, else an
    SkdError names both values. Without: `build_model` of the flags over ARCH_DEFAULTS."""
    given = model_flags(args, prefix, classes)
    if path is not None:
        net = load_model(path, norm=norm)
        check_model_config(net.config(), {**net.config(), **given}, f"{source} {path}")
        return net
    return build_model(**{**ARCH_DEFAULTS, **given, "norm": norm})


def build_student(args) -> tuple[nn.Module, str]:
    """The student network of the flags and how it was initialised ("random", or the file and
    the number of tensors read from it)."""
    net = network_from_args(args, None, norm=args.norm)
    for m in net.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = args.dropout
    if args.restore_from is None:
        return net, "random"
    try:
        read_model_file(args.restore_from)
    except SkdError:  # not a whole network: an ImageNet backbone (load_backbone says if not that either)
        done = load_backbone(net, args.restore_from, norm_weight=args.restore_norm_weight)
        return net, (f"{args.restore_from} ({done.layout} ImageNet backbone, {done.loaded} tensors, "
                     f"{done.norm_weight} norm weights; heads random)")
    load_weights(net, args.restore_from)
    return net, f"{args.restore_from} (whole network, {len(net.state_dict())} tensors)"


def build_teacher(args, device: torch.device) -> tuple[nn.Module, str]:
    """The teacher --teacher-ckpt describes (the --teacher-* flags must agree with it), frozen
    and in eval mode on `device`."""
    teacher = network_from_args(args, args.teacher_ckpt, prefix="teacher_", source="--teacher-ckpt", classes=False)
    teacher.requires_grad_(False)
    return teacher.eval().to(device), f"{args.teacher_ckpt} ({teacher.describe()}, {len(teacher.state_dict())} tensors)"


def check_pair(net: nn.Module, teacher: nn.Module) -> None:
    """SkdError before the first step when the teacher cannot teach this student: the two must
    predict the same classes (logit terms compare them class by class)."""
    s_classes, t_classes = getattr(net, "num_classes", None), getattr(teacher, "num_classes", None)
    if s_classes != t_classes:
        describe = lambda m: m.describe() if hasattr(m, "describe") else type(m).__name__  # noqa: E731
        raise SkdError(f"--teacher-ckpt: the teacher {describe(teacher)} predicts {t_classes} classes and the "
                       f"student {describe(net)} {s_classes}; distillation needs the same classes (--num-classes)")


@torch.no_grad()
def map_channels(net: nn.Module) -> dict[str, int]:
    """Channels of each output map of `net` (PSPNetOutput fields), from one small forward."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = net(torch.zeros(1, 3, 64, 64, device=device))
    net.train(was_training)
    return {name: value.shape[1] for name, value in out._asdict().items()}


def build_connectors(net: nn.Module, teacher: nn.Module, cfg: StepConfig, norm: str) -> dict[str, tuple[str, nn.Module]]:
    """A connector for each active term that reads a map whose channels differ between the two
    networks, or always where the method has one (FitNet), as the method defines it (e.g.
    TorchDistiller's for CWD, CIRKD's 1x1 convolution for FitNet)."""
    connectors = {}
    s_channels = t_channels = None
    for name in cfg.terms:
        term = TERMS_BY_NAME[name]
        if term.connector is None:
            continue
        if s_channels is None:
            s_channels, t_channels = map_channels(net), map_channels(teacher)
        feature = term.feature(cfg.params)
        if term.always_connect or s_channels[feature] != t_channels[feature]:
            connectors[name] = (feature, term.connector(s_channels[feature], t_channels[feature], make_norm(norm)))
    return connectors


def build_critic(args) -> CriticLoss:
    return CriticLoss(Discriminator(args.num_classes, ndf=args.adv_conv_dim), args.adv_loss_type)


def build_d_optimizer(args, critic: nn.Module) -> torch.optim.Optimizer:
    """--d-optimizer sgd: the original's (SKD networks/kd_model.py line 75: SGD, momentum
    --momentum, weight decay --weight-decay); adam: TorchDistiller's (SemSeg-distill/networks/
    kd_model.py line 100: Adam, betas 0.9/0.99, no weight decay). Both start at --lr-d."""
    if args.d_optimizer == "sgd":
        return torch.optim.SGD(critic.parameters(), lr=args.lr_d, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return torch.optim.Adam(critic.parameters(), lr=args.lr_d, betas=(0.9, 0.99))


def build_training(args, cfg: StepConfig, device: torch.device) -> tuple[Training, dict[str, str]]:
    """Student, teacher, critic and their optimizers from the flags, on `device`, channels-last
    with --channels-last; not yet compiled (`compile_forwards`) or wrapped in DDP. Also returns
    how each network was initialised, for the log."""
    net, init = build_student(args)
    inits = {"student": init}
    teacher = None
    if cfg.distills:
        teacher, inits["teacher"] = build_teacher(args, device)
        check_pair(net, teacher)
    connectors = build_connectors(net.to(device), teacher, cfg, args.norm) if teacher is not None else {}
    student = DistillStudent(net, connectors).to(device)
    for name in connectors:
        inits[f"{name} connector"] = "random"
    critic = build_critic(args).to(device) if cfg.ho else None
    if critic is not None:
        inits["discriminator"] = "random"
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    # The original's student optimizer (SKD networks/kd_model.py line 74); connectors train with it.
    opt_g = torch.optim.SGD(student.parameters(), lr=args.lr_g, momentum=args.momentum,
                            weight_decay=args.weight_decay)
    opt_d = build_d_optimizer(args, critic) if critic is not None else None
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    return Training(net, student, teacher, critic, opt_g, opt_d, scaler), inits


def compile_forwards(models: Training) -> None:
    """--compile: torch.compile the student's and the teacher's network forwards, each recovering
    from a failed compilation (skd.engine.runtime.RecoveringCompile)."""
    net = models.raw_student.net
    net.forward = RecoveringCompile(net.forward, "the student")
    if models.teacher is not None:
        models.teacher.forward = RecoveringCompile(models.teacher.forward, "the teacher")


def build_train_set(args) -> SegmentationDataset:
    """The training split of --dataset with the random scale / mirror / crop of the flags."""
    return build_dataset(args.dataset, args.data_dir, args.train_split, args.data_list, transform=TrainTransform(
        args.input_size, random_scale=args.random_scale, random_mirror=args.random_mirror))


def build_val_set(args) -> SegmentationDataset:
    """The validation split of --dataset, whole images."""
    return build_dataset(args.dataset, args.data_dir, args.val_split, args.val_list, transform=EvalTransform())


def build_train_loader(train_set, args, info: DistInfo, device: torch.device, start_step: int = 0) -> DataLoader:
    """This rank's batches for steps start_step..num_steps, as one pass of one loader (so its
    workers start once); the sampler draws the global batch and gives each rank its share.
    Labels are checked against --num-classes as they are loaded (`CheckedDataset`)."""
    sampler = StepSampler(len(train_set), args.batch_size, args.num_steps, args.seed, info.rank,
                          info.world_size, start_step)
    return DataLoader(SeededDataset(CheckedDataset(train_set, args.num_classes)),
                      batch_size=args.batch_size // info.world_size, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=device.type == "cuda",
                      worker_init_fn=_worker_init, drop_last=False,
                      # its own generator: the loader's base seed must not consume the global
                      # stream (dropout, the penalty's alpha), or a resumed run would diverge
                      generator=torch.Generator().manual_seed(args.seed))


def _worker_init(_worker_id: int) -> None:
    # Stop signals are the main process's to handle (it checkpoints, then ends the workers); the
    # snapshot dir's lock is the main process's to hold.
    ignore_stop_signals()
    rundir.close_inherited_locks()
    # OpenCV's own thread pool inside every loader process oversubscribes the cores.
    import cv2
    cv2.setNumThreads(0)


# The shorter side an evaluation scale may shrink an image to: at the network's output stride of 8
# that is a 4x4 map of logits; below it the pyramid module's 2x2 bins pool single cells and its 3x3
# and 6x6 bins the same cells over and over, so the prediction is a few blocks, not a segmentation.
MIN_EVAL_SIDE = 32


class CheckedDataset(torch.utils.data.Dataset):
    """A dataset whose items are checked as they load, naming the file at fault:

    labels: every class id (255 = ignore aside) below `num_classes`, or the cross-entropy would
    index past its logits (a traceback on the CPU, a device-side assert on a GPU) and the
    confusion matrix would silently drop those pixels; one comparison per item.
    scales (skd-eval, skd-test): each scale s takes the image to at least MIN_EVAL_SIDE pixels on
    its shorter side and at most the loader's MAX_PIXELS.
    """

    def __init__(self, dataset, num_classes: int, scales: tuple[float, ...] = ()):
        self.dataset = dataset
        self.info = getattr(dataset, "info", None)
        self.items = dataset.items
        self.num_classes = num_classes
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label, name = self.dataset[index]
        image_path, label_path = self.items[index]
        if self.scales:
            self._check_scales(image, image_path)
        if label_path is not None and self.num_classes < IGNORE_INDEX:
            outside = (label >= self.num_classes) & (label != IGNORE_INDEX)
            if bool(outside.any()):
                ids = sorted(set(label[outside].unique().tolist()))
                raise DataFileError(f"{label_path}: holds class id(s) {ids[:8]}, not below --num-classes "
                                    f"{self.num_classes}; pass --num-classes {ids[-1] + 1} or more (Cityscapes: 19)")
        return image, label, name

    def _check_scales(self, image: torch.Tensor, path) -> None:
        h, w = image.shape[-2:]
        low, high = min(self.scales), max(self.scales)
        if round(min(h, w) * low) < MIN_EVAL_SIDE:
            raise DataFileError(f"--scales {low:g}: shrinks {path} ({w}x{h}) to {round(w * low)}x{round(h * low)}, "
                                f"under the {MIN_EVAL_SIDE} pixels a side the network needs; use a scale of at "
                                f"least {MIN_EVAL_SIDE / min(h, w):.3g}")
        if round(h * high) * round(w * high) > MAX_PIXELS:
            raise DataFileError(f"--scales {high:g}: enlarges {path} ({w}x{h}) to {round(w * high)}x"
                                f"{round(h * high)}, more than the {MAX_PIXELS} pixels skd decodes; use a "
                                f"smaller scale")
