"""Training checkpoints: plain dicts, written atomically, read with weights_only=True.

A checkpoint holds everything a run needs to continue exactly where it stopped: the student
(and connector), the discriminator, both optimizers, the GradScaler, the step, the best mIoU,
the flags and the RNG states. Files are `checkpoint_<step>.pth` in the snapshot dir, the newest
`--keep-last` of them kept; `best.pth` (student only) and `final.pth` are kept apart and use
the same format, so `skd-eval --ckpt` and `--teacher-ckpt` read any of them.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import torch

from skd.errors import SkdError
from skd.models.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

FORMAT = 1
_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pth$")


def atomic_save(obj: dict, path: Path) -> None:
    """Write `obj` to `path` so that a kill at any moment leaves either the old or the new file.

    Temporary file in the same folder, flush, fsync, rename, fsync of the folder. A failure
    (full disk, say) removes the temporary file, keeps the previous `path`, and raises SkdError.
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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint is kept" if path.exists() else "no earlier checkpoint exists"
        raise SkdError(f"could not write checkpoint {path}: {e.strerror or e}; {kept}") from None


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
    """The newest checkpoint that loads, skipping (and saying so) any that are corrupt."""
    for _, path in list_checkpoints(snapshot_dir):
        try:
            return path, load_checkpoint(path)
        except SkdError as e:
            log.warning("skipping %s; falling back to an older checkpoint", e)
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
