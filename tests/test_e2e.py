"""End to end on a tiny synthetic Cityscapes: train -> checkpoint -> eval -> test PNGs,
distillation with every flag, exact resume after SIGKILL, two-process DDP, the CLI error contract,
skipped non-finite steps, and resume refusals (only corrupt checkpoints, another width)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from skd.models.checkpoint import read_checkpoint

TINY = ["--arch", "resnet18", "--width-mult", "0.25", "--input-size", "48,48", "--batch-size", "4",
        "--device", "cpu", "--progress", "False", "--num-workers", "0", "--log-every", "1"]


@pytest.fixture(scope="session")
def data_dir(cityscapes_dir) -> Path:
    return cityscapes_dir


@pytest.fixture(scope="session")
def teacher_ckpt(data_dir, tmp_path_factory) -> Path:
    snap = tmp_path_factory.mktemp("teacher")
    run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", snap, "--num-steps", "2", "--eval-at", "1", *TINY)
    return snap / "final.pth"


def run_cli(module: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def test_train_checkpoint_eval_and_test_pngs(data_dir, teacher_ckpt, tmp_path):
    snap = teacher_ckpt.parent
    state = read_checkpoint(snap / "checkpoint_000002.pth")
    assert state["step"] == 2 and {"model", "optimizer", "rng", "args", "best_miou"} <= set(state)
    log = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "task" in r] == [1, 2]
    assert all(np.isfinite(r["task"]) and r["task_raw"] == r["task"] for r in log if "task" in r)
    # The original counts steps from 1: lr = 0.01 * (1 - s / 2) ** 0.9 at steps s = 1, 2.
    assert [r["lr_g"] for r in log if "task" in r] == [0.01 * 0.5 ** 0.9, 0.0]
    assert [r["step"] for r in log if "val" in r] == [1, 2]  # --eval-at 1, and the last step
    final_val = json.loads((snap / "val_final.json").read_text())
    assert set(final_val["per_class"]) >= {"road", "sky", "car"}

    out_json = tmp_path / "miou.json"
    proc = run_cli("skd.evaluate", "--data-dir", data_dir, "--ckpt", teacher_ckpt, "--arch", "resnet18",
                   "--width-mult", "0.25", "--device", "cpu", "--out", out_json)
    summary = json.loads(out_json.read_text())
    assert "mIoU" in proc.stdout and abs(summary["mIoU"] - final_val["mIoU"]) < 1e-9

    sliding = tmp_path / "sliding.json"
    run_cli("skd.evaluate", "--data-dir", data_dir, "--ckpt", teacher_ckpt, "--arch", "resnet18",
            "--width-mult", "0.25", "--device", "cpu", "--out", sliding, "--mode", "sliding",
            "--input-size", "32,32", "--scales", "0.75", "1.0", "--flip")
    assert 0 <= json.loads(sliding.read_text())["mIoU"] <= 1

    preds = tmp_path / "preds"
    run_cli("skd.predict", "--data-dir", data_dir, "--ckpt", teacher_ckpt, "--arch", "resnet18",
            "--width-mult", "0.25", "--device", "cpu", "--out", preds)
    images = sorted((data_dir / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png"))
    for img in images:
        stem = img.name.removesuffix("_leftImg8bit.png")
        label = cv2.imread(str(preds / "labelIds" / img.parent.name / f"{stem}_labelIds.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(preds / "color" / img.parent.name / f"{stem}_color.png"))
        assert label.shape == (48, 96) and color.shape == (48, 96, 3)
        # submission PNGs hold labelIds: only ids that some train id maps back to
        assert set(np.unique(label)) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


def test_distillation_with_every_flag_and_resume_restores_discriminator(data_dir, teacher_ckpt, tmp_path):
    flags = ["--data-dir", data_dir, "--snapshot-dir", tmp_path, *TINY, "--teacher-ckpt", teacher_ckpt,
             "--teacher-arch", "resnet18", "--teacher-width-mult", "0.25", "--d-input-size", "64",
             "--cwd", "True", "--cwd-on", "feat", "--dist", "True", "--kd", "True", "--save-every", "1",
             "--width-mult", "0.125"]  # narrower than the teacher: CWD on features needs the connector
    run_cli("skd.train", *flags, "--num-steps", "2")
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "task" in r]
    assert {"task", "pi", "pa", "ho", "cwd", "dist", "kd", "d_adv", "d_gp"} <= set(steps[-1])
    state = read_checkpoint(tmp_path / "checkpoint_000002.pth")
    assert {"disc", "opt_d", "connectors"} <= set(state) and set(state["connectors"]) == {"cwd"}

    run_cli("skd.train", *flags, "--num-steps", "3", "--resume", "auto")
    resumed = read_checkpoint(tmp_path / "checkpoint_000003.pth")
    assert resumed["step"] == 3
    # The critic's optimizer is the original's SGD (momentum 0.9, weight decay 5e-4), its momentum
    # restored and carried on.
    group = resumed["opt_d"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 5e-4) and "betas" not in group
    assert not torch.equal(resumed["opt_d"]["state"][0]["momentum_buffer"],
                           state["opt_d"]["state"][0]["momentum_buffer"])


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bit_identical(data_dir, tmp_path):
    flags = ["--data-dir", data_dir, *TINY, "--num-steps", "8", "--save-every", "1", "--deterministic",
             "--keep-last", "8"]
    straight = tmp_path / "straight"
    run_cli("skd.train", *flags, "--snapshot-dir", straight)

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "skd.train", *map(str, flags), "--snapshot-dir", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoint_000003.pth").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.pth").exists()
    run_cli("skd.train", *flags, "--snapshot-dir", killed, "--resume", "auto")

    a, b = model_tensors(straight / "final.pth"), model_tensors(killed / "final.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_train_in_step_and_match_one_process(data_dir, tmp_path):
    """Two ranks with synchronised BN on a global batch of 4 == one process on the same batch.

    Dropout off: its masks come from each rank's own random stream, which no process count can match."""
    flags = ["--data-dir", data_dir, *TINY, "--num-steps", "2", "--norm", "syncbn", "--deterministic",
             "--dropout", "0"]
    single = tmp_path / "single"
    run_cli("skd.train", *flags, "--snapshot-dir", single)
    ddp = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free port (a fixed one fails when anything else holds it)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "skd.train", *map(str, flags), "--snapshot-dir", str(ddp)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = model_tensors(single / "final.pth"), model_tensors(ddp / "final.pth")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-3), k


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/nonexistent/x"], "/nonexistent/x"),
    (["--lambda-pa", "-0.5"], "--lambda-pa -0.5: must not be negative"),
])
def test_bad_input_is_one_line_and_nonzero_exit(data_dir, tmp_path, args, message):
    full = ["--data-dir", data_dir, "--snapshot-dir", tmp_path / "s", *TINY, "--num-steps", "1", *args]
    proc = run_cli("skd.train", *full, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("skd: error:")
    assert not (tmp_path / "s" / "final.pth").exists()


def test_wrong_teacher_checkpoint_is_refused_before_training(data_dir, teacher_ckpt, tmp_path):
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", tmp_path, *TINY, "--num-steps", "1",
                   "--teacher-ckpt", teacher_ckpt, "--teacher-arch", "resnet34", "--ho", "False", check=False)
    assert proc.returncode == 2
    assert str(teacher_ckpt) in proc.stderr and "metrics.jsonl" not in os.listdir(tmp_path)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_skip_nonfinite_run_keeps_finite_weights_and_validates_at_the_end(data_dir, tmp_path):
    snap = tmp_path / "s"
    snap.mkdir()
    stale = snap / f".checkpoint_000001.pth.tmp{_dead_pid()}"  # as left by a kill mid-save
    stale.write_bytes(bytes(1000))
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", snap, *TINY, "--num-steps", "4",
                   "--save-every", "1", "--lr-g", "1e30", "--skip-nonfinite", "5")
    assert not stale.exists() and f"removed {stale}" in proc.stdout
    assert "step 2: loss term 'task' is not finite; step skipped (1 of 5 allowed)" in proc.stdout
    records = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "val" not in r]
    assert steps == [1, 2, 3, 4] and [r["step"] for r in records if "skipped" in r] == [2, 3, 4]
    assert (snap / "val_final.json").exists() and (snap / "best.pth").exists()
    final = read_checkpoint(snap / "final.pth")["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_resume_auto_run_with_only_corrupt_checkpoints_exits_2(data_dir, tmp_path):
    (tmp_path / "checkpoint_000003.pth").write_bytes(b"")
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", tmp_path, *TINY, "--num-steps", "2",
                   "--resume", "auto", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "checkpoint_000003.pth" in err[0], proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_of_another_width_names_the_flag(data_dir, teacher_ckpt, tmp_path):
    resume = teacher_ckpt.parent / "checkpoint_000002.pth"
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", tmp_path, *TINY, "--num-steps", "3",
                   "--width-mult", "0.5", "--resume", resume, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"skd: error: --resume {resume}: the file holds --width-mult 0.25, this run has "
                                   f"--width-mult 0.5; resume with the flags of the run that wrote it")


