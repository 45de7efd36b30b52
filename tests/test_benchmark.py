"""Smoke test of scripts/benchmark.py at its tiniest setting (the JSON and the markdown section
are written and parse), and its table and verdict on made-up figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
TINY = ["--device", "cpu", "--crop", "65", "--batch", "2", "--eval-size", "64", "128", "--steps", "1",
        "--warmup", "1", "--width-mult", "0.25", "--teacher-arch", "resnet18", "--teacher-width-mult", "0.25",
        "--threads", "1", "--settings", "plain", "--phases", "step", "eval"]


def test_benchmark_writes_json_and_the_step_cpu_section(tmp_path):
    page, out = tmp_path / "benchmarks.md", tmp_path / "bench.json"
    page.write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    env = dict(os.environ, SKD_BENCH_MD=str(page), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["config"]["crop"] == 65
    for phase in ("step", "eval"):
        res = record["results"]["plain"][phase]
        assert res is not None, record["runs"]["plain"][phase]
        assert res["images_per_s"] > 0 and res["peak_mib"] > 0 and len(res["times"]) == 1
    # The step is the full distillation step: every term of --pi --pa --ho and the D step.
    assert set(record["results"]["plain"]["step"]["terms"]) == {"task", "pi", "pa", "ho", "d_adv", "d_gp"}

    text = page.read_text()
    assert "<!-- BEGIN other -->\nkept\n<!-- END other -->" in text
    section = text.split("<!-- BEGIN step-cpu -->", 1)[1].split("<!-- END step-cpu -->", 1)[0]
    assert "Command: `python" in section and "Date: " in section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| setting |") and [r.split("|")[1].strip() for r in rows[2:]] == ["plain"]
    assert "Verdict:" in section


def test_table_and_verdict_say_which_switches_pay(load_script):
    bench = load_script("benchmark")

    def res(step: float, eval_: float) -> dict:
        return {"step": {"images_per_s": step, "peak_mib": 800.0}, "eval": {"images_per_s": eval_, "peak_mib": 150.0}}

    results = {"plain": res(1.0, 1.0), "amp-bf16": res(1.6, 1.8), "channels-last": res(1.02, 0.9),
               "compile": {"step": None, "eval": {"images_per_s": 1.2, "peak_mib": 300.0}}, "fast": res(1.1, 1.3)}
    errors = {s: {"step": "out of memory" if s == "compile" else "", "eval": ""} for s in results}
    rows = bench.table("cpu", results, errors).splitlines()
    assert rows[3].split("|")[2:4] == [" --amp bf16 ", " 1.60 "] and "1.60x" in rows[3] and "1.80x" in rows[3]
    assert "failed: out of memory" in rows[5]
    line, info = bench.verdict("cpu", results, crop=129, batch=2)
    assert info["met"] is True and "fast step 1.10x, eval 1.30x plain: met" in line
    assert "training step: amp-bf16; evaluation: amp-bf16, compile." in line

    gpu = {"plain": res(10.0, 5.0), "fast": res(19.0, 12.0)}
    line, info = bench.verdict("cuda", gpu, crop=512, batch=8)
    assert info["met"] is False and "fast step 1.90x" in line and "NOT met" in line


def test_data_phase_runs_skd_trains_loader_once(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY[:-3], "--phases", "data", "--data-size", "64", "128",
                           "--workers", "1", "--json", str(out), "--no-write"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())["data"]
    # 20 batches of 2 timed after the first (1 worker: max(20, 10 x 1)).
    assert data["workers"] == 1 and data["batches"] == 20 and data["images_per_call"] == 40
    assert data["images_per_s"] == 40 / data["times"][0]
    assert "Data loading (`skd.engine.build.build_train_loader`, 1 worker," in proc.stdout
    assert "64x128 PNGs" in proc.stdout


def test_data_line_says_whether_loading_keeps_up(load_script):
    bench = load_script("benchmark")

    class Args:
        crop, batch, data_size = 512, 8, [1024, 2048]

    data = {"workers": 8, "png_mib": 3.7, "batches": 80, "images_per_s": 50.0}
    results = {"plain": {"step": {"images_per_s": 20.0}}, "fast": {"step": {"images_per_s": 40.0}}}
    assert bench.data_line(data, results, Args).endswith(
        "50.0 images/s, 1.2x the fastest step (fast, 40.00 images/s): keeps up.")
    results["fast"]["step"]["images_per_s"] = 60.0
    assert "0.8x the fastest step (fast, 60.00 images/s): does NOT keep up; raise --num-workers." in bench.data_line(
        data, results, Args)
    assert bench.data_line({"error": "boom"}, results, Args) == "Data loading: failed: boom"
