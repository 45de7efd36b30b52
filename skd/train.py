"""skd-train: train a PSPNet, supervised or distilled (python -m skd.train, or under torchrun).

main() builds data, models and optimizers, then runs the loop: poly lr, `train_step`, logs,
checkpoints, validation. Everything the run reads is validated before the first step.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from skd.data import CLASS_NAMES, CityscapesDataset, EvalTransform, TrainTransform
from skd.data.sampler import SeededDataset, StepSampler
from skd.engine import checkpoint as ckpt
from skd.engine.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from skd.engine.evaluate import evaluate
from skd.engine.runtime import autocast_factory, cli, seed_everything, setup_logging
from skd.engine.steps import CriticLoss, DistillStudent, NonFiniteLoss, StepConfig, train_step
from skd.errors import SkdError
from skd.losses import Connector
from skd.metrics import format_table
from skd.models.checkpoint import fit_problems, raise_if_unfit, read_checkpoint
from skd.models import Discriminator, build_pspnet, count_parameters, load_backbone, load_weights
from skd.options import args_to_dict, check_train_args, resolve_distill_defaults, train_parser

log = logging.getLogger("skd.train")


def poly_lr(base: float, step: int, num_steps: int, power: float) -> float:
    """lr = base * (1 - step / num_steps) ** power (the original's schedule)."""
    return base * (1 - step / num_steps) ** power


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def build_student(args) -> nn.Module:
    net = build_pspnet(args.arch, num_classes=args.num_classes, width_mult=args.width_mult,
                       norm=args.norm, stem=args.stem)
    for m in net.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = args.dropout
    if args.restore_from is not None:
        full = _is_full_model(args.restore_from)
        if full:
            load_weights(net, args.restore_from)
        else:
            load_backbone(net, args.restore_from)
        log.info("student initialised from %s (%s)", args.restore_from, "full model" if full else "backbone")
    return net


def _is_full_model(path: Path) -> bool:
    """Whether a weight file holds a whole PSPNet (heads included) rather than an ImageNet backbone."""
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        return True
    return "skd_format" in state or any(k.removeprefix("module.").startswith(("head.", "pspmodule.", "dsn."))
                                        for k in state)


def build_teacher(args, device: torch.device) -> nn.Module:
    teacher = build_pspnet(args.teacher_arch, num_classes=args.num_classes, width_mult=args.teacher_width_mult,
                           norm="bn", stem=args.teacher_stem)
    load_weights(teacher, args.teacher_ckpt)
    teacher.requires_grad_(False)
    return teacher.eval().to(device)


def save_training_state(path: Path, step: int, student: DistillStudent, opt_g, critic, opt_d, scaler,
                        best_miou: float, args) -> None:
    net = student.net
    state = {
        "skd_format": ckpt.FORMAT, "step": step, "model": net.state_dict(), "model_config": net.config(),
        "norm_weight": "plain", "optimizer": opt_g.state_dict(), "best_miou": best_miou,
        "args": args_to_dict(args), "rng": ckpt.rng_state(),
    }
    if student.connector is not None:
        state["connector"] = student.connector.state_dict()
    if critic is not None:
        state["disc"] = critic.disc.state_dict()
        state["opt_d"] = opt_d.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    ckpt.atomic_save(state, path)


def save_model(path: Path, net: nn.Module, step: int, miou: float | None) -> None:
    """Student weights only (best.pth, final.pth), in the training-checkpoint format."""
    ckpt.atomic_save({"skd_format": ckpt.FORMAT, "step": step, "model": net.state_dict(),
                      "model_config": net.config(), "norm_weight": "plain", "miou": miou}, path)


def check_finite_weights(module: nn.Module, what: str) -> None:
    """SkdError naming the first parameter or buffer of `module` holding NaN/Inf: a diverged
    model is never written over the last good checkpoint, and the run does not end with status 0."""
    for name, value in module.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SkdError(f"{what}: {name} is not finite (NaN/Inf); the model diverged, so it is not "
                           f"written (the last good checkpoint is kept); lower --lr-g or check the data")


# What a config field of a checkpoint is called on the command line.
_CONFIG_FLAGS = {"arch": "--arch", "width_mult": "--width-mult", "num_classes": "--num-classes", "stem": "--stem"}


def load_model_state(net: nn.Module, state: dict, path: Path) -> None:
    """The student weights of a training checkpoint into `net`; SkdError saying what differs.

    The checkpoint's model_config is compared first, naming the flags that differ (the norm
    type is not compared: the weights do not depend on it); without one, the first keys that
    are missing, unexpected or of another shape are listed.
    """
    file_cfg = state.get("model_config")
    if isinstance(file_cfg, dict):
        run_cfg = net.config()
        differ = [k for k in _CONFIG_FLAGS if k in file_cfg and file_cfg[k] != run_cfg[k]]
        if differ:
            raise SkdError(f"--resume {path}: checkpoint is {_describe_config(file_cfg, differ)}, this run is "
                           f"{_describe_config(run_cfg, differ)} ({', '.join(_CONFIG_FLAGS[k] for k in differ)})")
    if "model" not in state:
        raise SkdError(f"--resume {path}: the checkpoint has no 'model' entry")
    problems = fit_problems(state["model"], net.state_dict())
    raise_if_unfit(problems, f"--resume {path}", net.describe(),
                    hint="resume with the flags of the run that wrote it, or pass another --resume")
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise SkdError(f"--resume {path}: does not fit {net.describe()} ({str(e).splitlines()[0]})") from None


def _describe_config(cfg: dict, differ: list[str]) -> str:
    """`resnet18 width 0.25`, plus the class count and stem where they are among `differ`."""
    text = f"{cfg.get('arch')} width {cfg.get('width_mult')}"
    if "num_classes" in differ:
        text += f", {cfg.get('num_classes')} classes"
    if "stem" in differ:
        text += f", {cfg.get('stem')} stem"
    return text


@dataclass
class Training:
    """What a distillation run trains: see `build_training`."""

    net: nn.Module                  # the student PSPNet
    student: DistillStudent         # net (+ CWD connector), what the step calls and opt_g updates
    teacher: nn.Module | None       # eval mode, frozen; None without distillation
    critic: CriticLoss | None       # discriminator + its loss, with --ho
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler | None  # --amp fp16 only


def build_train_set(args) -> CityscapesDataset:
    """The training split with the random scale / mirror / crop of the flags."""
    return CityscapesDataset(args.data_dir, "train", args.data_list, transform=TrainTransform(
        args.input_size, random_scale=args.random_scale, random_mirror=args.random_mirror))


def build_train_loader(train_set: CityscapesDataset, args, info: DistInfo, device: torch.device,
                       start_step: int = 0) -> DataLoader:
    """This rank's batches for steps start_step..num_steps, as one pass of one loader (so its
    workers start once); the sampler draws the global batch and gives each rank its share."""
    sampler = StepSampler(len(train_set), args.batch_size, args.num_steps, args.seed, info.rank,
                          info.world_size, start_step)
    return DataLoader(SeededDataset(train_set), batch_size=args.batch_size // info.world_size, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=device.type == "cuda",
                      worker_init_fn=_worker_init, drop_last=False,
                      # its own generator: the loader's base seed must not consume the global
                      # stream (dropout, the penalty's alpha), or a resumed run would diverge
                      generator=torch.Generator().manual_seed(args.seed))


def build_training(args, cfg: StepConfig, device: torch.device) -> Training:
    """Student, teacher, critic and their optimizers from the flags, on `device`, channels-last
    with --channels-last; not yet compiled (`compile_forwards`) or wrapped in DDP."""
    net = build_student(args)
    connector = None
    teacher = build_teacher(args, device) if cfg.distills else None
    if cfg.cwd and args.cwd_on == "feat":
        s_ch, t_ch = net.head.in_channels, teacher.head.in_channels
        connector = Connector(s_ch, t_ch) if s_ch != t_ch else None
    student = DistillStudent(net, connector).to(device)
    critic = CriticLoss(Discriminator(args.num_classes), args.adv_loss_type, args.lambda_d,
                        args.lambda_gp).to(device) if cfg.ho else None
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    opt_g = torch.optim.SGD(student.parameters(), lr=args.lr_g, momentum=args.momentum,
                            weight_decay=args.weight_decay)
    # The original trains the discriminator with Adam, betas (0.9, 0.99).
    opt_d = torch.optim.Adam(critic.parameters(), lr=args.lr_d, betas=(0.9, 0.99)) if critic else None
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    return Training(net, student, teacher, critic, opt_g, opt_d, scaler)


def compile_forwards(student: DistillStudent, teacher: nn.Module | None) -> None:
    """--compile: torch.compile the student's and the teacher's network forwards."""
    student.net.forward = torch.compile(student.net.forward)
    if teacher is not None:
        teacher.forward = torch.compile(teacher.forward)


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._set)

    def _set(self, signum, _frame):
        self.signum = signum


