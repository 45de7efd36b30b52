"""skd-train: train a PSPNet, supervised or distilled (python -m skd.train, or under torchrun).

`main` parses the flags and `run` is the loop: build (skd.engine.build), resume
(skd.engine.checkpoint), then per step the poly lr, `train_step`, the logs, validation and
checkpoints. Everything the run reads is validated before the first step.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from skd.config import config_text, dump_config, parse_with_config
from skd.engine import checkpoint as ckpt
from skd.engine.build import build_train_loader, build_train_set, build_training, build_val_set, compile_forwards
from skd.engine.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from skd.engine.evaluate import Inference, evaluate
from skd.engine.runtime import autocast_factory, cli, configure_numerics, seed_everything, setup_logging
from skd.engine.steps import NonFiniteLoss, StepConfig, StepResult, Training, train_step
from skd.errors import SkdError
from skd.metrics import format_table
from skd.models import count_parameters
from skd.options import check_train_args, resolve_dataset, resolve_distill_defaults, train_parser
from skd.parallel import process_group_active, rank
from skd.tensorboard import TensorBoardLogger, require_tensorboard

log = logging.getLogger("skd.train")


def poly_lr(base: float, step: int, num_steps: int, power: float) -> float:
    """lr = base * (1 - step / num_steps) ** power (the original's schedule).

    The loop passes the 1-based number of the step about to run, as the original does (its
    train_and_eval.py line 21 enumerates the loader from last_step + 1 = 1): the first step runs
    at base * (1 - 1/N)^power and the last at 0."""
    return base * (1 - step / num_steps) ** power


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """SkdError naming the first parameter or buffer of `module` holding NaN/Inf: a diverged
    model is never written over the last good checkpoint, and the run does not end with status 0."""
    for name, value in module.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SkdError(f"{what}: {name} is not finite (NaN/Inf); the model diverged, so it is not "
                           f"written (the last good checkpoint is kept); lower --lr-g or check the data")


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._set)

    def _set(self, signum, _frame):
        self.signum = signum


class WindowMean:
    """Each logged value averaged over the steps since the last log (skipped steps left out)."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0

    def add(self, result: StepResult) -> None:
        for k, v in result.weighted.items():
            self.sums[k] += v
        for k, v in result.raw.items():
            self.sums[f"{k}_raw"] += v
        self.sums["loss"] += result.loss
        self.steps += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.steps for k, v in self.sums.items()} if self.steps else {}
        self.sums.clear()
        self.steps = 0
        return means


@cli
def main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    args = parse_with_config(parser, argv, exit_on_print=False)
    if args.print_config:  # the resolved configuration, without training
        resolve_distill_defaults(args)
        resolve_dataset(args, train_split="train", val_split="val")
        print(config_text(args, parser, fmt="json"), end="")  # JSON is YAML too: --config reads it back
        return 0
    info, device = init_distributed(args.device)
    try:
        return run(args, info, device, parser)
    finally:
        cleanup()


