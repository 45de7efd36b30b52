"""Faults of docs/reliability.md, one test each: a full disk while writing checkpoints and logs,
stale temporary files after a kill, non-finite steps that must leave the model untouched,
corrupt or mismatched checkpoints on resume, and errors raised inside DataLoader workers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from skd.engine import checkpoint as ckpt
from skd.errors import cli
from skd.engine.steps import NonFiniteLoss, train_step
from skd.errors import SkdError
from skd.models import Discriminator


# --- full disk -----------------------------------------------------------------------------

def _torch_save_failing_like_a_full_disk(obj, f):
    """What torch.save does on a real ENOSPC: part of the zip is written, then the zip writer
    raises RuntimeError (not OSError) when it notices the short write."""
    f.write(b"PK" + bytes(4096))
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 793984 vs 793880")


def test_torch_save_runtime_error_on_a_full_disk_is_one_error_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_000001.pth"
    ckpt.atomic_save({"skd_format": 1, "step": 1}, path)
    monkeypatch.setattr(torch, "save", _torch_save_failing_like_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 20, used=1 << 20, free=0))
    with pytest.raises(SkdError) as info:
        ckpt.atomic_save({"skd_format": 1, "step": 2}, path)
    message = str(info.value)
    assert str(path) in message and "no space left on device" in message
    assert "the previous checkpoint is kept" in message and "\n" not in message
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_torch_save_runtime_error_with_free_space_says_the_write_failed(tmp_path, monkeypatch):
    path = tmp_path / "final.pth"
    monkeypatch.setattr(torch, "save", _torch_save_failing_like_a_full_disk)
    with pytest.raises(SkdError, match="could not write checkpoint .*final.pth: the write failed "
                                       r"\(.*unexpected pos.*\); no earlier checkpoint exists"):
        ckpt.atomic_save({"skd_format": 1}, path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    ckpt.atomic_save({"skd_format": 1, "step": 1}, tmp_path / "checkpoint_000001.pth")
    monkeypatch.setattr(torch, "save", _torch_save_failing_like_a_full_disk)
    with pytest.raises(SkdError, match="the newest earlier checkpoint, checkpoint_000001.pth, is kept"):
        ckpt.atomic_save({"skd_format": 1, "step": 2}, tmp_path / "checkpoint_000002.pth")


def test_metrics_log_on_a_full_disk_is_one_error_naming_the_file():
    from skd.io import append_line, write_text_atomic
    full = Path("/dev/full")  # every write: ENOSPC
    if not full.exists():
        pytest.skip("no /dev/full")
    with pytest.raises(SkdError, match="could not write /dev/full: no space left on device"):
        append_line(full, '{"step": 1}')
    with pytest.raises(SkdError, match="could not write /dev/full: no space left on device"):
        write_text_atomic(full, "{}")
    assert full.is_char_device()  # written in place, never replaced by a file


# --- stale temporary files -----------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_stale_temporary_checkpoints_are_removed_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".checkpoint_000004.pth.tmp{dead}", tmp_path / f".best.pth.tmp{dead}"]
    live = tmp_path / f".checkpoint_000005.pth.tmp{os.getppid()}"  # our parent: alive
    others = [tmp_path / "checkpoint_000003.pth", tmp_path / ".notes.tmp1", tmp_path / "x.pth.tmp1"]
    for p in stale + [live] + others:
        p.write_bytes(b"partial")
    assert sorted(ckpt.remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted([live] + others)


# --- non-finite steps ----------------------------------------------------------------------

def _state(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"changed by a skipped step: {changed[:5]}"


def _optimizer_state(opt) -> dict:
    return {f"{i}.{n}": t.clone() for i, s in opt.state_dict()["state"].items() for n, t in s.items()}


def test_a_non_finite_step_leaves_model_buffers_and_optimizer_untouched(tiny_training):
    models, cfg = tiny_training("--pi", "False", "--pa", "False", "--ho", "False", num_classes=4)
    student, opt = models.student.train(), models.opt_g
    image, label = 110 + 50 * torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    train_step(image, label, models=models, cfg=cfg)  # momentum buffers exist now
    before, opt_before = _state(student), _optimizer_state(opt)
    image[0, 0, 0, 0] = float("inf")  # NaN would be a padded pixel, 0 once normalised
    with pytest.raises(NonFiniteLoss, match="'task'"):
        train_step(image, label, models=models, cfg=cfg)
    _assert_same(before, _state(student))  # BatchNorm running stats included
    _assert_same(opt_before, _optimizer_state(opt))


def test_a_non_finite_discriminator_loss_is_caught_before_the_student_moves(tiny_training):
    """lambda_d * lambda_gp = inf: the student's terms (ho included) are finite, the critic's
    weighted penalty is not."""
    models, cfg = tiny_training("--pa", "False", "--d-input-size", "64", num_classes=4)
    models.critic.disc = Discriminator(4, ndf=8)
    models.opt_d = torch.optim.SGD(models.critic.parameters(), lr=1e-3, momentum=0.9)
    image, label = 110 + 50 * torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    models.student.train()
    before = _state(models.student, models.critic)
    with pytest.raises(NonFiniteLoss, match="'d_gp'"):
        train_step(image, label, models=models, cfg=replace(cfg, weights={**cfg.weights, "d_gp": float("inf")}))
    _assert_same(before, _state(models.student, models.critic))  # spectral-norm u/v and the D's BatchNorm too
    assert not models.opt_g.state and not models.opt_d.state


def test_non_finite_weights_are_refused_naming_the_tensor(tiny_net):
    from skd.train import check_finite_weights
    net = tiny_net(4)
    check_finite_weights(net, "final.pth")
    net.bn1.running_var[3] = float("inf")
    with pytest.raises(SkdError, match="final.pth: .*bn1.running_var is not finite"):
        check_finite_weights(net, "final.pth")


# --- resume --------------------------------------------------------------------------------

def test_resume_auto_with_only_corrupt_checkpoints_stops_listing_them(tmp_path):
    (tmp_path / "checkpoint_000007.pth").write_bytes(os.urandom(5000))
    (tmp_path / "checkpoint_000003.pth").write_bytes(b"")
    with pytest.raises(SkdError) as info:
        ckpt.find_resumable(tmp_path)
    message = str(info.value)
    assert "checkpoint_000007.pth: cannot be loaded" in message
    assert "checkpoint_000003.pth: cannot be loaded: the file is empty or truncated" in message
    assert "--resume" in message and "\n" not in message
    assert ckpt.find_resumable(tmp_path / "nothing-here") is None


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    ckpt.atomic_save({"skd_format": 1, "step": 2}, tmp_path / "checkpoint_000002.pth")
    (tmp_path / "checkpoint_000003.pth").write_bytes(b"")
    path, state = ckpt.find_resumable(tmp_path)
    assert path.name == "checkpoint_000002.pth" and state["step"] == 2
    assert "checkpoint_000003.pth" in caplog.text and "checkpoint_000002.pth" in caplog.text


def test_resume_without_model_config_lists_the_keys_that_differ(tiny_net):
    state = {"model": tiny_net(4, 0.25).state_dict()}
    state["model"]["extra.weight"] = torch.zeros(1)
    del state["model"]["head.bias"]
    with pytest.raises(SkdError) as info:
        ckpt.load_model_state(tiny_net(4, 0.125), state, Path("old.pth"))
    message = str(info.value)
    assert message.startswith("--resume old.pth: does not fit resnet18 (width 0.125, 4 classes): ")
    assert "conv1.weight is (16, 3, 3, 3) in the file, (8, 3, 3, 3) in the model" in message
    assert "more" in message and "\n" not in message


# --- DataLoader workers --------------------------------------------------------------------

class _BrokenDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise SkdError(f"/data/frame_{i}.png: cannot be read as an image (missing or corrupt)")


def test_error_in_a_dataloader_worker_is_one_line_and_exit_2(capsys):
    @cli
    def main(argv=None):
        for _ in torch.utils.data.DataLoader(_BrokenDataset(), batch_size=1, num_workers=1):
            pass

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "skd: error: /data/frame_0.png: cannot be read as an image (missing or corrupt)\n"


def test_a_prediction_png_that_cannot_be_encoded_is_one_error_naming_it(tmp_path, monkeypatch):
    import numpy as np

    from skd.data import info as data_info
    from skd.data.cityscapes import CITYSCAPES

    monkeypatch.setattr(data_info.cv2, "imencode", lambda ext, image: (False, None))
    with pytest.raises(SkdError, match=r"--out: could not encode .*aachen_x_labelIds\.png as PNG"):
        CITYSCAPES.write_prediction(tmp_path, "aachen/aachen_x", np.zeros((4, 6), dtype=np.uint8))


def _full_disk_at_fsync(monkeypatch):
    """A disk that is full: the data reaches it at flush/fsync, which fails with ENOSPC."""
    import errno

    from skd import io

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io.os, "fsync", fsync)


@pytest.fixture(scope="module")
def weights(cityscapes_dir, tmp_path_factory) -> Path:
    from skd.models import build_pspnet
    path = tmp_path_factory.mktemp("weights") / "final.pth"
    ckpt.save_model(path, build_pspnet("resnet18", num_classes=19, width_mult=0.25), 0, None)
    return path


def test_skd_test_on_a_full_disk_is_one_error_and_leaves_no_empty_png(cityscapes_dir, weights, tmp_path,
                                                                      monkeypatch, capsys):
    """Before: cv2.imwrite returned True for a small PNG the full disk cut to 0 bytes, and skd-test
    printed "N predictions written", exit 0."""
    from skd import predict
    out = tmp_path / "preds"
    _full_disk_at_fsync(monkeypatch)
    status = predict.main(["--data-dir", str(cityscapes_dir), "--ckpt", str(weights), "--arch", "resnet18",
                           "--width-mult", "0.25", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 2 and "predictions written" not in captured.out + captured.err
    assert captured.err.strip().splitlines()[-1].startswith(f"skd: error: could not write {out}/labelIds/")
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no PNG, empty or partial, and no temporary


def test_skd_eval_out_on_a_full_disk_is_one_error_and_keeps_the_old_file(cityscapes_dir, weights, tmp_path,
                                                                        monkeypatch, capsys):
    from skd import evaluate
    out = tmp_path / "miou.json"
    out.write_text('{"mIoU": 0.5}')
    _full_disk_at_fsync(monkeypatch)
    status = evaluate.main(["--data-dir", str(cityscapes_dir), "--ckpt", str(weights), "--arch", "resnet18",
                            "--width-mult", "0.25", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1] == f"skd: error: could not write {out}: no space left on device" + (
        err[-1].split("no space left on device", 1)[1])
    assert out.read_text() == '{"mIoU": 0.5}' and sorted(tmp_path.iterdir()) == [out]


# --- a pickle that runs code: what was refused ----------------------------------------------

class _CallsOsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_calling_os_system_is_refused_saying_what_it_would_call(tmp_path):
    from skd.models.checkpoint import read_checkpoint
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"skd_format": 1, "x": _CallsOsSystem(marker)}, bad)  # the zip format torch writes
    with pytest.raises(SkdError) as info:
        read_checkpoint(bad)
    assert str(info.value) == (f"{bad}: cannot be loaded: unpickling it would call {os.system.__module__}.system, "
                               f"which weights-only loading refuses (it could run arbitrary code); re-save it as a "
                               f"plain state_dict of tensors")
    assert not marker.exists()
