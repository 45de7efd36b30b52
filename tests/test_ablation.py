"""scripts/ablation.py without training: the rows and seeds it launches, the reuse of finished
runs only under the same flags, and the mean +- std table."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ablation(load_script):
    return load_script("ablation")


# A stand-in for `python -m skd.train`: writes val_final.json whose mIoU encodes --seed, and
# counts its launches in calls.txt beside the snapshot folder.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
snap = Path(args[args.index("--snapshot-dir") + 1])
seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
snap.mkdir(parents=True, exist_ok=True)
miou = 0.10 + 0.01 * seed + (0.05 if "--pi" in args and args[args.index("--pi") + 1] == "True" else 0)
(snap / "val_final.json").write_text(json.dumps({"mIoU": miou, "per_class": {"road": miou, "sky": 2 * miou}}))
with open(snap.parent.parent / "calls.txt", "a") as f:
    f.write(" ".join(args) + "\\n")
"""


def test_rows_and_seeds_are_launched_once_and_tabulated_as_mean_and_std(ablation, tmp_path):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    launch = [sys.executable, str(fake)]
    rows, seeds = ["baseline", "pi"], [0, 1, 2]
    results = ablation.ablation(launch, tmp_path / "data", ["--teacher-ckpt", "t.pth"], tmp_path / "runs",
                                rows, seeds, ["--num-steps", "5"])
    calls = (tmp_path / "runs" / "calls.txt").read_text().splitlines()
    assert len(calls) == 6
    assert all("--teacher-ckpt" not in c for c in calls if "/baseline/" in c)
    assert all("--teacher-ckpt t.pth" in c and "--pi True" in c for c in calls if "/pi/" in c)

    # A second call reuses the finished runs: no new launches.
    again = ablation.ablation(launch, tmp_path / "data", ["--teacher-ckpt", "t.pth"], tmp_path / "runs",
                              rows, seeds, ["--num-steps", "5"])
    assert again == results
    assert len((tmp_path / "runs" / "calls.txt").read_text().splitlines()) == 6

    text = ablation.table(results)
    pi_miou = [100 * (0.15 + 0.01 * s) for s in seeds]
    want = f"{statistics.mean(pi_miou):.2f} ± {statistics.stdev(pi_miou):.2f}"
    assert "| + pi | 3 | " + want + " | 70.51 |" in text
    assert "| baseline | 3 | 11.00 ± 1.00 | 69.10 |" in text


def test_a_finished_run_with_other_flags_is_not_reused(ablation, tmp_path):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    launch = [sys.executable, str(fake)]
    ablation.ablation(launch, tmp_path / "data", [], tmp_path / "runs", ["baseline"], [0], ["--lambda-pi", "1"])
    with pytest.raises(SystemExit, match="holds a run with other flags"):
        ablation.ablation(launch, tmp_path / "data", [], tmp_path / "runs", ["baseline"], [0], ["--lambda-pi", "10"])
    stored = json.loads((tmp_path / "runs" / "baseline" / "seed0" / "ablation_flags.json").read_text())
    assert stored[stored.index("--lambda-pi") + 1] == "1"  # the first run is kept as it was


def test_progress_estimates_the_time_left_from_the_runs_trained_so_far(ablation, tmp_path, capsys):
    teacher = ["--num-steps", "100"]
    plain = ["--teacher-ckpt", "t.pth", "--ho", "False", "--num-steps", "50"]
    adversarial = ["--teacher-ckpt", "t.pth", "--num-steps", "50"]  # --ho defaults to on with a teacher
    jobs = [("teacher", tmp_path / "t", teacher), ("a", tmp_path / "a", plain), ("b", tmp_path / "b", plain),
            ("c", tmp_path / "c", adversarial), ("done", tmp_path / "d", plain)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "val_final.json").write_text("{}")  # finished: reused, costs nothing
    progress = ablation.Progress(jobs)
    assert [progress.kind(f) for _, _, f in jobs] == ["no teacher", "student", "student", "ho", "student"]
    progress.begin("teacher", *jobs[0][1:])
    assert progress.left() is None and "[1/5] teacher: 100 steps; 0s so far\n" == capsys.readouterr().out
    progress.trained(teacher, 50.0)                          # 0.5 s a step
    assert progress.left() == pytest.approx(3 * 50 * 0.5)    # nothing else measured yet: the teacher's rate
    progress.begin("a", *jobs[1][1:])
    assert "[2/5] a: 50 steps; " in capsys.readouterr().out
    progress.trained(plain, 10.0)                            # students: 0.2 s a step
    # b at the students' 0.2, c (adversarial, not measured) at the mean of all rates so far, d reused
    assert progress.left() == pytest.approx(50 * 0.2 + 50 * (0.5 + 0.2) / 2)
    progress.begin("b", *jobs[2][1:])
    assert capsys.readouterr().out.splitlines()[-1].endswith("about 28s left")  # b and c: 10 + 17.5 s
    progress.begin("done", *jobs[4][1:])
    assert "done" not in capsys.readouterr().out  # reused runs print nothing