def run(args, info: DistInfo, device: torch.device, parser=None) -> int:
    setup_logging(info.is_main)
    resolve_distill_defaults(args)
    resolve_dataset(args, train_split="train", val_split="val")
    check_train_args(args, info.world_size)
    if args.tensorboard:
        require_tensorboard()  # before anything is built: a missing package fails in a second
    seed_everything(args.seed + info.rank, args.deterministic)
    configure_numerics(args.tf32)
    autocast = autocast_factory(args.amp, device)
    cfg = StepConfig.from_args(args, info.world_size)

    # Data: every file the run will read is checked before the first step.
    train_set = build_train_set(args)
    val_set = build_val_set(args)
    if info.is_main:
        train_set.check_files()
        val_set.check_files()
    if len(train_set) < args.batch_size:
        raise SkdError(f"--data-dir {args.data_dir}: {len(train_set)} training images, fewer than "
                       f"--batch-size {args.batch_size}")

    models, inits = build_training(args, cfg, device)
    _log_models(models, inits, cfg)

    tb = None
    if info.is_main:
        ckpt.remove_stale_temp_files(args.snapshot_dir)
        dump_config(args, args.snapshot_dir / "config.json", parser or train_parser())
        tb = TensorBoardLogger(args.snapshot_dir / "tensorboard") if args.tensorboard else None
    start_step, best_miou = _resume(args, models)

    if args.compile:
        compile_forwards(models)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        models.student = DDP(models.student, device_ids=ids)
        if models.critic is not None:
            models.critic = DDP(models.critic, device_ids=ids)
    loader = build_train_loader(train_set, args, info, device, start_step)
    how = Inference(crop=args.input_size, autocast=autocast, channels_last=args.channels_last)
    eval_steps = set(args.eval_at)

    metrics_log = args.snapshot_dir / "metrics.jsonl"
    stop = StopFlag()
    window = WindowMean()
    skipped = 0
    step = start_step
    models.student.train()
    bar = tqdm(total=args.num_steps, initial=start_step, desc="train",
               disable=not (info.is_main and args.progress), dynamic_ncols=True)
    t0, logged_at = time.time(), start_step
    for image, label, _ in loader:
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        lr_g = poly_lr(args.lr_g, step + 1, args.num_steps, args.power)
        lr_d = poly_lr(args.lr_d, step + 1, args.num_steps, args.power)
        set_lr(models.opt_g, lr_g)
        if models.opt_d is not None:
            set_lr(models.opt_d, lr_d)
        try:
            window.add(train_step(image, label, models=models, cfg=cfg, autocast=autocast,
                                  channels_last=args.channels_last))
        except NonFiniteLoss as e:
            # train_step has left the models as they were; the step counts, as in the data order.
            skipped += 1
            if skipped > args.skip_nonfinite:
                raise SkdError(f"step {step + 1}: {e}; stopping (the last good checkpoint is kept; "
                               f"--skip-nonfinite N skips up to N such steps)") from None
            log.warning("step %d: %s; step skipped (%d of %d allowed)", step + 1, e, skipped, args.skip_nonfinite)
            _append_jsonl(metrics_log, {"step": step + 1, "skipped": str(e)}, info)
        step += 1
        bar.update(1)
        last = step == args.num_steps

        if step % args.log_every == 0 or last:
            means = all_reduce_mean(window.pop(), device)
            if means:
                rec = {"step": step, "lr_g": lr_g, **({"lr_d": lr_d} if cfg.ho else {}), **means,
                       "sec_per_step": (time.time() - t0) / (step - logged_at)}
                _append_jsonl(metrics_log, rec, info)
                if tb is not None:
                    tb.log(rec)
                shown = {k: means[k] for k in (*cfg.student_terms, "loss") if k in means}
                bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
                if not args.progress:
                    log.info("step %d/%d lr %.5f %s", step, args.num_steps, lr_g,
                             " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
            t0, logged_at = time.time(), step

        if (args.eval_every and step % args.eval_every == 0) or step in eval_steps or last:
            best_miou, summary = _validate(models, val_set, args, info, device, how, step, best_miou, last,
                                           metrics_log)
            if tb is not None:
                tb.log_validation(step, summary)

        if step % args.save_every == 0 or last or stop.signum:
            # on every rank, so that all of them stop together
            check_finite_weights(models.raw_student, f"step {step}, checkpoint")
            if models.raw_critic is not None:
                check_finite_weights(models.raw_critic, f"step {step}, checkpoint (discriminator)")
            if info.is_main:
                ckpt.save_training_state(args.snapshot_dir / f"checkpoint_{step:06d}.pth", step, models,
                                         best_miou, args)
                ckpt.rotate(args.snapshot_dir, args.keep_last)
        if stop.signum:
            log.warning("signal %d: checkpoint written at step %d, exiting", stop.signum, step)
            return 128 + stop.signum
    bar.close()
    if tb is not None:
        tb.close()
    check_finite_weights(models.raw_student, f"step {step}, final.pth")
    if info.is_main:
        ckpt.save_model(args.snapshot_dir / "final.pth", models.net, step, None)
        log.info("done: best val mIoU %.2f%%; checkpoints in %s", 100 * best_miou, args.snapshot_dir)
    return 0


def _log_models(models: Training, inits: dict[str, str], cfg: StepConfig) -> None:
    log.info("student: %s parameters; initialised from %s", f"{count_parameters(models.net):,}", inits["student"])
    if models.teacher is not None:
        log.info("teacher: %s parameters; loaded from %s",
                 f"{count_parameters(models.teacher, trainable_only=False):,}", inits["teacher"])
    for name, init in inits.items():
        if name not in ("student", "teacher"):
            log.info("%s: initialised %s", name, init)
    if models.critic is not None:
        log.info("discriminator: %s trainable parameters", f"{count_parameters(models.critic):,}")
    log.info("losses: %s", " + ".join(cfg.student_terms))


def _resume(args, models: Training) -> tuple[int, float]:
    """(start step, best mIoU) after --resume, or (0, -1) for a fresh run."""
    found = None
    if args.resume == "auto":
        found = ckpt.find_resumable(args.snapshot_dir)
        if found is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", args.snapshot_dir)
    elif args.resume:
        found = (Path(args.resume), ckpt.load_checkpoint(Path(args.resume)))
    if found is None:
        return 0, -1.0
    path, state = found
    step, best = ckpt.resume(models, path, state)
    if process_group_active():
        torch.manual_seed(args.seed + rank() + 1000003 * step)
    else:
        ckpt.set_rng_state(state["rng"])
    log.info("resumed from %s at step %d", path, step)
    return step, best


def _validate(models: Training, val_set, args, info: DistInfo, device, how: Inference, step: int, best_miou: float,
              last: bool, metrics_log: Path) -> tuple[float, dict]:
    """Validate the student at `step`; write best.pth when it is the best so far. Returns the
    best mIoU so far and this validation's summary."""
    conf = evaluate(models.raw_student.net, val_set, device=device, num_classes=args.num_classes, how=how,
                    rank=info.rank, world_size=info.world_size, max_images=args.max_val_images)
    summary = conf.summary(val_set.info.class_names)
    miou = summary["mIoU"]
    _append_jsonl(metrics_log, {"step": step, "val": summary}, info)
    log.info("step %d: val mIoU %.2f%%", step, 100 * miou)
    if miou > best_miou:
        best_miou = miou
        check_finite_weights(models.raw_student, f"step {step}, best.pth")
        if info.is_main:
            ckpt.save_model(args.snapshot_dir / "best.pth", models.net, step, miou)
    if last and info.is_main:
        _write_text(args.snapshot_dir / "val_final.json", json.dumps(summary, indent=2))
        log.info("validation at step %d:\n%s", step, format_table(summary))
    return best_miou, summary


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