@pytest.mark.slow
@pytest.mark.parametrize("layout, classes, test_split", [("voc", 21, "test"), ("ade20k", 150, "val"),
                                                         ("camvid", 11, "test"), ("folder", None, "val")])
def test_every_dataset_trains_evaluates_and_writes_its_own_encoding(layout, classes, test_split, tmp_path):
    from skd.data import make_synthetic
    from skd.data.registry import dataset_info
    data = make_synthetic(tmp_path / "data", num_train=4, num_val=2, num_test=1, height=48, width=96, seed=0,
                          layout=layout)
    classes = classes or dataset_info(layout, data).num_classes
    snap = tmp_path / "run"
    run_cli("skd.train", "--dataset", layout, "--data-dir", data, "--snapshot-dir", snap, "--num-steps", "2", *TINY)
    val = json.loads((snap / "val_final.json").read_text())
    assert len(val["per_class"]) == classes and list(val["per_class"]) == list(dataset_info(layout, data).class_names)
    proc = run_cli("skd.evaluate", "--dataset", layout, "--data-dir", data, "--ckpt", snap / "final.pth",
                   "--arch", "resnet18", "--width-mult", "0.25", "--device", "cpu", "--out", tmp_path / "m.json")
    assert "mIoU" in proc.stdout
    run_cli("skd.predict", "--dataset", layout, "--data-dir", data, "--ckpt", snap / "final.pth", "--split",
            test_split, "--arch", "resnet18", "--width-mult", "0.25", "--device", "cpu", "--out", tmp_path / "preds")
    pngs = sorted((tmp_path / "preds" / "labels").rglob("*.png"))
    assert pngs and all(np.asarray(Image.open(p)).shape == (48, 96) for p in pngs)
    wrong = run_cli("skd.train", "--dataset", layout, "--data-dir", data, "--snapshot-dir", tmp_path / "w",
                    "--num-classes", "19" if classes != 19 else "5", *TINY, check=False)
    assert wrong.returncode == 2 and f"--dataset {layout} has {classes} classes" in wrong.stderr


