"""scripts/compare.py: with a stand-in trainer, which rows, seeds and flags it launches, the reuse
and resumption of runs, the two tables' layout and numbers, the CLI and run_train_val.sh
--compare; and one real end-to-end comparison of two methods through skd-train."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compare(load_script):
    return load_script("compare")


# A stand-in for `python -m skd.train`: appends its argv (one JSON list a line) to calls.jsonl
# in the snapshot root (<root>/compare/<row>/seed<N>), and writes val_final.json with
# mIoU = MIOU[row] + 0.01 * seed, per class road = mIoU, sky = mIoU / 2. A file `crash_once` in
# the run's folder makes it stop once (status 3) after writing a checkpoint, as a cut-off run.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
snap = Path(args[args.index("--snapshot-dir") + 1])
seed = int(args[args.index("--seed") + 1])
root = snap.parents[2]
with open(root / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
snap.mkdir(parents=True, exist_ok=True)
if (snap / "crash_once").exists():
    (snap / "crash_once").unlink()
    (snap / "checkpoint_000002.pth").write_bytes(b"partial")
    sys.exit(3)
MIOU = {"baseline": 0.50, "at-feat": 0.60, "cwd-feat": 0.70, "pi-logits": 0.55}
miou = MIOU[snap.parent.name] + 0.01 * seed
(snap / "val_final.json").write_text(json.dumps({"mIoU": miou, "per_class": {"road": miou, "sky": miou / 2}}))
"""


@pytest.fixture
def fake(tmp_path) -> list[str]:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return [sys.executable, str(script)]


def calls(root: Path) -> list[list[str]]:
    path = root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


OFF_BUT = {  # what a row must say about the paper's three terms
    "at": ["--pi", "False", "--pa", "False", "--ho", "False", "--at", "True"],
    "cwd": ["--pi", "False", "--pa", "False", "--ho", "False", "--cwd", "True"],
}


def test_each_row_and_seed_is_launched_once_with_its_flags_then_reused(compare, fake, tmp_path):
    root, data = tmp_path / "runs", tmp_path / "data"
    rows = compare.select(["baseline", "at", "cwd"], ["feat"])
    assert rows == [("baseline", "-"), ("at", "feat"), ("cwd", "feat")]
    results = compare.compare(fake, data, ["--teacher-ckpt", "t.pth"], root, rows, [0, 1],
                              ["--num-steps", "40000"], ["--num-steps", "7"])
    launched = calls(root)
    assert len(launched) == 6

    def snapshot(row: str, seed: int) -> str:
        return str(root / "compare" / row / f"seed{seed}")

    # The flags in order: data, schedule, the row's own, teacher, the user's, seed, then train()'s.
    assert launched[0] == ["--data-dir", str(data), "--num-steps", "40000", "--num-steps", "7", "--seed", "0",
                           "--snapshot-dir", snapshot("baseline", 0), "--resume", "auto"]
    assert launched[3] == ["--data-dir", str(data), "--num-steps", "40000", *OFF_BUT["at"], "--at-on", "feat",
                           "--lambda-at", "10000", "--teacher-ckpt", "t.pth", "--num-steps", "7", "--seed", "1",
                           "--snapshot-dir", snapshot("at-feat", 1), "--resume", "auto"]
    assert launched[4] == ["--data-dir", str(data), "--num-steps", "40000", *OFF_BUT["cwd"], "--cwd-on", "feat",
                           "--lambda-cwd", "50", "--cwd-tau", "4", "--teacher-ckpt", "t.pth", "--num-steps", "7",
                           "--seed", "0", "--snapshot-dir", snapshot("cwd-feat", 0), "--resume", "auto"]
    assert [c[c.index("--snapshot-dir") + 1] for c in launched] == [
        snapshot(r, s) for r in ("baseline", "at-feat", "cwd-feat") for s in (0, 1)]
    assert [r["mIoU"] for r in results[("cwd", "feat")]] == [0.70, 0.71]

    # The same call again: every run is finished, nothing is launched, the same results come back.
    again = compare.compare(fake, data, ["--teacher-ckpt", "t.pth"], root, rows, [0, 1],
                            ["--num-steps", "40000"], ["--num-steps", "7"])
    assert again == results and len(calls(root)) == 6


