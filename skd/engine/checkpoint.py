"""The checkpoint format, in one place: writing, reading, resuming. Plain dicts, written
atomically, read with weights_only=True.

A training checkpoint holds everything a run needs to continue exactly where it stopped: the
student network ("model", with "model_config" and "norm_weight"), the connectors, the
discriminator, both optimizers, the GradScaler, the step, the best mIoU, the flags and the RNG
states. Files are `checkpoint_<step>.pth` in the snapshot dir, the newest `--keep-last` of them
kept; `best.pth` and `final.pth` hold the student network only, in the same format, so
`skd-eval --ckpt` and `--teacher-ckpt` read any of them.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from pathlib import Path

import torch

from skd.errors import SkdError
from skd.models import check_model_config
from skd.models.checkpoint import fit_problems, raise_if_unfit, read_checkpoint

log = logging.getLogger(__name__)

FORMAT = 1
_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pth$")
_TMP_RE = re.compile(r"\..+\.pth\.tmp(\d+)")  # atomic_save's temporary files
# A write that failed with less than this free is taken for a full disk.
_NEARLY_FULL = 1 << 20


def atomic_save(obj: dict, path: Path) -> None:
    """Write `obj` to `path` so that a kill at any moment leaves either the old or the new file.

    Temporary file in the same folder, flush, fsync, rename, fsync of the folder. A failure
    (full disk, say) removes the temporary file, keeps the previous `path`, and raises SkdError.
    A kill leaves the temporary file; `remove_stale_temp_files` deletes it on the next start.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    # On a full disk torch.save's zip writer raises RuntimeError ("unexpected pos ..."), not OSError.
    except (OSError, RuntimeError) as e:
        reason = write_failure(e, path.parent)  # before the unlink frees the space again
        tmp.unlink(missing_ok=True)
        raise SkdError(f"could not write checkpoint {path}: {reason}; {_what_is_kept(path)}") from None


def _what_is_kept(path: Path) -> str:
    if path.exists():
        return "the previous checkpoint is kept"
    older = list_checkpoints(path.parent)
    if older:
        return f"the newest earlier checkpoint, {older[0][1].name}, is kept (--resume auto continues from it)"
    return "no earlier checkpoint exists"


def write_failure(exc: BaseException, folder: Path) -> str:
    """Why a write into `folder` failed, for a one-line message.

    "no space left on device (N bytes free in FOLDER)" when the error or one it replaced is
    ENOSPC/EDQUOT, or when the file system is (nearly) full, since torch.save reports a full disk
    as a RuntimeError of its zip writer; otherwise "the write failed (<first line of the error>)".
    """
    free = _free_bytes(folder)
    no_space = "no space left on device" + (f" ({free} bytes free in {folder})" if free is not None else "")
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return no_space
        e = e.__cause__ or e.__context__
    if free is not None and free < _NEARLY_FULL:
        return no_space
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"the write failed ({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def remove_stale_temp_files(snapshot_dir: Path) -> list[Path]:
    """Delete the temporary files `atomic_save` left in `snapshot_dir` when its process was killed.

    They are `.<name>.pth.tmp<pid>` (as large as a checkpoint); one whose process is still alive
    (another run writing into the same folder) is kept, with a warning. Returns the removed paths.
    """
    removed = []
    for p in sorted(Path(snapshot_dir).glob(".*.pth.tmp*")):
        m = _TMP_RE.fullmatch(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint (weights_only); any failure is one SkdError naming the file."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("skd_format") is None:
        raise SkdError(f"{path}: not an skd training checkpoint (no 'skd_format' key)")
    return obj


def list_checkpoints(snapshot_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the numbered checkpoints, newest first."""
    found = []
    for p in Path(snapshot_dir).glob("checkpoint_*.pth"):
        m = _CKPT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def find_resumable(snapshot_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, skipping (and saying so) any that are corrupt.

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


def rotate(snapshot_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` numbered checkpoints."""
    for _, path in list_checkpoints(snapshot_dir)[keep_last:]:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
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


# --- the format -------------------------------------------------------------------------------

def save_training_state(path: Path, step: int, models, best_miou: float, args) -> None:
    """Everything `resume` reads, for `models` (a skd.engine.steps.Training) after `step` steps."""
    from skd.options import args_to_dict
    student, critic = models.raw_student, models.raw_critic
    state = {
        "skd_format": FORMAT, "step": step, "model": student.net.state_dict(),
        "model_config": student.net.config(), "norm_weight": "plain", "optimizer": models.opt_g.state_dict(),
        "best_miou": best_miou, "args": args_to_dict(args), "rng": rng_state(),
    }
    if len(student.connectors):
        state["connectors"] = {name: c.state_dict() for name, c in student.connectors.items()}
    if critic is not None:
        state["disc"] = critic.disc.state_dict()
        state["opt_d"] = models.opt_d.state_dict()
    if models.scaler is not None:
        state["scaler"] = models.scaler.state_dict()
    atomic_save(state, path)


def save_model(path: Path, net, step: int, miou: float | None) -> None:
    """Student network only (best.pth, final.pth), in the training-checkpoint format."""
    atomic_save({"skd_format": FORMAT, "step": step, "model": net.state_dict(), "model_config": net.config(),
                 "norm_weight": "plain", "miou": miou}, path)


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

    Every entry the run's models need must be there: a checkpoint of a run without --ho (no
    discriminator) or without a connector is refused, naming the entry.
    """
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