@pytest.mark.slow
def test_config_file_resolved_config_tensorboard_and_panels(data_dir, teacher_ckpt, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"width_mult": 0.25, "input_size": [48, 48], "batch_size": 4, "num_steps": 2,
                                  "device": "cpu", "progress": False, "num_workers": 0, "lambda-pa": 0.0}))
    snap = tmp_path / "s"
    common = ["--config", config, "--data-dir", data_dir, "--snapshot-dir", snap, "--teacher-ckpt", teacher_ckpt,
              "--d-input-size", "64", "--log-every", "2"]
    printed = run_cli("skd.train", *common, "--print-config").stdout
    resolved = json.loads(printed)
    assert resolved["width_mult"] == 0.25 and resolved["lambda_pa"] == 0.0 and resolved["pi"] is True
    assert not snap.exists()  # --print-config trains nothing
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    run_cli("skd.train", *common, *(["--tensorboard"] if tensorboard else []))
    written = json.loads((snap / "config.json").read_text())  # beside the checkpoints
    assert written == {**resolved, "tensorboard": tensorboard}
    record = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines()][0]
    # averaged over the 2-step window, weighted and raw: lambda_pa 0 keeps the pair-wise value
    assert record["pa"] == 0.0 and record["pa_raw"] > 0 and record["pi"] == pytest.approx(10 * record["pi_raw"])
    assert record["loss"] == pytest.approx(sum(record[k] for k in ("task", "pi", "pa", "ho")), rel=1e-5)
    if tensorboard:
        assert list((snap / "tensorboard").glob("events.out.tfevents.*"))
    # the resolved configuration reads back as --config
    again = run_cli("skd.train", "--config", snap / "config.json", "--print-config").stdout
    assert json.loads(again) == written

    run_cli("skd.evaluate", "--data-dir", data_dir, "--ckpt", snap / "final.pth", "--device", "cpu", "--vis", "1",
            "--teacher-ckpt", teacher_ckpt, "--vis-dir", tmp_path / "vis", "--out", tmp_path / "m.json")
    panels = list((tmp_path / "vis").rglob("*.png"))
    assert len(panels) == 1
    h, w = np.asarray(Image.open(panels[0])).shape[:2]
    assert w >= 5 * 96 and h > 48  # five columns (image, truth, prediction, errors, teacher) and titles


