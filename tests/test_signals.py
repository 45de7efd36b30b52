"""Stop signals always end with a checkpoint that `--resume auto` continues from, bit for bit:
SIGTERM to the whole process group with loader workers (they leave it to the main process),
the schedulers' warning signal SIGUSR1, a signal to one rank of a two-rank gloo torchrun (all
ranks stop at the same step, the checkpoint is announced once), and SIGKILL of a two-rank run
(every rank's random state comes back). torchrun picks its own free port (--standalone)."""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from skd.models.checkpoint import read_checkpoint
from test_e2e import TINY, run_cli

STEPS = 20


def flags(data_dir, *extra) -> list[str]:
    return ["--data-dir", str(data_dir), *TINY, "--num-steps", str(STEPS), "--deterministic", *map(str, extra)]


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "skd.train",
            *map(str, args)]


def start(cmd: list[str]) -> subprocess.Popen:
    """A run in its own process group (as a job scheduler starts one), output to a pipe."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for_step(snap: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while True:
        try:
            if any(json.loads(line).get("step", 0) >= step and "task" in line
                   for line in (snap / "metrics.jsonl").read_text().splitlines()[-3:]):
                return
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, "the run ended before it could be signalled"
        assert time.time() < deadline
        time.sleep(0.02)


def logged_steps(snap: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (snap / "metrics.jsonl").read_text().splitlines()) if "task" in r]


def same_weights(a: Path, b: Path) -> bool:
    x, y = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (a child of the launcher with RANK=<rank>)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher.pid and f"RANK={rank}".encode() in env:
                return int(entry)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under torchrun {launcher.pid}")


@pytest.fixture(scope="module")
def straight(cityscapes_dir, tmp_path_factory) -> Path:
    snap = tmp_path_factory.mktemp("straight") / "run"
    run_cli("skd.train", *flags(cityscapes_dir, "--snapshot-dir", snap, "--num-workers", "2"))
    return snap


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_checkpoints_and_resumes_exactly(cityscapes_dir, straight,
                                                                                  tmp_path):
    snap = tmp_path / "run"
    run = flags(cityscapes_dir, "--snapshot-dir", snap, "--num-workers", "2")
    proc = start([sys.executable, "-m", "skd.train", *run])
    wait_for_step(snap, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and both loader workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "DataLoader worker" not in err + out
    step = logged_steps(snap)[-1]
    assert f"SIGTERM: checkpoint written at step {step}, exiting" in out
    assert (snap / f"checkpoint_{step:06d}.pth").exists() and step < STEPS
    resumed = run_cli("skd.train", *run, "--resume", "auto")
    assert f"resumed from {snap / f'checkpoint_{step:06d}.pth'} at step {step}" in resumed.stdout
    assert logged_steps(snap) == list(range(1, STEPS + 1))  # every step once, none lost
    assert same_weights(straight / "final.pth", snap / "final.pth")


@pytest.mark.slow
def test_the_schedulers_warning_signal_sigusr1_checkpoints_too(cityscapes_dir, tmp_path):
    snap = tmp_path / "run"
    proc = start([sys.executable, "-m", "skd.train", *flags(cityscapes_dir, "--snapshot-dir", snap, "--num-workers",
                                                            "0")])
    wait_for_step(snap, 2, proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    step = logged_steps(snap)[-1]
    assert proc.returncode == 128 + signal.SIGUSR1, err
    assert f"SIGUSR1: checkpoint written at step {step}, exiting; --resume auto continues from it" in out
    assert read_checkpoint(snap / f"checkpoint_{step:06d}.pth")["step"] == step


@pytest.fixture(scope="module")
def straight_ddp(cityscapes_dir, tmp_path_factory) -> Path:
    snap = tmp_path_factory.mktemp("straight_ddp") / "run"
    proc = subprocess.run(torchrun(*flags(cityscapes_dir, "--snapshot-dir", snap)), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return snap


def resume_ddp(cityscapes_dir, snap: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun(*flags(cityscapes_dir, "--snapshot-dir", snap, "--resume", "auto")),
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(cityscapes_dir, straight_ddp, tmp_path):
    snap = tmp_path / "run"
    launcher = start(torchrun(*flags(cityscapes_dir, "--snapshot-dir", snap)))
    wait_for_step(snap, 3, launcher)
    os.kill(rank_pid(launcher, 1), signal.SIGTERM)  # rank 1 only: rank 0 must learn of it
    out, err = launcher.communicate(timeout=120)
    step = logged_steps(snap)[-1]
    # announced once, by rank 0, which wrote it; both ranks exit with 143, so torchrun reports a failure
    assert out.count("checkpoint written") == 1, out
    assert f"SIGTERM (received by another rank): checkpoint written at step {step}, exiting" in out
    assert "exitcode  : 143" in err and "Traceback" not in err.split("ChildFailedError")[0].split("exitcode")[0]
    assert read_checkpoint(snap / f"checkpoint_{step:06d}.pth")["step"] == step
    resumed = resume_ddp(cityscapes_dir, snap)
    assert f"at step {step}" in resumed.stdout
    assert logged_steps(snap) == list(range(1, STEPS + 1))
    assert same_weights(straight_ddp / "final.pth", snap / "final.pth")


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_bit_for_bit(cityscapes_dir, straight_ddp, tmp_path):
    """Dropout on (0.1): each rank's masks come from its own random stream, which the checkpoint
    holds for every rank; the resumed run equals the uninterrupted one exactly."""
    snap = tmp_path / "run"
    launcher = start(torchrun(*flags(cityscapes_dir, "--snapshot-dir", snap, "--save-every", "3", "--keep-last", "9")))
    ranks = [rank_pid(launcher, r) for r in (0, 1)]  # torchrun starts them in sessions of their own
    deadline = time.time() + 300
    while not (snap / "checkpoint_000006.pth").exists():
        assert launcher.poll() is None and time.time() < deadline
        time.sleep(0.02)
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    launcher.communicate()
    assert not (snap / "final.pth").exists(), sorted(p.name for p in snap.iterdir())
    state = read_checkpoint(snap / "checkpoint_000006.pth")
    assert len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])
    resume_ddp(cityscapes_dir, snap)
    assert same_weights(straight_ddp / "final.pth", snap / "final.pth")


def test_an_error_in_a_worker_that_ignores_stop_signals_still_ends_the_run(cityscapes_dir, tmp_path):
    """The workers ignore SIGTERM from outside, but not from their parent: an exception that keeps
    the loader from shutting them down must not leave the interpreter's exit waiting for them."""
    data = tmp_path / "data"
    shutil.copytree(cityscapes_dir, data)
    for png in (data / "leftImg8bit" / "train").rglob("*.png"):  # headers intact, pixels cut off
        png.write_bytes(png.read_bytes()[:200])
    proc = subprocess.run([sys.executable, "-m", "skd.train", *flags(data, "--snapshot-dir", tmp_path / "s",
                                                                     "--num-workers", "2")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 2
    assert "cannot be read as an image" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
