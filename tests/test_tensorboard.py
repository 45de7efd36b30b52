"""skd.tensorboard: metrics.jsonl records as TensorBoard scalars, read back with tensorboard's
own EventAccumulator; a clear error without the package."""
from __future__ import annotations

import sys

import pytest

from skd.errors import SkdError
from skd.tensorboard import TensorBoardLogger, require_tensorboard, tag

TRAIN = [
    {"step": 10, "lr_g": 0.01, "task": 2.5, "pa": 0.0, "pa_raw": 0.125, "loss": 2.5, "sec_per_step": 0.3},
    {"step": 20, "lr_g": 0.005, "task": 2.0, "pa": 0.0, "pa_raw": 0.0625, "loss": 2.0, "sec_per_step": 0.25},
    {"step": 21, "skipped": "loss is NaN"},
]
VAL = {"step": 20, "val": {"mIoU": 0.375, "pixel_accuracy": 0.75,
                           "per_class": {"road": 0.5, "traffic light": 0.25}}}


def test_writes_every_scalar_of_the_records(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'skd[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(tmp_path / "tb") as tb:
        for record in TRAIN + [VAL]:
            tb.log(record)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    assert scalars == {
        "train/lr_g": [(10, pytest.approx(0.01)), (20, pytest.approx(0.005))],
        "train/task": [(10, 2.5), (20, 2.0)],
        "train/pa": [(10, 0.0), (20, 0.0)],           # lambda 0: weighted is 0 ...
        "train/pa_raw": [(10, 0.125), (20, 0.0625)],  # ... and the raw value is kept
        "train/loss": [(10, 2.5), (20, 2.0)],
        "train/sec_per_step": [(10, pytest.approx(0.3)), (20, 0.25)],
        "val/mIoU": [(20, 0.375)],
        "val/pixel_accuracy": [(20, 0.75)],
        "val/IoU/road": [(20, 0.5)],
        "val/IoU/traffic_light": [(20, 0.25)],
    }


def test_tag_replaces_characters_tensorboard_does_not_take():
    assert tag("traffic light") == "traffic_light" and tag("pa_raw") == "pa_raw" and tag("a/b-c.d") == "a/b-c.d"


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SkdError, match=r"--tensorboard needs the tensorboard package.*pip install 'skd\[tensorboard\]'"):
        require_tensorboard()
    with pytest.raises(SkdError, match="--tensorboard needs"):
        TensorBoardLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
