"""The checkpoint format, in one place: writing, reading, resuming. Plain dicts, written
atomically (skd.io), checked for bit rot before they are read (skd.integrity.verify), read with
weights_only=True.

A training checkpoint holds everything a run needs to continue exactly where it stopped: the
student network ("model", with "model_config" and "norm_weight"), the connectors, the
discriminator, both optimizers, the GradScaler, the step, the best mIoU, the flags ("args",
compared on resume by `recipe_changes`), every rank's random state ("rng_per_rank"; "rng" is
rank 0's), the run id of the run that wrote it ("run_id": rotation removes only that run's
files), the fingerprints of the files it read, and whether the validation due at its step ran.
Files are `checkpoint_<step>.pth` in the snapshot dir, the newest `--keep-last` of the run kept;
`best.pth` and `final.pth` hold the student network only ("weights only"), in the same format, so
`skd-eval --ckpt` and `--teacher-ckpt` read any of them.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from skd.errors import SkdError
from skd.models import check_model_config
from skd.io import atomic_writer, stale_temp_files
from skd.models.checkpoint import fit_problems, raise_if_unfit, read_checkpoint

log = logging.getLogger(__name__)

FORMAT = 1
_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pth$")
# What `resume` reads; best.pth and final.pth ("weights only") have just the model and its step.
TRAINING_ENTRIES = ("step", "model", "optimizer", "best_miou", "args", "rng")


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save `obj` to `path` so that a kill at any moment leaves either the old or the new file.

    skd.io.atomic_writer: a temporary file in the same folder (exclusive, no symlink followed,
    unpredictable name), flush, fsync, rename, fsync of the folder. A failure (full disk, say)
    removes the temporary file, keeps the previous `path`, and raises SkdError saying which
    checkpoint is kept. A kill leaves the temporary file; `remove_stale_temp_files` deletes it on
    the next start.
    """
    # On a full disk torch.save's zip writer raises RuntimeError ("unexpected pos ..."), not
    # OSError; atomic_writer takes both for a failed write.
    with atomic_writer(Path(path), "checkpoint ", kept=_what_is_kept) as f:
        torch.save(obj, f)


def _what_is_kept(path: Path) -> str:
    if path.exists():
        return "the previous checkpoint is kept"
    older = list_checkpoints(path.parent)
    if older:
        return f"the newest earlier checkpoint, {older[0][1].name}, is kept (--resume auto continues from it)"
    return "no earlier checkpoint exists"


def remove_stale_temp_files(snapshot_dir: Path) -> list[Path]:
    """Delete the temporary files skd's writers left in `snapshot_dir` when their process was killed.

    They are `.<name>.<random>.tmp<pid>` (as large as a checkpoint); one whose process is still
    alive is kept, with a warning. Returns the removed paths.
    """
    removed = []
    for p, pid, alive in stale_temp_files(snapshot_dir):
        if alive:
            log.warning("keeping %s: process %d, which may be writing it, is running; delete the file "
                        "if no other run writes into %s", p, pid, snapshot_dir)
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            continue
        log.info("removed %s (%s bytes), left by a run killed while saving", p, f"{size:,}")
        removed.append(p)
    return removed


def load_checkpoint(path: Path) -> dict:
    """Read an skd checkpoint (read_checkpoint checks its integrity first: every zip entry's
    CRC-32), weights_only; any failure is one SkdError naming the file."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("skd_format") is None:
        raise SkdError(f"{path}: not an skd training checkpoint (no 'skd_format' key)")
    return obj


def check_training_entries(state: dict, path: Path, flag: str = "--resume") -> None:
    """SkdError unless `state` has every entry `resume` reads (TRAINING_ENTRIES): a weights-only
    file (best.pth, final.pth) is named as one, anything else lists what it lacks."""
    missing = [k for k in TRAINING_ENTRIES if k not in state]
    if not missing:
        return
    if "model" in state and "optimizer" not in state:
        raise SkdError(f"{flag} {path}: a weights-only file (the student network, as best.pth and final.pth "
                       f"are), not a training checkpoint: it has no optimizer, step counter or random state to "
                       f"continue from; resume from a checkpoint_<step>.pth, or pass it as --restore-from to "
                       f"start a new run from these weights")
    raise SkdError(f"{flag} {path}: not a complete training checkpoint: no {', '.join(map(repr, missing))} "
                   f"entr{'y' if len(missing) == 1 else 'ies'}; resume from a checkpoint_<step>.pth that skd-train wrote")


def peek(path: Path) -> tuple[str | None, int | None] | None:
    """(run id, step) of a checkpoint without reading its tensors (memory-mapped load), or None
    when it cannot be read at all. A file written before checkpoints carried a run id gives
    (None, step)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file: not this run's to rotate or to trust
        return None
    if not isinstance(obj, dict):
        return None
    step = obj.get("step")
    return obj.get("run_id"), step if isinstance(step, int) else None


def run_files(snapshot_dir: Path) -> list[Path]:
    """The checkpoints a run leaves in `snapshot_dir`: the numbered ones, best.pth, final.pth."""
    named = [Path(snapshot_dir) / n for n in ("best.pth", "final.pth")]
    return [p for _, p in list_checkpoints(snapshot_dir)] + [p for p in named if p.is_file()]