@cli
def main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        return run(args, info, device)
    finally:
        cleanup()


def run(args, info: DistInfo, device: torch.device) -> int:
    setup_logging(info.is_main)
    resolve_distill_defaults(args)
    check_train_args(args, info.world_size)
    seed_everything(args.seed + info.rank, args.deterministic)
    autocast = autocast_factory(args.amp, device)
    cfg = StepConfig.from_args(args, info.world_size)

    # Data: every file the run will read is checked before the first step.
    train_set = build_train_set(args)
    val_set = CityscapesDataset(args.data_dir, args.val_split, args.val_list, transform=EvalTransform())
    if info.is_main:
        train_set.check_files()
        val_set.check_files()
    if len(train_set) < args.batch_size:
        raise SkdError(f"--data-dir {args.data_dir}: {len(train_set)} training images, fewer than "
                       f"--batch-size {args.batch_size}")

    # Models.
    m = build_training(args, cfg, device)
    net, student, teacher, critic, opt_g, opt_d, scaler = (
        m.net, m.student, m.teacher, m.critic, m.opt_g, m.opt_d, m.scaler)
    log.info("student %s: %s parameters", args.arch, f"{count_parameters(net):,}")
    if teacher is not None:
        log.info("teacher %s: %s parameters (%s)", args.teacher_arch, f"{count_parameters(teacher, trainable_only=False):,}",
                 args.teacher_ckpt)
    if critic is not None:
        log.info("discriminator: %s trainable parameters", f"{count_parameters(critic):,}")
    log.info("losses: task%s", "".join(f" + {k}" for k in ("pi", "pa", "ho", "cwd", "dist", "kd")
                                         if getattr(cfg, k)))

    # Resume.
    if info.is_main:
        ckpt.remove_stale_temp_files(args.snapshot_dir)
    start_step, best_miou = 0, -1.0
    resume = None
    if args.resume == "auto":
        resume = ckpt.find_resumable(args.snapshot_dir)
        if resume is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", args.snapshot_dir)
    elif args.resume:
        resume = (Path(args.resume), ckpt.load_checkpoint(Path(args.resume)))
    if resume:
        path, state = resume
        load_model_state(net, state, path)
        try:
            opt_g.load_state_dict(state["optimizer"])
            if student.connector is not None:
                student.connector.load_state_dict(state["connector"])
            if critic is not None:
                critic.disc.load_state_dict(state["disc"])
                opt_d.load_state_dict(state["opt_d"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
        except KeyError as e:
            raise SkdError(f"--resume {path}: the checkpoint has no {e.args[0]!r} entry; it was saved by a "
                           f"run with other flags (--ho, --cwd-on feat); resume with that run's flags") from None
        except (RuntimeError, ValueError) as e:
            raise SkdError(f"--resume {path}: does not match this run's models/flags "
                           f"({str(e).splitlines()[0]})") from None
        start_step, best_miou = state["step"], state["best_miou"]
        if info.world_size == 1:
            ckpt.set_rng_state(state["rng"])
        else:
            torch.manual_seed(args.seed + info.rank + 1000003 * start_step)
        log.info("resumed from %s at step %d", path, start_step)

    if args.compile:
        compile_forwards(student, teacher)
    if info.enabled:
        student = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
        if critic is not None:
            critic = DDP(critic, device_ids=[device.index] if device.type == "cuda" else None)
    raw_student = student.module if info.enabled else student
    raw_critic = (critic.module if info.enabled else critic) if critic is not None else None

    loader = build_train_loader(train_set, args, info, device, start_step)

    metrics_log = args.snapshot_dir / "metrics.jsonl"
    stop = StopFlag()
    skipped = 0
    step = start_step
    student.train()
    bar = tqdm(total=args.num_steps, initial=start_step, desc="train",
               disable=not (info.is_main and args.progress), dynamic_ncols=True)
    t0 = time.time()
    for image, label, _ in loader:
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        if args.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        lr_g = poly_lr(args.lr_g, step, args.num_steps, args.power)
        set_lr(opt_g, lr_g)
        if opt_d is not None:
            set_lr(opt_d, poly_lr(args.lr_d, step, args.num_steps, args.power))
        try:
            terms = train_step(image, label, student, opt_g, cfg, teacher, critic, opt_d, scaler, autocast)
        except NonFiniteLoss as e:
            # train_step has left the models as they were; the step counts, as in the data order.
            skipped += 1
            if skipped > args.skip_nonfinite:
                raise SkdError(f"step {step + 1}: {e}; stopping (the last good checkpoint is kept; "
                               f"--skip-nonfinite N skips up to N such steps)") from None
            log.warning("step %d: %s; step skipped (%d of %d allowed)", step + 1, e, skipped, args.skip_nonfinite)
            _append_jsonl(metrics_log, {"step": step + 1, "skipped": str(e)}, info)
            terms = None
        step += 1
        bar.update(1)

        if terms is not None and (step % args.log_every == 0 or step == args.num_steps):
            terms = all_reduce_mean(terms, device)
            rec = {"step": step, "lr_g": lr_g, **terms, "loss": sum(v for k, v in terms.items()
                                                                     if not k.startswith("d_")),
                   "sec_per_step": (time.time() - t0) / args.log_every}
            t0 = time.time()
            _append_jsonl(metrics_log, rec, info)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
            if not args.progress:
                log.info("step %d/%d lr %.5f %s", step, args.num_steps, lr_g,
                         " ".join(f"{k} {v:.4f}" for k, v in terms.items()))

        last = step == args.num_steps
        if (args.eval_every and step % args.eval_every == 0) or last:
            conf = evaluate(raw_student.net, val_set, device, args.num_classes, crop=args.input_size,
                            rank=info.rank, world_size=info.world_size, max_images=args.max_val_images,
                            channels_last=args.channels_last, autocast=autocast)
            summary = conf.summary(CLASS_NAMES if args.num_classes == len(CLASS_NAMES) else
                                   [str(c) for c in range(args.num_classes)])
            miou = summary["mIoU"]
            _append_jsonl(metrics_log, {"step": step, "val": summary}, info)
            log.info("step %d: val mIoU %.2f%%", step, 100 * miou)
            if miou > best_miou:
                best_miou = miou
                check_finite_weights(raw_student, f"step {step}, best.pth")
                if info.is_main:
                    save_model(args.snapshot_dir / "best.pth", raw_student.net, step, miou)
            if last and info.is_main:
                _write_text(args.snapshot_dir / "val_final.json", json.dumps(summary, indent=2))
                log.info("validation at step %d:\n%s", step, format_table(summary))

        if step % args.save_every == 0 or last or stop.signum:
            # on every rank, so that all of them stop together
            check_finite_weights(raw_student, f"step {step}, checkpoint")
            if raw_critic is not None:
                check_finite_weights(raw_critic, f"step {step}, checkpoint (discriminator)")
            if info.is_main:
                save_training_state(args.snapshot_dir / f"checkpoint_{step:06d}.pth", step, raw_student, opt_g,
                                    raw_critic, opt_d, scaler, best_miou, args)
                ckpt.rotate(args.snapshot_dir, args.keep_last)
        if stop.signum:
            log.warning("signal %d: checkpoint written at step %d, exiting", stop.signum, step)
            return 128 + stop.signum
    bar.close()
    check_finite_weights(raw_student, f"step {step}, final.pth")
    if info.is_main:
        save_model(args.snapshot_dir / "final.pth", raw_student.net, step, None)
        log.info("done: best val mIoU %.2f%%; checkpoints in %s", 100 * best_miou, args.snapshot_dir)
    return 0


def _worker_init(_worker_id: int) -> None:
    # OpenCV's own thread pool inside every loader process oversubscribes the cores.
    import cv2
    cv2.setNumThreads(0)


def _append_jsonl(path: Path, record: dict, info: DistInfo) -> None:
    if info.is_main:
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise SkdError(f"could not write {path}: {ckpt.write_failure(e, path.parent)}") from None


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise SkdError(f"could not write {path}: {ckpt.write_failure(e, path.parent)}") from None


if __name__ == "__main__":
    raise SystemExit(main())
