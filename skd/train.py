"""skd-train: train a PSPNet, supervised or distilled (python -m skd.train, or under torchrun).

`main` parses the flags and `run` is the loop: build (skd.engine.build), resume
(skd.engine.checkpoint), then per step the poly lr, `train_step`, the logs, validation and
checkpoints. Everything the run reads is validated before the first step.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from skd.config import config_text, dump_config, parse_with_config
from skd.engine import checkpoint as ckpt
from skd.engine import rundir
from skd.engine.build import (CheckedDataset, build_train_loader, build_train_set, build_training, build_val_set,
                              compile_forwards)
from skd.engine.distributed import (DistInfo, agree_max, all_reduce_mean, cleanup, gather_to_main,
                                    init_distributed, main_decides)
from skd.engine.evaluate import Inference, evaluate
from skd.engine.runtime import (StopSignals, autocast_factory, configure_runtime, seed_everything, setup_logging,
                                signal_name, stop_signals_blocked)
from skd.engine.steps import NonFiniteLoss, StepConfig, StepResult, Training, train_step
from skd.errors import SkdError, cli
from skd.integrity import fingerprint
from skd.io import append_line, write_text_atomic
from skd.metrics import format_table
from skd.models import count_parameters
from skd.options import (RESUME_SAFE, args_to_dict, check_train_args, resolve_dataset, resolve_distill_defaults,
                         train_parser)
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
        rundir.release(args.snapshot_dir)
        cleanup()


@dataclass(frozen=True)
class Plan:
    """What rank 0 decided at start-up, for every rank: the checkpoint to resume from (None: from
    scratch), the run that owns the snapshot dir, and the fingerprints of the files it reads."""

    resume: Path | None
    owner: rundir.RunOwner
    fingerprints: dict[str, str]


def run(args, info: DistInfo, device: torch.device, parser: argparse.ArgumentParser | None = None) -> int:
    stop = StopSignals()  # from the start: a signal during set-up must not kill the run half-made
    try:
        return _run(args, info, device, stop, parser or train_parser())
    finally:
        stop.restore()


def _run(args, info: DistInfo, device: torch.device, stop: StopSignals, parser: argparse.ArgumentParser) -> int:
    setup_logging(info.is_main)
    resolve_distill_defaults(args)
    resolve_dataset(args, train_split="train", val_split="val")
    check_train_args(args, info.world_size)
    if args.tensorboard:
        require_tensorboard()  # before anything is built: a missing package fails in a second
    # One run per snapshot dir, for its whole life (rank 0 holds the lock for all ranks).
    main_decides(lambda: rundir.acquire(args.snapshot_dir))
    seed_everything(args.seed + info.rank, args.deterministic)
    configure_runtime(args)
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
    if args.max_val_images > len(val_set):
        raise SkdError(f"--max-val-images {args.max_val_images}: the validation set has only {len(val_set)} "
                       f"images; pass at most {len(val_set)}, or 0 for all")
    val_set = CheckedDataset(val_set, args.num_classes)

    models, inits = build_training(args, cfg, device)
    _log_models(models, inits, cfg)

    loaded: dict[Path, dict] = {}  # the checkpoint rank 0 read while planning, not read twice
    plan = main_decides(lambda: _plan(args, loaded))
    start_step, best_miou, pending_validation = _resume(args, models, plan, info, loaded)

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
    # The resolved configuration beside the checkpoints (--config FILE reads it back).
    main_decides(lambda: dump_config(args, args.snapshot_dir / "config.json", parser))
    tb = TensorBoardLogger(args.snapshot_dir / "tensorboard") if args.tensorboard and info.is_main else None
    out = _Outputs(args, info, plan, models, tb)

    if pending_validation:  # stopped by a signal at a step whose validation had not run
        best_miou = _validate(models, val_set, args, info, device, how, start_step, best_miou,
                              start_step == args.num_steps, out)
    signum = agree_max(stop.signum, device)
    if signum:
        log.warning("%s before the first step: nothing to checkpoint, exiting", signal_name(signum))
        return 128 + signum
    window = WindowMean()
    skipped = 0
    step = start_step
    models.student.train()
    bar = tqdm(total=args.num_steps, initial=start_step, desc="train",
               disable=not (info.is_main and args.progress), dynamic_ncols=True)
    t0, logged_at = time.time(), start_step
    batches = None
    try:
        with stop_signals_blocked():  # the workers fork now; they start with the stop signals held
            batches = iter(loader)
        for image, label, _ in batches:
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
                log.warning("step %d: %s; step skipped (%d of %d allowed)", step + 1, e, skipped,
                            args.skip_nonfinite)
                out.record({"step": step + 1, "skipped": str(e)})
            step += 1
            bar.update(1)
            last = step == args.num_steps
            # Every rank stops at the same step: a signal to any one of them stops all.
            signum = agree_max(stop.signum, device)

            if step % args.log_every == 0 or last or signum:
                means = all_reduce_mean(window.pop(), device)
                if means:
                    rec = {"step": step, "lr_g": lr_g, **({"lr_d": lr_d} if cfg.ho else {}), **means,
                           "sec_per_step": (time.time() - t0) / (step - logged_at)}
                    out.record(rec)
                    shown = {k: means[k] for k in (*cfg.student_terms, "loss") if k in means}
                    bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
                    if not args.progress:
                        log.info("step %d/%d lr %.5f %s", step, args.num_steps, lr_g,
                                 " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
                t0, logged_at = time.time(), step

            due = bool(args.eval_every and step % args.eval_every == 0) or step in eval_steps or last
            if due and not signum:
                best_miou = _validate(models, val_set, args, info, device, how, step, best_miou, last, out)
                due = False
                signum = agree_max(stop.signum, device)  # a validation can take minutes
            if signum:
                # Checkpoint now; a validation still due at this step is the resumed run's first
                # task (a scheduler's grace period is short).
                out.checkpoint(step, best_miou, validated=not due)
                if info.is_main:
                    by = "" if stop.signum else " (received by another rank)"
                    log.warning("%s%s: checkpoint written at step %d, exiting; --resume auto continues from it",
                                signal_name(signum), by, step)
                return 128 + signum
            if step % args.save_every == 0 or last:
                out.checkpoint(step, best_miou)
    finally:
        batches = None  # the loader's workers end here, however the loop ended
    bar.close()
    if tb is not None:
        tb.close()
    check_finite_weights(models.raw_student, f"step {step}, final.pth")
    main_decides(lambda: ckpt.save_model(args.snapshot_dir / "final.pth", models.net, step, None,
                                         plan.owner.run_id))
    log.info("done: best val mIoU %.2f%%; checkpoints in %s", 100 * best_miou, args.snapshot_dir)
    return 0


class _Outputs:
    """What the loop writes: numbered checkpoints (every rank's random state gathered into each),
    best.pth, final.pth, metrics.jsonl (and the same records as TensorBoard events with
    --tensorboard), val_final.json. Rank 0 writes; a failure is raised on every rank
    (skd.engine.distributed.main_decides), so all of them stop at the same point."""

    def __init__(self, args, info: DistInfo, plan: Plan, models: Training, tb: TensorBoardLogger | None = None):
        self.args, self.info, self.plan, self.models, self.tb = args, info, plan, models, tb
        self.metrics = args.snapshot_dir / "metrics.jsonl"
        self.saved_at = -1

    def record(self, rec: dict) -> None:
        main_decides(lambda: append_line(self.metrics, json.dumps(rec)))
        if self.tb is not None:
            self.tb.log(rec)

    def checkpoint(self, step: int, best_miou: float, validated: bool = True) -> None:
        """checkpoint_<step>.pth; `validated` False: a validation due at this step has not run."""
        if step == self.saved_at:
            return
        # on every rank, so that all of them stop together
        check_finite_weights(self.models.raw_student, f"step {step}, checkpoint")
        if self.models.raw_critic is not None:
            check_finite_weights(self.models.raw_critic, f"step {step}, checkpoint (discriminator)")
        rngs = gather_to_main(ckpt.rng_state())

        def write() -> None:
            ckpt.save_training_state(self.args.snapshot_dir / f"checkpoint_{step:06d}.pth", step, self.models,
                                     best_miou, self.args, run_id=self.plan.owner.run_id, rng_per_rank=rngs,
                                     fingerprints=self.plan.fingerprints, validated=validated)
            ckpt.rotate(self.args.snapshot_dir, self.args.keep_last, self.plan.owner)
        main_decides(write)
        self.saved_at = step

    def best(self, step: int, miou: float) -> None:
        main_decides(lambda: ckpt.save_model(self.args.snapshot_dir / "best.pth", self.models.net, step, miou,
                                             self.plan.owner.run_id))

    def final_summary(self, summary: dict) -> None:
        main_decides(lambda: write_text_atomic(self.args.snapshot_dir / "val_final.json",
                                               json.dumps(summary, indent=2)))


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


def _plan(args, loaded: dict) -> Plan:
    """Rank 0, before any step: which checkpoint to resume from (if any) and whether its flags
    may continue; whose files the snapshot dir holds and what this run may do with them."""
    folder = args.snapshot_dir
    ckpt.remove_stale_temp_files(folder)
    fingerprints = {"teacher_ckpt": fingerprint(args.teacher_ckpt)} if args.teacher_ckpt is not None else {}
    found = None
    if args.resume == "auto":
        found = ckpt.find_resumable(folder)
        if found is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", folder)
    elif args.resume:
        path = Path(args.resume)
        found = path, _flagged(lambda: ckpt.load_checkpoint(path), "--resume")
    owner, step = rundir.RunOwner(rundir.new_run_id()), None
    if found is not None:
        path, state = found
        loaded[path] = state
        ckpt.check_training_entries(state, path)
        step = state["step"]
        _check_recipe(args, path, state, fingerprints)
        owner = rundir.RunOwner(state.get("run_id") or rundir.new_run_id(), legacy=state.get("run_id") is None)
    # --resume auto skipped every numbered checkpoint newer than the one it took (damaged or
    # unreadable): the run writes over them when it gets there.
    skipped = {p for s, p in ckpt.list_checkpoints(folder) if args.resume == "auto" and step is not None and s > step}
    peeked = {}
    for p in ckpt.run_files(folder):
        seen = None if p in skipped else ckpt.peek(p)
        if seen is None and found is not None:
            continue
        peeked[p] = seen or (None, None)
    others = rundir.earlier_files(folder, owner if found is not None else None, step, peeked)
    rundir.refuse_or_remove(folder, others, args.overwrite, resuming=found is not None,
                            can_resume=args.resume is None)
    if found is not None:
        _trim_log(folder / "metrics.jsonl", step)
    return Plan(found[0] if found is not None else None, owner, fingerprints)


def _flagged(load, flag: str):
    """`load()`, with its SkdError prefixed by `flag` (the file's own name is in the message)."""
    try:
        return load()
    except SkdError as e:
        raise SkdError(f"{flag} {e}") from None


def _check_recipe(args, path: Path, state: dict, fingerprints: dict[str, str]) -> None:
    """Refuse a resume whose flags change what is trained (naming each flag, old -> new), or
    whose step is past --num-steps; log the changes that are allowed."""
    step = state["step"]
    if step > args.num_steps:
        raise SkdError(f"--resume {path}: the checkpoint is at step {step}, past --num-steps {args.num_steps}; "
                       f"pass --num-steps {step} or more")
    saved = state.get("args") or {}
    now = args_to_dict(args)
    parser = train_parser()
    defaults = args_to_dict(argparse.Namespace(**{k: parser.get_default(k) for k in now}))
    old_fp = (state.get("fingerprints") or {}).get("teacher_ckpt")
    same_file = {"teacher_ckpt": old_fp is not None and old_fp == fingerprints.get("teacher_ckpt")}
    allowed = set(now) if "all" in args.allow_change else set(args.allow_change)
    refused, notes = ckpt.recipe_changes(saved, now, defaults=defaults, safe=RESUME_SAFE, allowed=allowed,
                                         step=step, same_file=same_file)
    if refused:
        names = " ".join(c.split()[0].lstrip("-") for c in refused)
        raise SkdError(f"--resume {path}: the checkpoint was trained with other flags: {'; '.join(refused)}; "
                       f"resume with the checkpoint's values, or pass --allow-change {names} to continue with "
                       f"the new ones (the run is then no longer the one the checkpoint started)")
    if notes:
        log.info("--resume: flags changed since the checkpoint, allowed: %s", "; ".join(notes))


def _trim_log(path: Path, step: int) -> None:
    """Drop the metrics.jsonl records after `step` (the steps a resumed run does again), so the
    log holds each step once."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as e:
        raise SkdError(f"{path}: cannot be read ({e}); move it away to resume") from None
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a partial line, left by a kill mid-append
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        log.info("%s: removed %d record(s) after step %d, which this run does again", path,
                 len(lines) - len(kept), step)


def _resume(args, models: Training, plan: Plan, info: DistInfo, loaded: dict) -> tuple[int, float, bool]:
    """(start step, best mIoU, whether the validation due at that step is still to run) after
    --resume, or (0, -1, False) for a fresh run; every rank loads the checkpoint rank 0 chose and
    takes back its own random state."""
    if plan.resume is None:
        return 0, -1.0, False
    path = plan.resume
    state = loaded.get(path) or _flagged(lambda: ckpt.load_checkpoint(path), "--resume")
    step, best = ckpt.resume(models, path, state)
    changed = ckpt.restore_rng(state, info.rank, info.world_size, args.seed)
    if changed and info.is_main:
        log.warning("--resume %s: %s", path, changed)
    log.info("resumed from %s at step %d", path, step)
    return step, best, state.get("validated") is False


def _validate(models: Training, val_set, args, info: DistInfo, device, how: Inference, step: int, best_miou: float,
              last: bool, out: _Outputs) -> float:
    """Validate the student at `step`; write best.pth when it is the best so far. Returns the best."""
    conf = evaluate(models.raw_student.net, val_set, device=device, num_classes=args.num_classes, how=how,
                    rank=info.rank, world_size=info.world_size, max_images=args.max_val_images)
    if int(conf.mat.sum()) == 0:
        raise SkdError(f"step {step}, validation: the {args.max_val_images or len(val_set)} image(s) of "
                       f"{args.val_list or '--val-split ' + args.val_split} hold no labelled pixel (every label "
                       f"is 255, ignore), so the mIoU would be 0; validate on a labelled split")
    summary = conf.summary(val_set.info.class_names)
    miou = summary["mIoU"]
    out.record({"step": step, "val": summary})
    log.info("step %d: val mIoU %.2f%%", step, 100 * miou)
    if miou > best_miou:
        best_miou = miou
        check_finite_weights(models.raw_student, f"step {step}, best.pth")
        out.best(step, miou)
    if last:
        out.final_summary(summary)
        if info.is_main:
            log.info("validation at step %d:\n%s", step, format_table(summary))
    return best_miou


if __name__ == "__main__":
    raise SystemExit(main())