def test_a_table_that_cannot_be_written_is_one_line_and_exit_2(ablation, tmp_path, monkeypatch):
    """The runner on a full disk (/dev/full as --out): after the runs, one line naming the file,
    exit 2, no traceback; and a table already on disk keeps its old content when the new one
    cannot be written (it is written atomically)."""
    import errno
    import subprocess

    import skd.io
    from skd.errors import SkdError

    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    cmd = [sys.executable, str(Path(ablation.__file__)), "--data-dir", str(tmp_path / "data"), "--teacher-ckpt",
           "t.pth", "--snapshot-root", str(tmp_path / "runs"), "--rows", "baseline", "--seeds", "0",
           "--launch", f"{sys.executable} {fake}", "--out", "/dev/full"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "could not write /dev/full" in proc.stderr
    table = tmp_path / "table.md"
    table.write_text("old\n")

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(skd.io.os, "replace", full)
    with pytest.raises(SkdError, match="could not write .*table.md"):
        ablation.write_markdown(table, "new\n")
    # the old table, and no temporary file left beside it
    assert table.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_train.py", "runs", "table.md"]


# A stand-in for skd.train that takes time: records when it started and ended in times.jsonl,
# refuses (status 3) a --teacher-ckpt that does not exist yet, writes final.pth and val_final.json.
SLOW_TRAIN = """
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
snap = Path(args[args.index("--snapshot-dir") + 1])
t0 = time.time()
if "--teacher-ckpt" in args and not Path(args[args.index("--teacher-ckpt") + 1]).exists():
    print("no teacher yet")
    sys.exit(3)
if "--fail" in args:
    print("the last words of a failing run")
    sys.exit(4)
time.sleep(float(args[args.index("--sleep") + 1]))
(snap / "final.pth").write_text("weights")
(snap / "val_final.json").write_text(json.dumps({"mIoU": 0.25, "per_class": {}}))
print("trained", snap.name)
with open(snap.parent / "times.jsonl", "a") as f:
    f.write(json.dumps({"name": snap.name, "start": t0, "end": time.time()}) + "\\n")
"""


def _times(folder: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, (folder / "times.jsonl").read_text().splitlines())}


def test_side_by_side_runs_wait_for_the_checkpoint_they_read(ablation, tmp_path, capsys):
    """--cores 2, one-thread runs: the teacher and the run without a teacher go together; the
    runs that read the teacher's final.pth start only once the teacher has finished; each run's
    output goes to its runner.log, and the summaries come back in the jobs' order."""
    fake = tmp_path / "slow_train.py"
    fake.write_text(SLOW_TRAIN)
    one = ["--threads", "1", "--num-steps", "10"]
    teacher = ["--teacher-ckpt", str(tmp_path / "teacher" / "final.pth")]
    jobs = [("teacher", tmp_path / "teacher", ["--sleep", "1.5"] + one),
            ("pi", tmp_path / "pi", ["--sleep", "0.2"] + one + teacher),
            ("baseline", tmp_path / "baseline", ["--sleep", "0.5"] + one),
            ("pa", tmp_path / "pa", ["--sleep", "0.2"] + one + teacher)]
    summaries = ablation.run_jobs([sys.executable, str(fake)], jobs, cores=2)
    assert summaries == [{"mIoU": 0.25, "per_class": {}}] * 4
    times = _times(tmp_path)
    assert set(times) == {"teacher", "pi", "baseline", "pa"}
    assert times["baseline"]["start"] < times["teacher"]["end"]  # beside the teacher
    assert min(times["pi"]["start"], times["pa"]["start"]) >= times["teacher"]["end"]
    assert times["pa"]["start"] < times["pi"]["end"]  # the two students together
    assert (tmp_path / "pi" / "runner.log").read_text().strip() == "trained pi"
    out = capsys.readouterr().out
    assert "[1/4] teacher: 10 steps" in out and "[2/4] baseline: 10 steps" in out  # pi waits, baseline goes
    assert "teacher: done in 2s, mIoU 25.00" in out
    # All done: a second call reuses every run and starts nothing.
    assert ablation.run_jobs([sys.executable, str(fake)], jobs, cores=2) == summaries
    assert len((tmp_path / "times.jsonl").read_text().splitlines()) == 4


