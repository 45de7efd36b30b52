"""skd.io, the one set of writers: whole files atomic (old or new content, never torn), appends
all-or-nothing, failures one SkdError naming the file, and a temporary name nobody can plant."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from skd import io
from skd.errors import SkdError


def _failing_write_after(n_bytes: int):
    """An os.write that writes the first `n_bytes` it is given, then fails with ENOSPC, as a disk
    that fills up in the middle of a write."""
    real = os.write
    budget = [n_bytes]

    def write(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[:budget[0]]))
        budget[0] -= n
        return n
    return write


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "val_final.json"
    target.write_text("old")
    io.write_text_atomic(target, '{"mIoU": 0.5}')
    assert target.read_text() == '{"mIoU": 0.5}'
    assert [p.name for p in tmp_path.iterdir()] == ["val_final.json"]


def test_a_failed_atomic_write_keeps_the_old_content_and_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "miou.json"
    target.write_text("old content")
    # what a full disk does: buffered data reaches the disk at flush/fsync and fails there
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(SkdError) as info:
        io.write_text_atomic(target, "new content " * 1000, "--out ")
    assert str(info.value).startswith(f"could not write --out {target}: no space left on device")
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["miou.json"]


def test_a_failed_append_leaves_no_partial_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    io.append_line(log, '{"step": 1}')
    before = log.read_bytes()
    monkeypatch.setattr(io.os, "write", _failing_write_after(5))  # 5 bytes land, then the disk is full
    with pytest.raises(SkdError, match=f"could not write {log}: no space left on device"):
        io.append_line(log, '{"step": 2, "task": 1.25}')
    monkeypatch.undo()
    assert log.read_bytes() == before  # truncated back: the next record starts on its own line
    io.append_line(log, '{"step": 2}')
    assert log.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']


def test_a_partial_last_line_from_a_killed_writer_is_cut_before_appending(tmp_path, caplog):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1}\n{"step": 2, "ta')  # a process killed in the middle of a write
    io.append_line(log, '{"step": 2}')
    assert log.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']
    assert "removed a partial last line (15 bytes)" in caplog.text


def test_dev_full_is_one_error_and_stays_a_device():
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    for write in (lambda: io.append_line(full, "x"), lambda: io.write_bytes_atomic(full, b"x" * 10)):
        with pytest.raises(SkdError, match="could not write /dev/full: no space left on device"):
            write()
    assert full.is_char_device()


def test_a_planted_symlink_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    """The temporary name is random; even a name an attacker guessed right is opened with
    O_EXCL|O_NOFOLLOW, so the symlink planted there is left alone and another name is drawn."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "checkpoint_000001.pth"
    tokens = iter(["guessed0", "fresh001"])
    monkeypatch.setattr(io.secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / f".{target.name}.guessed0.tmp{os.getpid()}"
    planted.symlink_to(victim)
    io.write_bytes_atomic(target, b"checkpoint bytes")
    assert victim.read_text() == "precious" and planted.is_symlink()
    assert target.read_bytes() == b"checkpoint bytes"


def test_the_old_predictable_temporary_name_is_not_used(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "checkpoint_000001.pth"
    (tmp_path / f".{target.name}.tmp{os.getpid()}").symlink_to(victim)  # the name atomic_save used
    from skd.engine.checkpoint import atomic_save
    atomic_save({"skd_format": 1}, target)
    assert victim.read_text() == "precious"


def test_a_symlinked_target_keeps_its_link_and_the_file_it_names_is_replaced(tmp_path):
    real = tmp_path / "store" / "out.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "out.json"
    link.symlink_to(real)
    io.write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_temporary_files_name_their_process(tmp_path):
    names = [f".checkpoint_000004.pth.tmp{os.getpid()}",     # the older atomic_save's
             f".best.pth.ab12cd34.tmp{os.getpid()}",          # skd.io's
             ".notes.tmp1", "x.pth.tmp1"]                    # not ours
    for n in names:
        (tmp_path / n).write_bytes(b"")
    found = [(p.name, pid) for p, pid, _ in io.stale_temp_files(tmp_path)]
    assert sorted(found) == sorted([(names[0], os.getpid()), (names[1], os.getpid())])