def test_a_cut_off_run_resumes_and_a_run_with_other_flags_is_refused(compare, fake, tmp_path):
    root = tmp_path / "runs"
    run = root / "compare" / "at-feat" / "seed0"
    run.mkdir(parents=True)
    (run / "crash_once").write_text("")
    args = (fake, tmp_path / "data", ["--teacher-ckpt", "t.pth"], root, [("at", "feat")], [0], [], [])
    with pytest.raises(SystemExit, match="failed with status 3"):
        compare.compare(*args)
    assert not (run / "val_final.json").exists()
    compare.compare(*args)  # launched again into the same folder, with --resume auto
    first, second = calls(root)
    assert first == second and second[-2:] == ["--resume", "auto"]
    assert (run / "checkpoint_000002.pth").exists() and (run / "val_final.json").exists()

    with pytest.raises(SystemExit, match="holds a run with other flags"):
        compare.compare(fake, tmp_path / "data", ["--teacher-ckpt", "t.pth"], root, [("at", "feat")], [0], [],
                        ["--lambda-at", "5"])
    assert len(calls(root)) == 2


def test_split_argv_puts_later_groups_first(compare):
    split = compare.ablation.split_argv
    assert split(["--seeds", "0"]) == (["--seeds", "0"], [])
    assert split(["--seeds", "0", "--", "--lr-g", "1"]) == (["--seeds", "0"], ["--lr-g", "1"])
    assert split(["--demo", "--", "--lr-g", "1", "--", "--lr-g", "2", "--norm", "bn"]) == (
        ["--demo"], ["--lr-g", "2", "--norm", "bn", "--lr-g", "1"])


def test_rows_follow_table_2_and_a_method_without_the_chosen_map_is_refused(compare):
    assert compare.select(None, ["logits", "feat"]) == [
        ("baseline", "-"), ("at", "logits"), ("at", "feat"), ("pi", "logits"), ("pa", "logits"), ("pa", "feat"),
        ("ifvd", "logits"), ("ifvd", "feat"), ("ho", "logits"), ("local", "logits"), ("local", "feat"),
        ("cwd", "logits"), ("cwd", "feat"), ("kd", "logits"), ("dist", "logits"), ("fitnet", "feat")]
    # Every method by default: one on the features only drops the logit-only methods.
    assert compare.select(None, ["feat"]) == [("baseline", "-"), ("at", "feat"), ("pa", "feat"), ("ifvd", "feat"),
                                              ("local", "feat"), ("cwd", "feat"), ("fitnet", "feat")]
    with pytest.raises(SystemExit, match="fitnet has no row on --maps logits: it reads feat only"):
        compare.select(["cwd", "fitnet"], ["logits"])


@pytest.mark.parametrize("row, flags", [
    (("pi", "logits"), ["--pi", "True", "--pa", "False", "--ho", "False", "--lambda-pi", "10"]),
    (("pa", "logits"), ["--pi", "False", "--pa", "True", "--ho", "False", "--pa-feat", "logits", "--lambda-pa", "0.5",
                        "--pool-scale", "0.5"]),
    (("ho", "logits"), ["--pi", "False", "--pa", "False", "--ho", "True", "--lambda-d", "0.1", "--lambda-gp", "10",
                        "--adv-loss-type", "wgan-gp"]),
    (("cwd", "logits"), [*OFF_BUT["cwd"], "--cwd-on", "logits", "--lambda-cwd", "3", "--cwd-tau", "4"]),
    (("ifvd", "feat"), ["--pi", "False", "--pa", "False", "--ho", "False", "--ifvd", "True", "--ifvd-on", "feat",
                        "--lambda-ifvd", "200"]),
    (("fitnet", "feat"), ["--pi", "False", "--pa", "False", "--ho", "False", "--fitnet", "True", "--fitnet-on",
                          "feat", "--lambda-fitnet", "10"]),
])
def test_method_flags(compare, row, flags):
    assert compare.flags_of(row) == flags


