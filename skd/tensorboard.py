"""Optional TensorBoard logging (`--tensorboard`; `pip install 'skd[tensorboard]'`).

The same scalars as metrics.jsonl, which stays the record: every number of a training record
under `train/<key>` (the weighted terms `pi`, `pa`..., the raw `pi_raw`..., `loss`, `lr_g`,
`sec_per_step`), and every validation under `val/mIoU`, `val/pixel_accuracy` and
`val/IoU/<class>` (class names with spaces get underscores: `val/IoU/traffic_light`).
The step is the record's "step".
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from skd.errors import SkdError

INSTALL_HINT = "pip install 'skd[tensorboard]' (or drop --tensorboard)"


def require_tensorboard() -> type:
    """torch.utils.tensorboard.SummaryWriter; SkdError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SkdError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}") from None
    return SummaryWriter


def tag(name: str) -> str:
    """A TensorBoard tag from a metric or class name: anything but letters, digits, `_./-`
    becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class TensorBoardLogger:
    """Writes metrics.jsonl records as TensorBoard scalars into `log_dir`.

    Create it on the main process only, before training (so a missing package fails at
    start-up), and call `log(record)` with every record appended to metrics.jsonl.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        writer_cls = require_tensorboard()
        try:
            self.writer = writer_cls(log_dir=os.fspath(log_dir))
        except OSError as e:
            raise SkdError(f"--tensorboard: cannot write {log_dir} ({e.strerror})") from None

    def log(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record: a validation ({"step", "val": summary}) or a training one
        ({"step", <name>: number, ...}; non-numbers such as "skipped" are left out)."""
        step = int(record["step"])
        if "val" in record:
            self.log_validation(step, record["val"])
            return
        for key, value in record.items():
            if key != "step" and _is_number(value):
                self.writer.add_scalar(f"train/{tag(key)}", float(value), step)

    def log_validation(self, step: int, summary: Mapping[str, Any]) -> None:
        """A validation summary (ConfusionMatrix.summary: mIoU, pixel_accuracy, per_class)."""
        for key, value in summary.items():
            if _is_number(value):
                self.writer.add_scalar(f"val/{tag(key)}", float(value), step)
        for name, value in summary.get("per_class", {}).items():
            self.writer.add_scalar(f"val/IoU/{tag(name)}", float(value), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