def list_checkpoints(snapshot_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the numbered checkpoints, newest first."""
    found = []
    for p in Path(snapshot_dir).glob("checkpoint_*.pth"):
        m = _CKPT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def find_resumable(snapshot_dir: Path) -> tuple[Path, dict] | None:
    """The newest numbered checkpoint that loads intact, skipping (and saying so) any that are
    truncated, damaged (a CRC-32 mismatch) or corrupt.

    None when `snapshot_dir` holds no numbered checkpoint; SkdError listing each one and why it
    cannot be loaded when there are some but none is intact, since starting from scratch would
    silently throw away the run they belong to.
    """
    found = list_checkpoints(snapshot_dir)
    problems = []
    for _, path in found:
        try:
            state = load_checkpoint(path)
        except SkdError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            log.warning("--resume auto: skipping %s; falling back to %s", problem, path.name)
        return path, state
    if problems:
        raise SkdError(f"--resume auto: none of the {len(problems)} checkpoint(s) in {snapshot_dir} can be "
                       f"loaded: {'; '.join(problems)}; move them out of {snapshot_dir} to start from "
                       f"scratch, or pass --resume PATH of an intact checkpoint")
    return None


def rotate(snapshot_dir: Path, keep_last: int, owner=None) -> list[Path]:
    """Delete all but the newest `keep_last` numbered checkpoints of the run `owner` (a
    skd.engine.rundir.RunOwner): a checkpoint of another run, or one that cannot be read, is
    neither counted nor removed. owner None: every numbered checkpoint counts (no run ids).
    Returns the removed paths."""
    kept, removed = 0, []
    for _, path in list_checkpoints(snapshot_dir):
        if owner is not None:
            seen = peek(path)
            if seen is None or not owner.owns(seen[0]):
                continue
        kept += 1
        if kept > keep_last:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --- random state -----------------------------------------------------------------------------

def rng_state() -> dict:
    """This process's random state: torch's CPU generator, Python's, and CUDA's when in use."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    # weights_only gives lists back where random.getstate() had tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng(state: dict, rank: int, world_size: int, seed: int) -> str | None:
    """Give this rank the random state it had when `state` was saved.

    The checkpoint holds one state per rank ("rng_per_rank", gathered by rank 0 at save time;
    older checkpoints only rank 0's, "rng"). When the number of processes has changed, no rank
    can take over another's stream: each is re-seeded from (seed, rank, step) and the returned
    sentence says what that changes; None when the states were restored exactly.
    """
    states = state.get("rng_per_rank") or [state["rng"]]
    if len(states) == world_size:
        set_rng_state(states[rank])
        return None
    torch.manual_seed(seed + rank + 1000003 * state["step"])
    random.seed(seed + rank + 1000003 * state["step"])
    return (f"the checkpoint was written by {len(states)} process(es), this run has {world_size}: the data "
            f"order and augmentation continue exactly (the sampler splits the same global batches), but each "
            f"rank's random stream (dropout masks, the gradient penalty's mixing weights) is re-seeded and "
            f"each rank takes another share of the global batch (per-rank batch-norm statistics change unless "
            f"--norm syncbn), so the run is not the uninterrupted one bit for bit")


# --- the format -------------------------------------------------------------------------------

# The flags of the student network's shape (skd.models.build_model's keys): a resume that changes
# them is refused by load_model_state, with the file's and the run's values.
NETWORK_FLAGS = ("arch", "head", "variant", "width_mult", "stem", "num_classes")


def save_training_state(path: Path, step: int, models, best_miou: float, args, *, run_id: str | None = None,
                        rng_per_rank: list[dict] | None = None, fingerprints: Mapping[str, str] | None = None,
                        validated: bool = True) -> None:
    """Everything `resume` reads, for `models` (a skd.engine.steps.Training) after `step` steps.

    run_id: the run writing it (rotation removes only its own); rng_per_rank: every rank's
    random state, rank 0's first (default: this process's only); fingerprints: what the files
    the run reads hold (skd.integrity.fingerprint, by flag dest), compared on resume; validated:
    False when a validation due at `step` has not run (a stop signal came first), so the resumed
    run does it first."""
    from skd.options import args_to_dict
    student, critic = models.raw_student, models.raw_critic
    ranks = rng_per_rank or [rng_state()]
    state = {
        "skd_format": FORMAT, "step": step, "model": student.net.state_dict(),
        "model_config": student.net.config(), "norm_weight": "plain", "optimizer": models.opt_g.state_dict(),
        "best_miou": best_miou, "args": args_to_dict(args), "rng": ranks[0], "rng_per_rank": ranks,
        "run_id": run_id, "fingerprints": dict(fingerprints or {}), "validated": validated,
    }
    if len(student.connectors):
        state["connectors"] = {name: c.state_dict() for name, c in student.connectors.items()}
    if critic is not None:
        state["disc"] = critic.disc.state_dict()
        state["opt_d"] = models.opt_d.state_dict()
    if models.scaler is not None:
        state["scaler"] = models.scaler.state_dict()
    atomic_save(state, path)


def save_model(path: Path, net, step: int, miou: float | None, run_id: str | None = None) -> None:
    """Student network only (best.pth, final.pth), in the training-checkpoint format."""
    atomic_save({"skd_format": FORMAT, "step": step, "model": net.state_dict(), "model_config": net.config(),
                 "norm_weight": "plain", "miou": miou, "run_id": run_id}, path)


# --- the recipe: which flags a resumed run may change -------------------------------------------

def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "(none)"
    return str(value)


def recipe_changes(saved: Mapping[str, Any], now: Mapping[str, Any], *, defaults: Mapping[str, Any],
                   safe: Mapping[str, str | None], allowed: set[str], step: int,
                   same_file: Mapping[str, bool] | None = None) -> tuple[list[str], list[str]]:
    """Compare the flags a checkpoint was trained with (`saved`, its "args") with this run's
    (`now`, both as skd.options.args_to_dict gives them). Returns (refused, notes):

    refused: "--flag OLD -> NEW" for each change that alters what is trained, unless the flag is
    in `allowed` (--allow-change; then it is a note); notes: the changes that are allowed, with
    why. `safe`: the flags that may change (dest -> why; None: allowed without a note). --num-steps may grow (the poly lr is
    then recomputed over the new length); a shorter one is a recipe change. A flag the checkpoint
    does not record (added since) counts as its `defaults` value. `same_file`: for file flags
    whose path changed, whether the content is the same (then a moved file, a note). The flags
    of the network's shape (NETWORK_FLAGS) are not compared here: their weights cannot load into
    another shape, which `load_model_state` reports.
    """
    refused, notes = [], []
    for dest in sorted(now):
        if dest in NETWORK_FLAGS:
            continue  # the network's shape: load_model_state says why it cannot change
        new = now[dest]
        old = saved.get(dest, defaults.get(dest))
        if old == new:
            continue
        change = f"--{dest.replace('_', '-')} {_shown(old)} -> {_shown(new)}"
        if dest in safe:
            if safe[dest] is not None:
                notes.append(f"{change} ({safe[dest]})")
        elif dest == "num_steps" and isinstance(old, int) and new > old:
            notes.append(f"{change} (longer: the poly lr is recomputed over {new} steps from step {step} on)")
        elif (same_file or {}).get(dest):
            notes.append(f"{change} (the same file moved: its content is unchanged)")
        elif dest in allowed:
            notes.append(f"{change} (allowed by --allow-change)")
        else:
            refused.append(change)
    return refused, notes


def load_model_state(net, state: dict, path: Path, flag: str = "--resume") -> None:
    """The student weights of a training checkpoint into `net`; SkdError saying what differs.

    The checkpoint's model_config is compared first (skd.models.check_model_config, naming the
    flags that differ with both values); without one, the first keys that are missing,
    unexpected or of another shape are listed.
    """
    file_config = state.get("model_config")
    if isinstance(file_config, dict):
        check_model_config(file_config, net.config(), f"{flag} {path}",
                           hint="resume with the flags of the run that wrote it")
    if "model" not in state:
        raise SkdError(f"{flag} {path}: the checkpoint has no 'model' entry")
    raise_if_unfit(fit_problems(state["model"], net.state_dict()), f"{flag} {path}", net.describe(),
                   hint="resume with the flags of the run that wrote it, or pass another --resume")
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise SkdError(f"{flag} {path}: does not fit {net.describe()} ({str(e).splitlines()[0]})") from None


def resume(models, path: Path, state: dict) -> tuple[int, float]:
    """Load a training checkpoint into `models` (a skd.engine.steps.Training); (step, best mIoU).

    Every entry the run's models need must be there: a weights-only file is refused as one, and a
    checkpoint of a run without --ho (no discriminator) or without a connector names the entry.
    """
    check_training_entries(state, path)
    student, critic = models.raw_student, models.raw_critic
    load_model_state(student.net, state, path)
    connectors = state.get("connectors", {"cwd": state["connector"]} if "connector" in state else {})
    try:
        models.opt_g.load_state_dict(state["optimizer"])
        for name, module in student.connectors.items():
            if name not in connectors:
                raise KeyError(f"connectors.{name}")
            module.load_state_dict(connectors[name])
        if critic is not None:
            critic.disc.load_state_dict(state["disc"])
            models.opt_d.load_state_dict(state["opt_d"])
        if models.scaler is not None and "scaler" in state:
            models.scaler.load_state_dict(state["scaler"])
        step, best = state["step"], state["best_miou"]
    except KeyError as e:
        raise SkdError(f"--resume {path}: the checkpoint has no {e.args[0]!r} entry; it was saved by a run with "
                       f"other flags (--ho, a connector of --cwd-on) or is not a training checkpoint; resume "
                       f"with that run's flags") from None
    except (RuntimeError, ValueError) as e:
        raise SkdError(f"--resume {path}: does not match this run's models/flags "
                       f"({str(e).splitlines()[0]})") from None
    return step, best
