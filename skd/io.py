"""Every file skd writes goes through here, so that a failure is one SkdError naming the file and
what is on disk is the old content or the new one, never a torn mix.

Whole files (checkpoints, best.pth/final.pth, val_final.json, skd-eval's --out JSON, skd-test's
PNGs, the snapshot dir's run.json) are written by `atomic_writer`: a temporary file in the same
folder, opened with O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name (so a file or symlink
planted there is never followed or overwritten), flushed, fsynced, renamed over the target, and
the folder fsynced. Logs (metrics.jsonl) grow by `append_line`, which truncates the file back to
its old size when a write fails, so no partial line is left for the next record to land on.

Temporary files are named `.<name>.<random>.tmp<pid>`; `stale_temp_files` finds those of dead
processes (a run killed while writing) so the next run can remove them.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from skd.errors import SkdError

log = logging.getLogger(__name__)

# `.<name>.<random>.tmp<pid>`; the older `.<name>.pth.tmp<pid>` of atomic_save matches too.
TEMP_RE = re.compile(r"\.(?P<target>.+)\.\w+\.tmp(?P<pid>\d+)")
# A write that failed with less than this free is taken for a full disk.
_NEARLY_FULL = 1 << 20
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# How much of a log's end `append_line` reads to find a partial last line.
_TAIL = 1 << 16


def write_failure(exc: BaseException, folder: Path) -> str:
    """Why a write into `folder` failed, for a one-line message.

    "no space left on device (N bytes free in FOLDER)" when the error or one it replaced is
    ENOSPC/EDQUOT, or when the file system is (nearly) full, since torch.save reports a full disk
    as a RuntimeError of its zip writer; otherwise the OS's reason, or "the write failed (<first
    line of the error>)".
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


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`: (fd, its path). Mode 0666 minus the umask, as the
    target would get from open(); a name that exists (planted or not) is never reused."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{os.getpid()}")
        try:
            return os.open(tmp, _OPEN_NEW, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, what: str = "", kept: Callable[[Path], str] | None = None) -> Iterator[BinaryIO]:
    """A binary file whose content replaces `path` when the block ends without error.

    On failure (OSError, or the RuntimeError torch.save's zip writer raises on a full disk) the
    temporary file is removed, `path` keeps its old content, and SkdError("could not write
    <what><path>: <reason>[; <kept(path)>]") is raised. Any other exception from the block also
    removes the temporary file and propagates. A symlink at `path` is followed (the file it names
    is replaced, the link kept); a device or pipe there (/dev/stdout) is written in place, as
    there is no file to replace.
    """
    path = Path(path)
    real = Path(os.path.realpath(path))
    tmp = None
    try:
        if real.exists() and not real.is_file():
            with open(real, "wb") as f:
                yield f
            return
        fd, tmp = _open_temp(real)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
        tmp = None
        fsync_dir(real.parent)
    except (OSError, RuntimeError) as e:
        reason = write_failure(e, real.parent)  # before the unlink frees the space again
        _remove(tmp)
        extra = f"; {kept(path)}" if kept is not None else ""
        raise SkdError(f"could not write {what}{path}: {reason}{extra}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes, what: str = "") -> None:
    """Replace `path` by `data`, atomically (see `atomic_writer`); SkdError naming it on failure."""
    with atomic_writer(path, what) as f:
        f.write(data)


def write_text_atomic(path: Path, text: str, what: str = "") -> None:
    """Replace `path` by `text` (UTF-8), atomically; SkdError naming it on failure."""
    write_bytes_atomic(path, text.encode("utf-8"), what)


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline to `path` (created if missing), all of it or nothing.

    The write is fsynced; if it fails, the file is truncated back to its size before the call and
    SkdError("could not write <path>: <reason>") is raised. A partial last line found before
    writing (left by a process killed mid-append) is cut off, with a warning.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = -1
    size = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
        size = _cut_partial_line(fd, path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        reason = write_failure(e, path.parent)
        if fd >= 0 and size is not None:
            with contextlib.suppress(OSError):  # a character device (/dev/full) cannot be truncated
                os.ftruncate(fd, size)
        raise SkdError(f"could not write {path}: {reason}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _cut_partial_line(fd: int, path: Path) -> int:
    """Size of the file at `fd` after removing a last line that has no newline; 0 for a device."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_size:
        return 0
    start = max(0, st.st_size - _TAIL)
    tail = os.pread(fd, st.st_size - start, start)
    if tail.endswith(b"\n"):
        return st.st_size
    cut = tail.rfind(b"\n")
    keep = start + cut + 1 if cut >= 0 else (0 if start == 0 else st.st_size)
    if keep == st.st_size:  # a last line longer than _TAIL: leave it
        return keep
    os.ftruncate(fd, keep)
    log.warning("%s: removed a partial last line (%d bytes) left by an interrupted write", path, st.st_size - keep)
    return keep


def stale_temp_files(folder: Path) -> Iterator[tuple[Path, int, bool]]:
    """(path, pid, alive) of each temporary file of `atomic_writer` in `folder`, sorted."""
    for p in sorted(Path(folder).glob(".*.tmp*")):
        m = TEMP_RE.fullmatch(p.name)
        if m and p.is_file():
            pid = int(m.group("pid"))
            yield p, pid, pid != os.getpid() and pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
