"""scripts/gpu_checks.sh where there is no GPU: usage without a stage, a clear refusal without
CUDA (before any stage runs), and unknown stages named."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_checks.sh"


def run(*args: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OUT=str(out)))


def test_without_a_stage_it_prints_its_usage(tmp_path):
    proc = run(out=tmp_path)
    assert proc.returncode == 2
    usage = [line.split("#")[0].split()[2:] for line in proc.stdout.splitlines() if "gpu_checks.sh " in line]
    assert sorted(sum(usage, [])) == ["losses", "memory", "parity", "step", "tests"]
    assert "set -uo" not in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA device")
def test_without_cuda_it_stops_before_any_stage(tmp_path):
    proc = run("losses", out=tmp_path)
    assert proc.returncode == 1
    assert "gpu_checks.sh: torch sees no CUDA device" in proc.stderr
    assert not (tmp_path / "losses.log").exists()
    # The page copy is made first, so a later stage's sections land beside the current ones.
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")
