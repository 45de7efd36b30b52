"""A snapshot dir belongs to one run: who holds it (a lock for the life of the process), which
run its files belong to (a run id in each checkpoint), and what a new run may do with files an
earlier one left.

The lock is `fcntl.flock` on `<snapshot-dir>/run.lock`, taken by skd-train (rank 0 under
torchrun) before anything is written and held until the process ends; the OS releases it however
the process ends, SIGKILL included. Who holds it is in `run.json` (pid, host, start time, command),
written atomically once the lock is taken, so a second run is refused naming the first.
flock works across the hosts of an NFSv4 mount (Linux emulates it with fcntl locks there).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from skd.errors import SkdError
from skd.io import pid_alive, write_text_atomic

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
OWNER_NAME = "run.json"
# What a run writes besides the numbered checkpoints: what --overwrite removes with them.
RUN_FILES = ("best.pth", "final.pth", "metrics.jsonl", "val_final.json")

# File descriptors of the locks this process holds; forked children (DataLoader workers) close
# their copies (`close_inherited_locks`), so a lingering child never keeps a dead run's lock.
_held: dict[Path, int] = {}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class RunOwner:
    """The run writing into a snapshot dir. `legacy`: it resumed from a checkpoint written before
    checkpoints carried a run id, so files without one are taken as its own."""

    run_id: str
    legacy: bool = False

    def owns(self, file_run_id: str | None) -> bool:
        return file_run_id == self.run_id or (file_run_id is None and self.legacy)


def acquire(folder: Path) -> None:
    """Take `folder`'s lock for this process, or raise SkdError naming the run that holds it."""
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        raise SkdError(f"--snapshot-dir {folder}: cannot create its lock file {lock_path} ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SkdError(f"--snapshot-dir {folder}: another run is writing into it ({holder(folder)}); "
                       f"wait for it to end or stop it, or pass another --snapshot-dir") from None
    except OSError as e:
        os.close(fd)
        raise SkdError(f"--snapshot-dir {folder}: cannot lock {lock_path} ({e.strerror}); the file "
                       f"system may not support locks: use a local folder") from None
    _held[folder.resolve()] = fd
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": shlex.join(sys.argv)}
    try:
        write_text_atomic(folder / OWNER_NAME, json.dumps(record, indent=2) + "\n")
    except SkdError:
        release(folder)
        raise


def holder(folder: Path) -> str:
    """Who holds `folder`'s lock, from its run.json, in words."""
    try:
        rec = json.loads((Path(folder) / OWNER_NAME).read_text())
        pid = int(rec["pid"])
        state = "" if pid_alive(pid) or rec.get("host") != socket.gethostname() else ", no longer running"
        return f"pid {pid} on {rec['host']}{state}, started {rec['started']}: {rec['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not in run.json yet"


def release(folder: Path) -> None:
    """Give `folder`'s lock back (the end of the process does it too)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def close_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors (the parent keeps its
    lock; only an explicit unlock, never done here, would release it for both)."""
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


# --- the files of earlier runs -----------------------------------------------------------------

def earlier_files(folder: Path, owner: RunOwner | None, resume_step: int | None,
                  peeked: dict[Path, tuple[str | None, int | None]]) -> list[tuple[Path, str]]:
    """The files in `folder` a run may not write over or mix with: (path, why).

    `peeked`: (run id, step) of each checkpoint in the folder, numbered ones, best.pth and
    final.pth (`skd.engine.checkpoint.peek`). owner None (a fresh run): all of them, and the logs
    of RUN_FILES. A resumed run: those of other runs, and its own from after `resume_step` (a
    later branch of the same run that it would overwrite or mix with step by step).
    """
    found = []
    for path, (rid, step) in sorted(peeked.items()):
        if owner is None:
            found.append((path, "of an earlier run"))
        elif not owner.owns(rid):
            found.append((path, f"of another run, {rid or 'without a run id'}"))
        elif resume_step is not None and step is not None and step > resume_step:
            found.append((path, f"of this run at step {step}, after step {resume_step}"))
    if owner is None:
        found += [(folder / name, "of an earlier run") for name in RUN_FILES[2:] if (folder / name).exists()]
    return found


def refuse_or_remove(folder: Path, found: list[tuple[Path, str]], overwrite: bool, resuming: bool,
                     can_resume: bool = True) -> None:
    """SkdError listing `found` unless `overwrite`, which deletes them (each one logged).
    `resuming`: this run continues a checkpoint; `can_resume`: --resume auto is worth suggesting
    (not when it was given and found no checkpoint to continue)."""
    if not found:
        return
    if not overwrite:
        names = ", ".join(f"{p.name} ({why})" for p, why in found[:6])
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        start = "this resumed run would mix with them" if resuming else "a new run would mix with them"
        hint = "" if resuming or not can_resume else "--resume auto to continue the run they belong to, "
        verb = "resume" if resuming else "start"
        raise SkdError(f"--snapshot-dir {folder} holds {names}{more}; {start}: pass {hint}--overwrite to "
                       f"delete them and {verb}, or another --snapshot-dir")
    for path, why in found:
        path.unlink(missing_ok=True)
        log.info("--overwrite: removed %s (%s)", path, why)
