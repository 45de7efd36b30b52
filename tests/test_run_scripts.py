"""run_train_val.sh without training: a stand-in `torchrun` on PATH prints the command the
script would launch, so the tests read the flags it adds (synchronised norms with several
processes, the original's validation steps, --restore-from only for a file that exists)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def launch(tmp_path, bin_dir):
    """launch(*args, **env) -> (returncode, the launched command's argv or None, stderr)."""
    shim = bin_dir / "torchrun"
    shim.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    shim.chmod(0o755)
    weights = tmp_path / "resnet18-imagenet.pth"
    weights.write_bytes(b"x")

    def run(*args: str, **env: str):
        full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DATA_DIR": str(tmp_path),
                "RESTORE_FROM": str(weights), "GPUS": "2", **env}
        proc = subprocess.run(["bash", str(ROOT / "run_train_val.sh"), *args], capture_output=True, text=True,
                              env=full, timeout=60)
        argv = proc.stdout.split("\n")[:-1] if proc.returncode == 0 else None
        return proc.returncode, argv, proc.stderr
    return run


def flag(argv: list[str], name: str) -> list[str]:
    """The values that follow the last `name` in argv (up to the next flag)."""
    i = len(argv) - 1 - argv[::-1].index(name)
    values = []
    for a in argv[i + 1:]:
        if a.startswith("--"):
            break
        values.append(a)
    return values


def test_several_processes_get_synchronised_batch_norm_and_say_so(launch):
    code, argv, err = launch()
    assert code == 0 and flag(argv, "--norm") == ["syncbn"]
    assert "2 processes: --norm syncbn" in err
    code, argv, _ = launch(NORM="inplace_abn")
    assert flag(argv, "--norm") == ["inplace_abn_sync"]


def test_a_norm_the_user_gives_wins(launch):
    code, argv, err = launch("--norm", "bn")
    assert code == 0 and argv.count("--norm") == 1 and flag(argv, "--norm") == ["bn"]
    assert "normalise per process" in err


def test_the_originals_validation_steps(launch):
    code, argv, _ = launch()
    assert flag(argv, "--eval-at") == ["39326", "39697", "39999"]
    code, argv, _ = launch(NUM_STEPS="2000", BATCH_SIZE="16")  # every 185 steps in the last 1000
    assert flag(argv, "--eval-at") == ["1110", "1295", "1480", "1665", "1850", "1999"]


def test_a_missing_imagenet_file_is_an_error_and_none_trains_from_scratch(launch, tmp_path):
    code, argv, err = launch(RESTORE_FROM=str(tmp_path / "missing.pth"))
    assert code == 2 and argv is None
    assert f"RESTORE_FROM={tmp_path / 'missing.pth'}: no such file" in err and "RESTORE_FROM=none" in err
    code, argv, err = launch(RESTORE_FROM="none")
    assert code == 0 and "--restore-from" not in argv and "random weights" in err
    code, argv, _ = launch()
    assert flag(argv, "--restore-from") == [str(tmp_path / "resnet18-imagenet.pth")]
