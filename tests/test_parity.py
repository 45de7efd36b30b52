"""scripts/parity.py without training: the runs it launches (teacher once, every setting and
seed with the same student flags), the within-noise test against hand-computed values, and the
section and JSON it writes."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def parity(load_script):
    return load_script("parity")  # which puts scripts/ on sys.path for its own imports


# A stand-in for `python -m skd.train`: val_final.json with mIoU 0.20 + 0.01 * seed, plus
# OFFSET under --amp bf16; every launch is appended to calls.txt in the snapshot root.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
snap = Path(args[args.index("--snapshot-dir") + 1])
seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
fast = "--amp" in args and args[args.index("--amp") + 1] == "bf16"
miou = 0.20 + 0.01 * seed + (OFFSET if fast else 0.0)
snap.mkdir(parents=True, exist_ok=True)
(snap / "val_final.json").write_text(json.dumps({"mIoU": miou, "per_class": {"road": miou}}))
root = snap.parent if snap.name == "teacher" else snap.parent.parent
with open(root / "calls.txt", "a") as f:
    f.write(" ".join(args) + "\\n")
"""


def test_within_noise_against_hand_computed_values(parity):
    # plain 20, 22, 24 (mean 22, variance 4); fast 21, 23, 25 (mean 23, variance 4):
    # SE = sqrt(4/3 + 4/3) = 1.633, |23 - 22| = 1 <= 3.27: parity.
    test = parity.within_noise([20.0, 22.0, 24.0], [21.0, 23.0, 25.0])
    assert test["diff"] == pytest.approx(1.0)
    assert test["se"] == pytest.approx(math.sqrt(8 / 3))
    assert test["parity"] is True
    # fast 30, 31, 32 (variance 1): SE = sqrt(4/3 + 1/3) = 1.291, difference 9 > 2.58: no parity.
    test = parity.within_noise([20.0, 22.0, 24.0], [30.0, 31.0, 32.0])
    assert test["se"] == pytest.approx(math.sqrt(5 / 3))
    assert test["parity"] is False
    # One seed: no spread, no verdict.
    assert parity.within_noise([20.0], [21.0]) == {"diff": pytest.approx(1.0), "se": None, "parity": None}


def run_parity(parity, tmp_path: Path, monkeypatch, offset: float) -> tuple[dict, str, list[str]]:
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN.replace("OFFSET", repr(offset)))
    root = tmp_path / "runs"
    (root / "data" / "leftImg8bit").mkdir(parents=True, exist_ok=True)  # the dataset "exists"
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n<!-- BEGIN step-cpu -->\nkept\n<!-- END step-cpu -->\n")
    import bench_report

    monkeypatch.setattr(parity, "write_section", lambda name, body: bench_report.write_section(name, body, page))
    out = tmp_path / "parity.json"
    parity.main(["--device", "cpu", "--seeds", "0", "1", "2", "--snapshot-root", str(root), "--json", str(out),
                 "--launch", f"{sys.executable} {fake}"])
    calls = (root / "calls.txt").read_text().splitlines()
    return json.loads(out.read_text()), page.read_text(), calls


def test_runs_launched_and_parity_section_written(parity, tmp_path, monkeypatch):
    record, page, calls = run_parity(parity, tmp_path, monkeypatch, offset=0.002)
    # The teacher once, then 3 seeds x 2 settings, all students with the same teacher and flags.
    assert len(calls) == 7
    assert "--teacher-ckpt" not in calls[0] and "--pi" not in calls[0]
    students = calls[1:]
    assert all(f"--teacher-ckpt {tmp_path / 'runs' / 'teacher' / 'final.pth'}" in c for c in students)
    assert all("--pi True --pa True --ho True" in c for c in students)
    assert sum("--amp bf16 --channels-last True --compile True" in c for c in students) == 3
    assert sum("--amp off --channels-last False --compile False" in c for c in students) == 3
    strip = [c.replace("--amp bf16 --channels-last True --compile True", "S")
              .replace("--amp off --channels-last False --compile False", "S") for c in students]
    strip = [c.replace("/fast/", "/X/").replace("/plain/", "/X/") for c in strip]
    assert strip[0::2] == strip[1::2]  # per seed, plain and fast differ only in the setting

    assert record["miou"]["plain"] == pytest.approx([20.0, 21.0, 22.0])
    assert record["miou"]["fast"] == pytest.approx([20.2, 21.2, 22.2])
    assert record["paired_diff"] == pytest.approx([0.2, 0.2, 0.2])
    # SE = sqrt(1/3 + 1/3) = 0.816; |0.2| <= 1.63: parity.
    assert record["se"] == pytest.approx(math.sqrt(2 / 3))
    assert record["parity"] is True
    assert "<!-- BEGIN parity-cpu -->" in page and "kept" in page  # the other section is untouched
    assert "| plain | --amp off --channels-last False --compile False --tf32 False | 20.00 | 21.00 | 22.00 | 21.00 ± 1.00 |" in page
    assert "within noise (|difference| <= 2 SE): parity." in page

    # Rerun: the finished runs are reused, nothing is launched again, the figures are the same.
    again, _, calls_again = run_parity(parity, tmp_path, monkeypatch, offset=0.002)
    assert calls_again == calls
    assert again["miou"] == record["miou"]


def test_a_real_difference_is_reported_as_not_within_noise(parity, tmp_path, monkeypatch):
    record, page, _ = run_parity(parity, tmp_path, monkeypatch, offset=0.05)
    assert record["diff"] == pytest.approx(5.0)
    assert record["parity"] is False
    assert "NOT within noise" in page