def test_every_rows_flags_are_accepted_by_skd_train(compare, train_args):
    """Each row parses, switches on exactly its own term, and reads the map it names."""
    from skd.engine.terms import TERMS, TERMS_BY_NAME
    for method, map_ in compare.select(None, ["logits", "feat"]):
        args = train_args(*compare.flags_of((method, map_)), teacher=method != "baseline")
        on = [t.name for t in TERMS if getattr(args, t.name)]
        assert on == ([] if method == "baseline" else [method]), method
        feature = TERMS_BY_NAME[method].feature if method != "baseline" else None
        if feature is not None:  # pi, ho, kd and dist read the logits, and have no map flag
            assert feature(vars(args)) == map_, (method, map_)


def test_tables_have_table_2_and_table_3_layout_with_mean_and_std(compare):
    def run(miou: float, road: float, sky: float) -> dict:
        return {"mIoU": miou, "per_class": {"road": road, "sky": sky}}

    results = {
        ("baseline", "-"): [run(0.70, 0.90, 0.50), run(0.72, 0.92, 0.52)],
        ("at", "feat"): [run(0.74, 0.95, 0.53), run(0.75, 0.96, 0.54)],
        ("local", "logits"): [run(0.60, 0.80, 0.40)],
    }
    text = compare.tables(results, teacher=run(0.80, 0.97, 0.63), overrides=["--lambda-local", "2"])
    lines = text.splitlines()
    # Table 2: method, map, weight, seeds, mIoU (mean ± sample std, %), the paper's figure.
    # baseline: mean 71.00, std sqrt((1 + 1) / 1) = 1.41; AT: 74.50, sqrt(0.5) = 0.71.
    assert lines[:6] == [
        "| method | map | weight | seeds | mIoU | paper |",
        "| --- | --- | --- | --- | --- | --- |",
        "| teacher | - | - | 1 | 80.00 | - |",
        "| baseline | - | - | 2 | 71.00 ± 1.41 | 69.10 |",
        "| AT | features | λ 10000 | 2 | 74.50 ± 0.71 | 72.37 |",
        "| LOCAL | logits | λ 2 | 1 | 60.00 | - |",  # the override is what ran; no published figure
    ]
    # Table 3: per-class IoU, method rows and class columns.
    start = lines.index("| method | map | mIoU | road | sky |")
    assert lines[start:start + 6] == [
        "| method | map | mIoU | road | sky |",
        "| --- | --- | --- | --- | --- |",
        "| teacher | - | 80.00 | 97.00 | 63.00 |",
        "| baseline | - | 71.00 ± 1.41 | 91.00 ± 1.41 | 51.00 ± 1.41 |",
        "| AT | features | 74.50 ± 0.71 | 95.50 ± 0.71 | 53.50 ± 0.71 |",
        "| LOCAL | logits | 60.00 | 80.00 | 40.00 |",
    ]
    assert "could not be verified" in text


def test_cli_passes_the_cwd_schedule_then_the_users_flags_and_writes_the_tables(compare, fake, tmp_path):
    root = tmp_path / "runs"
    compare.main(["--data-dir", str(tmp_path / "data"), "--teacher-ckpt", "t.pth", "--teacher-arch", "resnet34",
                  "--launch", " ".join(fake), "--snapshot-root", str(root), "--methods", "baseline", "pi",
                  "--maps", "logits", "--seeds", "0", "2", "--", "--num-steps", "3"])
    launched = calls(root)
    assert len(launched) == 4
    pi = launched[2]
    assert pi[2:10] == ["--num-steps", "40000", "--batch-size", "8", "--input-size", "512,512", "--lr-g", "0.01"]
    assert pi[pi.index("--teacher-ckpt"):pi.index("--teacher-ckpt") + 4] == ["--teacher-ckpt", "t.pth",
                                                                            "--teacher-arch", "resnet34"]
    assert pi[pi.index("--seed") - 2:pi.index("--seed")] == ["--num-steps", "3"]  # the user's last: it wins
    text = (root / "compare.md").read_text()
    # pi: 0.55 + 0.01 * seed for seeds 0 and 2 -> 56.00 ± 1.41
    assert "| PI | logits | λ 10 | 2 | 56.00 ± 1.41 | 71.74 |" in text
    assert "- PI: weight 10: SKD run_train_val.sh line 4" in text
    assert ("Every run: `skd-train --data-dir DATA --num-steps 40000 --batch-size 8 --input-size 512,512 --lr-g "
            "0.01 <the row's flags> [the teacher] --num-steps 3 --seed N`") in text