@pytest.mark.slow
@pytest.mark.parametrize("student", [
    ["--head", "aspp"],                                          # DeepLabV3-R18 (skd variant)
    ["--arch", "mobilenetv2", "--width-mult", "0.5"],            # MobileNetV2-D8 PSPNet
    ["--arch", "mobilenetv2", "--head", "aspp", "--width-mult", "0.5"],
    ["--variant", "mmseg"],                                      # mmseg's PSPNet-R18-D8 (RGB mean/std, v1c stem)
])
def test_new_networks_distil_from_a_deeplabv3_teacher_end_to_end(data_dir, student, tmp_path_factory, tmp_path):
    """Any teacher with any student: a DeepLabV3 teacher (trained here, 2 steps) into each new
    student, with the logit terms, the pair-wise graphs and CWD on features (a connector when the
    channels differ), then skd-eval and skd-test on the result with no architecture flag."""
    teacher_dir = tmp_path_factory.getbasetemp() / "aspp_teacher"
    if not (teacher_dir / "final.pth").exists():
        run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", teacher_dir, "--num-steps", "2", *TINY,
                "--head", "aspp")
    snap = tmp_path / "s"
    flags = ["--data-dir", data_dir, "--snapshot-dir", snap, *TINY, "--num-steps", "2", "--teacher-ckpt",
             teacher_dir / "final.pth", "--d-input-size", "64", "--cwd", "True", "--cwd-on", "feat", *student]
    run_cli("skd.train", *flags)
    record = next(json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines() if "task" in line)
    assert {"task", "pi", "pa", "ho", "cwd"} <= set(record) and all(np.isfinite(record[k]) for k in record if k != "step")
    state = read_checkpoint(snap / "checkpoint_000002.pth")
    net_config = state["model_config"]
    assert all(net_config[k.lstrip("-").replace("-", "_")] == type(net_config[k.lstrip("-").replace("-", "_")])(v)
               for k, v in zip(student[::2], student[1::2]))
    run_cli("skd.evaluate", "--data-dir", data_dir, "--ckpt", snap / "final.pth", "--device", "cpu",
            "--out", tmp_path / "m.json")
    assert 0 <= json.loads((tmp_path / "m.json").read_text())["mIoU"] <= 1


def test_threads_flag_sets_torch_threads_in_train_and_eval(data_dir, teacher_ckpt, tmp_path):
    """--threads reaches torch in skd-train and skd-eval (logged); 0 leaves torch's own count
    (the tests' OMP_NUM_THREADS=1)."""
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", tmp_path / "run", "--num-steps", "1",
                   "--threads", "2", *TINY)
    assert "torch CPU threads: 2\n" in proc.stdout
    proc = run_cli("skd.evaluate", "--data-dir", data_dir, "--ckpt", teacher_ckpt, "--device", "cpu",
                   "--out", tmp_path / "miou.json")
    assert "torch CPU threads: 1 (torch's choice; --threads sets it)" in proc.stdout
    proc = run_cli("skd.train", "--data-dir", data_dir, "--snapshot-dir", tmp_path / "bad", "--threads", "-1",
                   *TINY, check=False)
    assert proc.returncode == 2 and "--threads" in proc.stderr
