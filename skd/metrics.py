"""Segmentation metrics: a confusion matrix accumulated on the device and the IoU it gives.

Read by `skd.engine.evaluate` (validation during training, `skd-eval`) and the ablation script.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of one batch: rows ground truth, columns prediction.

    pred, gt: integer tensors of the same shape (any), on the same device. Pixels whose ground
    truth is `ignore_index` (or otherwise outside [0, num_classes)) are left out. Returns an
    int64 (num_classes, num_classes) tensor on the input's device.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(gt.shape)}")
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    index = gt[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou(confusion: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-class IoU and mIoU of a confusion matrix (rows ground truth, columns prediction).

    IoU_c = tp / max(1, tp + fp + fn), and mIoU is the mean over ALL classes (as the original:
    a class absent from both ground truth and prediction counts as 0).
    """
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    per_class = tp / union.clamp(min=1)
    return per_class, per_class.mean().item()


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Fraction of non-ignored pixels predicted correctly."""
    confusion = confusion.double()
    return (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; `reduce()` sums it over processes."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        self.mat += confusion_matrix(pred.to(self.mat.device), gt.to(self.mat.device),
                                     self.num_classes, self.ignore_index)

    def reduce(self) -> None:
        """Sum over the default process group (no-op in a single process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.mat)

    def iou(self) -> tuple[torch.Tensor, float]:
        return iou(self.mat)

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """JSON-ready dict: mIoU, pixel accuracy and per-class IoU by class name."""
        per_class, miou = self.iou()
        return {
            "mIoU": miou,
            "pixel_accuracy": pixel_accuracy(self.mat),
            "per_class": {name: float(v) for name, v in zip(class_names, per_class.tolist())},
        }


def format_table(summary: dict) -> str:
    """Per-class IoU table (percent) as aligned text, mIoU last."""
    rows = [f"{'class':<15} {'IoU':>6}"]
    rows += [f"{name:<15} {100 * v:6.2f}" for name, v in summary["per_class"].items()]
    rows.append(f"{'mIoU':<15} {100 * summary['mIoU']:6.2f}")
    return "\n".join(rows)