def test_run_train_val_compare_launches_through_torchrun(tmp_path, bin_dir):
    """GPUS=2: every run goes through `torchrun --nproc_per_node=2 -m skd.train` (a stand-in that
    trains nothing) with run_train_val.sh's data, schedule and synchronised norms."""
    torchrun = bin_dir / "torchrun"
    torchrun.write_text(f"#!{sys.executable}\n" + FAKE_TRAIN)
    torchrun.chmod(0o755)
    root = tmp_path / "runs"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DATA_DIR": str(tmp_path / "data"),
           "RESTORE_FROM": "none", "GPUS": "2", "SNAPSHOT_DIR": str(root), "TEACHER_CKPT": "t.pth"}
    proc = subprocess.run(["bash", str(ROOT / "run_train_val.sh"), "--compare", "--methods", "cwd", "--maps", "feat",
                           "--", "--num-steps", "5"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (argv,) = calls(root)
    assert argv[:4] == ["--nproc_per_node=2", "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1"]
    assert argv[5:7] == ["-m", "skd.train"]
    assert argv[argv.index("--norm") + 1] == "syncbn" and "--cwd-on" in argv and "--" not in argv
    # The script's NUM_STEPS (40000) comes first; the user's flag after `--` is the last and wins.
    steps = [argv[i + 1] for i, a in enumerate(argv) if a == "--num-steps"]
    assert steps[-1] == "5" and "40000" in steps
    assert (root / "compare.md").exists()


TINY = ["--arch", "resnet18", "--input-size", "48,48", "--batch-size", "2", "--device", "cpu", "--progress",
        "False", "--num-workers", "0", "--log-every", "4", "--save-every", "100"]


@pytest.mark.slow
def test_two_methods_end_to_end_through_skd_train(compare, cityscapes_dir, tmp_path, monkeypatch):
    """Real runs: a 2-step R18 x0.25 teacher, then IFVD and CWD on the features of an R18 x0.125
    student (16 steps, 48x48 crops, 1 seed); each run logs its own term only and the tables hold
    the mIoU that its val_final.json says."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    py = [sys.executable, "-m", "skd.train"]
    teacher = compare.ablation.train(py, tmp_path / "teacher", ["--data-dir", str(cityscapes_dir), *TINY,
                                                       "--width-mult", "0.25", "--num-steps", "2"])
    teacher_flags = ["--teacher-ckpt", str(tmp_path / "teacher" / "final.pth"), "--teacher-arch", "resnet18",
                     "--teacher-width-mult", "0.25"]
    rows = [("ifvd", "feat"), ("cwd", "feat")]
    results = compare.compare(py, cityscapes_dir, teacher_flags, tmp_path, rows, [0], TINY,
                              ["--width-mult", "0.125", "--num-steps", "16"])
    for row in rows:
        run = tmp_path / "compare" / compare.folder(row) / "seed0"
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [s for s in steps if "task" in s]
        assert steps[-1]["step"] == 16
        other = {"pi", "pa", "ho", "ifvd", "cwd"} - {row[0]}
        assert row[0] in steps[-1] and not other & set(steps[-1])
        assert results[row][0] == json.loads((run / "val_final.json").read_text())
    text = compare.tables(results, teacher)
    assert f"| IFVD | features | λ 200 | 1 | {100 * results[rows[0]][0]['mIoU']:.2f} | 71.35 |" in text
    assert f"| CWD | features | λ 50, τ 4 | 1 | {100 * results[rows[1]][0]['mIoU']:.2f} | 74.27 |" in text
