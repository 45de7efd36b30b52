"""--resume continues the run the checkpoint started, or says why not: a changed recipe is refused
naming each flag with both values (--allow-change overrides), safe changes are allowed with a
line, a step past --num-steps and a weights-only file are refused; every rank gets its own random
state back."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from skd.engine import checkpoint as ckpt
from skd.options import RESUME_SAFE, train_parser
from skd.train import main as train_main
from test_e2e import TINY


def train(capsys, *flags) -> tuple[int, str, str]:
    """skd-train in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = train_main([*map(str, flags)])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def runs(cityscapes_dir, tmp_path_factory):
    """A plain 2-step run (its final.pth is also the teacher) and a --pi --pa --ho run of 2 steps
    distilled from it, each with checkpoints at steps 1 and 2."""
    root = tmp_path_factory.mktemp("resume")
    common = ["--data-dir", cityscapes_dir, *TINY, "--num-steps", "2", "--save-every", "1"]
    assert train_main([*map(str, common), "--snapshot-dir", str(root / "plain")]) == 0
    teacher = ["--teacher-ckpt", str(root / "plain" / "final.pth"), "--teacher-arch", "resnet18",
               "--teacher-width-mult", "0.25", "--d-input-size", "64"]
    assert train_main([*map(str, common), "--snapshot-dir", str(root / "distill"), *teacher]) == 0
    return {"root": root, "common": common, "teacher": teacher}


def copy_run(runs, name: str, to: Path) -> Path:
    shutil.copytree(runs["root"] / name, to)
    return to


def test_a_changed_recipe_is_refused_naming_each_flag_with_both_values(runs, tmp_path, capsys):
    snap = copy_run(runs, "plain", tmp_path / "s")
    status, _, err = train(capsys, *runs["common"], "--snapshot-dir", snap, "--resume", "auto", "--num-steps", "3",
                           "--lr-g", "0.02", "--seed", "1", "--momentum", "0.5", "--batch-size", "2",
                           "--input-size", "32,32")
    assert status == 2
    ck = snap / "checkpoint_000002.pth"
    assert err == (f"skd: error: --resume {ck}: the checkpoint was trained with other flags: --batch-size 4 -> 2; "
                   f"--input-size 48,48 -> 32,32; --lr-g 0.01 -> 0.02; --momentum 0.9 -> 0.5; --seed 0 -> 1; resume "
                   f"with the checkpoint's values, or pass --allow-change batch-size input-size lr-g momentum seed to "
                   f"continue with the new ones (the run is then no longer the one the checkpoint started)\n")
    assert not (snap / "checkpoint_000003.pth").exists()


def test_allow_change_continues_and_says_so(runs, tmp_path, capsys):
    snap = copy_run(runs, "plain", tmp_path / "s")
    status, out, _ = train(capsys, *runs["common"], "--snapshot-dir", snap, "--resume", "auto", "--num-steps", "3",
                           "--lr-g", "0.02", "--allow-change", "lr-g", "--log-every", "5")
    assert status == 0
    assert ("--resume: flags changed since the checkpoint, allowed: --log-every 1 -> 5 (when to log); --lr-g 0.01 "
            "-> 0.02 (allowed by --allow-change); --num-steps 2 -> 3 (longer: the poly lr is recomputed over 3 "
            "steps from step 2 on)") in out
    assert ckpt.load_checkpoint(snap / "checkpoint_000003.pth")["args"]["lr_g"] == 0.02


def test_a_step_past_num_steps_is_refused(runs, tmp_path, capsys):
    snap = copy_run(runs, "plain", tmp_path / "s")
    status, _, err = train(capsys, *runs["common"], "--snapshot-dir", snap, "--resume", "auto", "--num-steps", "1",
                           "--allow-change", "all")
    assert status == 2
    assert err == (f"skd: error: --resume {snap / 'checkpoint_000002.pth'}: the checkpoint is at step 2, past "
                   f"--num-steps 1; pass --num-steps 2 or more\n")


def test_a_distilled_checkpoint_resumed_without_the_teacher_is_refused(runs, tmp_path, capsys):
    snap = copy_run(runs, "distill", tmp_path / "s")
    status, _, err = train(capsys, *runs["common"], "--snapshot-dir", snap, "--resume", "auto", "--num-steps", "3",
                           "--d-input-size", "64")
    assert status == 2
    teacher = runs["root"] / "plain" / "final.pth"
    assert (f"the checkpoint was trained with other flags: --ho True -> False; --pa True -> False; --pi True -> False; "
            f"--teacher-ckpt {teacher} -> None;") in err


