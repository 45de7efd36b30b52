"""scripts/benchmark_losses.py on a tiny case: one child's record (peak, timings, launch count)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_losses.py"


def test_child_reports_peak_times_and_launches():
    case = {"impl": "gram", "batch": 2, "cs": 8, "ct": 12, "h": 6, "w": 6, "node_size": 1}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--child", json.dumps(case),
                           "--repeats", "2", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["peak_bytes"] >= 0 and len(record["times"]) == 2 and all(t > 0 for t in record["times"])
    # One forward + backward dispatches aten operators (the profiler counts nested ones too).
    assert record["launches"] > 10


def test_profile_call_counts_operators_of_one_call(load_script):
    bench = load_script("benchmark_losses")
    case = {"impl": "naive", "batch": 1, "cs": 4, "ct": 4, "h": 3, "w": 3, "node_size": 1}
    student, teacher = bench.make_inputs(case, "cpu")
    once = bench.profile_call(case, student, teacher, "cpu")["launches"]
    assert once > 0
    # The count is of one call: the same again, not accumulated.
    assert bench.profile_call(case, student, teacher, "cpu")["launches"] == once
    assert student.grad is None  # step() leaves no gradient behind
