"""A snapshot dir belongs to one run: a second run at the same time is refused naming the first
(the lock dies with its process, SIGKILL included); a new run is refused where an earlier one left
files unless --overwrite; rotation removes only the writing run's checkpoints."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from skd.engine import checkpoint as ckpt
from skd.engine import rundir
from skd.errors import SkdError
from test_e2e import TINY, run_cli

HOLD = """
import sys, time
from pathlib import Path
from skd.engine import rundir
rundir.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "--some-flag"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SkdError) as info:
            rundir.acquire(tmp_path)
        message = str(info.value)
        assert message.startswith(f"--snapshot-dir {tmp_path}: another run is writing into it (pid {holder.pid} "
                                  f"on {socket.gethostname()}, started ")
        assert f"-c {tmp_path} --some-flag" in message and "pass another --snapshot-dir" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    rundir.acquire(tmp_path)  # the OS released the dead holder's lock
    try:
        assert json.loads((tmp_path / "run.json").read_text())["pid"] == os.getpid()
    finally:
        rundir.release(tmp_path)


def test_a_second_skd_train_in_the_same_folder_is_refused_while_the_first_runs(cityscapes_dir, tmp_path):
    flags = ["--data-dir", cityscapes_dir, "--snapshot-dir", tmp_path, *TINY, "--save-every", "1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "skd.train", *map(str, flags), "--num-steps", "2000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = run_cli("skd.train", *flags, "--num-steps", "2", "--resume", "auto", check=False)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr
        assert f"another run is writing into it (pid {first.pid} on {socket.gethostname()}" in err[0]
        assert "--num-steps 2000" in err[0]
        assert first.poll() is None  # the first run is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))  # one run's steps only


@pytest.mark.slow  # three runs: 15-22 s on 2 shared cores
def test_a_new_run_where_checkpoints_are_is_refused_unless_overwrite(cityscapes_dir, tmp_path):
    flags = ["--data-dir", cityscapes_dir, "--snapshot-dir", tmp_path, *TINY, "--num-steps", "2",
             "--save-every", "1", "--keep-last", "1"]
    run_cli("skd.train", *flags)
    first_id = ckpt.peek(tmp_path / "final.pth")[0]
    again = run_cli("skd.train", *flags, check=False)
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"skd: error: --snapshot-dir {tmp_path} holds best.pth (of an earlier run), checkpoint_000002.pth (of an "
        f"earlier run), final.pth (of an earlier run), metrics.jsonl (of an earlier run), val_final.json (of an "
        f"earlier run); a new run would mix with them: pass --resume auto to continue the run they belong to, "
        f"--overwrite to delete them and start, or another --snapshot-dir")
    assert ckpt.peek(tmp_path / "final.pth")[0] == first_id  # nothing touched

    fresh = run_cli("skd.train", *flags, "--overwrite")
    assert f"--overwrite: removed {tmp_path / 'checkpoint_000002.pth'} (of an earlier run)" in fresh.stdout
    second_id = ckpt.peek(tmp_path / "final.pth")[0]
    assert second_id != first_id and ckpt.peek(tmp_path / "checkpoint_000002.pth")[0] == second_id
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "task" in r] == [1, 2]  # the new run's log only


def _save(path, step, run_id):
    ckpt.atomic_save({"skd_format": 1, "step": step, "run_id": run_id, "w": torch.zeros(2)}, path)


def test_rotation_removes_only_the_writing_runs_checkpoints(tmp_path):
    for step in (28, 30):
        _save(tmp_path / f"checkpoint_{step:06d}.pth", step, "other")
    for step in (1, 2, 3, 4):
        _save(tmp_path / f"checkpoint_{step:06d}.pth", step, "mine")
    (tmp_path / "checkpoint_000029.pth").write_bytes(b"unreadable")
    removed = ckpt.rotate(tmp_path, 2, rundir.RunOwner("mine"))
    assert sorted(p.name for p in removed) == ["checkpoint_000001.pth", "checkpoint_000002.pth"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30, 29, 28, 4, 3]


def test_a_run_resumed_from_a_checkpoint_without_run_id_owns_the_files_without_one(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path / f"checkpoint_{step:06d}.pth", step, None)
    _save(tmp_path / "checkpoint_000004.pth", 4, "new")
    assert ckpt.rotate(tmp_path, 1, rundir.RunOwner("new", legacy=True)) == [
        tmp_path / "checkpoint_000003.pth", tmp_path / "checkpoint_000002.pth", tmp_path / "checkpoint_000001.pth"]


def test_a_resumed_run_refuses_other_runs_files_and_its_own_later_ones(tmp_path):
    peeked = {tmp_path / "checkpoint_000003.pth": ("mine", 3), tmp_path / "checkpoint_000005.pth": ("mine", 5),
              tmp_path / "checkpoint_000009.pth": ("theirs", 9), tmp_path / "best.pth": ("mine", 2)}
    found = rundir.earlier_files(tmp_path, rundir.RunOwner("mine"), 3, peeked)
    assert [(p.name, why) for p, why in found] == [
        ("checkpoint_000005.pth", "of this run at step 5, after step 3"),
        ("checkpoint_000009.pth", "of another run, theirs")]
    with pytest.raises(SkdError, match="this resumed run would mix with them: pass --overwrite to delete them "
                                       "and resume"):
        rundir.refuse_or_remove(tmp_path, found, overwrite=False, resuming=True)