def test_a_moved_teacher_is_the_same_teacher(runs, tmp_path, capsys):
    snap = copy_run(runs, "distill", tmp_path / "s")
    moved = tmp_path / "elsewhere" / "teacher.pth"
    moved.parent.mkdir()
    shutil.copy(runs["root"] / "plain" / "final.pth", moved)
    teacher = [moved if x == str(runs["root"] / "plain" / "final.pth") else x for x in runs["teacher"]]
    status, out, err = train(capsys, *runs["common"], *teacher, "--snapshot-dir", snap, "--resume", "auto",
                             "--num-steps", "3")
    assert status == 0, err
    assert f"--teacher-ckpt {runs['root'] / 'plain' / 'final.pth'} -> {moved} (the same file moved" in out


def test_a_weights_only_file_is_named_as_one(runs, tmp_path, capsys):
    final = runs["root"] / "plain" / "final.pth"
    status, _, err = train(capsys, *runs["common"], "--snapshot-dir", tmp_path / "s", "--resume", final)
    assert status == 2
    assert err == (f"skd: error: --resume {final}: a weights-only file (the student network, as best.pth and "
                   f"final.pth are), not a training checkpoint: it has no optimizer, step counter or random state "
                   f"to continue from; resume from a checkpoint_<step>.pth, or pass it as --restore-from to start "
                   f"a new run from these weights\n")


def test_a_checkpoint_lacking_entries_lists_them(tmp_path):
    state = {"skd_format": 1, "step": 3, "model": {}, "optimizer": {}, "best_miou": 0.1}
    with pytest.raises(Exception, match=r"--resume x.pth: not a complete training checkpoint: no 'args', 'rng' "
                                        r"entries; resume from a checkpoint_<step>.pth that skd-train wrote"):
        ckpt.check_training_entries(state, Path("x.pth"))


def test_every_safe_flag_is_a_flag_of_skd_train():
    dests = set(vars(train_parser().parse_args(["--data-dir", "x"])))
    assert set(RESUME_SAFE) <= dests


def test_recipe_changes_compare_with_the_default_of_a_flag_the_checkpoint_lacks():
    refused, notes = ckpt.recipe_changes({"lr_g": 0.01}, {"lr_g": 0.01, "new_flag": 3, "same": 1},
                                         defaults={"new_flag": 2, "same": 1}, safe={}, allowed=set(), step=0)
    assert refused == ["--new-flag 2 -> 3"] and notes == []


def test_each_rank_gets_its_own_random_state_back():
    states = []
    for r in range(2):
        torch.manual_seed(100 + r)
        random.seed(100 + r)
        states.append(ckpt.rng_state())
    expected = [None, None]
    for r in range(2):
        ckpt.set_rng_state(states[r])
        expected[r] = (torch.rand(3), random.random())
    state = {"step": 7, "rng": states[0], "rng_per_rank": states}
    for r in range(2):
        torch.manual_seed(0)
        assert ckpt.restore_rng(state, r, 2, seed=0) is None
        assert torch.equal(torch.rand(3), expected[r][0]) and random.random() == expected[r][1]


def test_another_world_size_reseeds_each_rank_and_says_what_changes():
    torch.manual_seed(5)
    state = {"step": 7, "rng": ckpt.rng_state(), "rng_per_rank": [ckpt.rng_state()] * 2}
    message = ckpt.restore_rng(state, 1, 4, seed=3)
    assert message.startswith("the checkpoint was written by 2 process(es), this run has 4: the data order and "
                              "augmentation continue exactly")
    draw = torch.rand(3)
    torch.manual_seed(3 + 1 + 1000003 * 7)
    assert torch.equal(draw, torch.rand(3))


def test_a_validation_a_signal_preempted_is_the_resumed_runs_first_task(runs, tmp_path, capsys):
    """A stop signal during the step of a validation checkpoints without it ("validated": False);
    the resumed run validates at that step before training on. Records after the checkpoint's
    step, written before the stop, are dropped: the log holds each step once."""
    import json
    snap = copy_run(runs, "plain", tmp_path / "s")
    (snap / "checkpoint_000002.pth").unlink()
    state = ckpt.load_checkpoint(snap / "checkpoint_000001.pth")
    ckpt.atomic_save({**state, "validated": False}, snap / "checkpoint_000001.pth")
    status, out, err = train(capsys, *runs["common"], "--snapshot-dir", snap, "--resume", "auto", "--eval-at", "1",
                             "--overwrite")
    assert status == 0, err
    assert "metrics.jsonl: removed 2 record(s) after step 1, which this run does again" in out
    records = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "val" in r) for r in records] == [(1, False), (1, True), (2, False), (2, True)]