def test_runs_take_their_threads_of_the_cores(ablation, tmp_path):
    """A run without --threads (torch's choice) takes every core and goes alone; two-thread runs
    on 4 cores go two at a time."""
    fake = tmp_path / "slow_train.py"
    fake.write_text(SLOW_TRAIN)
    jobs = [("all", tmp_path / "all", ["--sleep", "0.5"]),
            ("two_a", tmp_path / "two_a", ["--sleep", "0.5", "--threads", "2"]),
            ("two_b", tmp_path / "two_b", ["--sleep", "0.5", "--threads", "2"]),
            ("two_c", tmp_path / "two_c", ["--sleep", "0.5", "--threads", "2"])]
    ablation.run_jobs([sys.executable, str(fake)], jobs, cores=4)
    t = _times(tmp_path)
    assert t["two_a"]["start"] >= t["all"]["end"] and t["two_b"]["start"] >= t["all"]["end"]
    assert t["two_b"]["start"] < t["two_a"]["end"]           # a and b together
    assert t["two_c"]["start"] >= min(t["two_a"]["end"], t["two_b"]["end"])  # c when one of them is done
    assert [ablation.cores_of(f, 4) for _, _, f in jobs] == [4, 2, 2, 2]
    assert ablation.cores_of(["--threads", "8"], 4) == 4


def test_a_failed_side_by_side_run_stops_the_runner_after_the_running_ones(ablation, tmp_path, capsys):
    fake = tmp_path / "slow_train.py"
    fake.write_text(SLOW_TRAIN)
    one = ["--threads", "1"]
    jobs = [("slow", tmp_path / "slow", ["--sleep", "1.0"] + one), ("bad", tmp_path / "bad", ["--sleep", "0", "--fail"] + one),
            ("later", tmp_path / "later", ["--sleep", "0"] + one)]
    with pytest.raises(SystemExit, match=r"a run failed with status 4: .*its log: .*bad/runner.log"):
        ablation.run_jobs([sys.executable, str(fake)], jobs, cores=2)
    assert (tmp_path / "slow" / "val_final.json").exists()  # the running one finished
    assert not (tmp_path / "later").exists()                 # no new run started after the failure
    out = capsys.readouterr().out
    assert "failed: bad (status 4)" in out and "  | the last words of a failing run" in out


def test_cores_default_to_the_usable_ones_for_the_demo_only(ablation, monkeypatch):
    monkeypatch.setattr(ablation, "usable_cores", lambda: 3)
    p = ablation.runner_parser("doc", "t.md")
    assert ablation.parse_runner_args(p, ["--demo"]).cores == 3
    assert ablation.parse_runner_args(p, ["--data-dir", "d", "--teacher-ckpt", "t"]).cores == 1
    assert ablation.parse_runner_args(p, ["--demo", "--cores", "1"]).cores == 1
    with pytest.raises(SystemExit):
        ablation.parse_runner_args(p, ["--demo", "--cores", "0"])


def test_a_run_with_other_flags_later_in_the_list_stops_the_runner_before_any_training(ablation, tmp_path):
    fake = tmp_path / "slow_train.py"
    fake.write_text(SLOW_TRAIN)
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "ablation_flags.json").write_text(json.dumps(["--sleep", "9"]))
    jobs = [("first", tmp_path / "first", ["--sleep", "0", "--threads", "1"]),
            ("second", tmp_path / "second", ["--sleep", "0", "--threads", "1"])]
    for cores in (1, 2):
        with pytest.raises(SystemExit, match="second holds a run with other flags"):
            ablation.run_jobs([sys.executable, str(fake)], jobs, cores=cores)
        assert not (tmp_path / "first").exists()
