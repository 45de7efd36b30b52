"""Segmentation metrics: a confusion matrix accumulated on the device and the IoU it gives.

Read by `skd.engine.evaluate` (validation during training, `skd-eval`) and the ablation script.

Two mIoU conventions are reported, each labelled, because they differ as soon as a class has no
pixel in a split (common on ADE20K's 150 classes, or on a few validation images):
- "mIoU" (original SKD): the mean over ALL K classes, a class with no ground-truth and no
  predicted pixel counting 0 (the original evaluate.py's `np.mean` over its IoU array).
- "mIoU_present" (cityscapesScripts, mmsegmentation, torchmetrics): the mean over the classes
  with tp + fp + fn > 0, i.e. present in the ground truth OR in the prediction. A class that is
  predicted but absent from the ground truth has IoU 0 and counts; only a class absent from
  both is left out:
    cityscapesScripts evaluation/evalPixelLevelSemanticLabeling.py: getIouScoreForLabel returns
      nan when tp + fp + fn == 0 and getScoreAverage averages the non-nan scores;
    mmsegmentation mmseg/evaluation/metrics/iou_metric.py: IoU = intersect / union (nan for a
      union of 0), then np.nanmean;
    torchmetrics (1.9) functional/classification/jaccard.py, _jaccard_index_reduce with
      average="macro": weight 0 where confmat.sum(0) + confmat.sum(1) == 0. (Older torchmetrics,
      e.g. the 2023 version of that file, averaged over all classes with 0 for absent ones.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from skd.errors import SkdError


class PredictionRangeError(SkdError, ValueError):
    """A predicted class id outside 0..K-1 reached the confusion matrix: the model and the
    dataset disagree on the number of classes. A ValueError too, for callers of the library."""


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of one batch: rows ground truth, columns prediction.

    pred, gt: integer tensors of the same shape (any), on the same device. Pixels whose ground
    truth is `ignore_index` (or otherwise outside [0, num_classes)) are left out. Every
    prediction must be a class id in [0, num_classes), at ignored pixels too: one outside is an
    error (PredictionRangeError naming the values), never clamped to a class. Returns an int64
    (num_classes, num_classes) tensor on the input's device.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(gt.shape)}")
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    outside = (pred < 0) | (pred >= num_classes)
    if outside.any().item():  # one device sync per batch
        bad = torch.unique(pred[outside])[:10].tolist()
        raise PredictionRangeError(
                f"predicted class ids {bad} are outside 0..{num_classes - 1} ({num_classes} "
                f"classes): the model predicts more classes than the dataset has; make "
                f"--num-classes match the dataset and the checkpoint")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    index = gt[keep] * num_classes + pred[keep]
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


def present_classes(confusion: torch.Tensor) -> torch.Tensor:
    """(K,) bool: the classes with a ground-truth or a predicted pixel (tp + fp + fn > 0)."""
    return (confusion.sum(0) + confusion.sum(1)) > 0


def miou_present(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction, the convention
    of cityscapesScripts, mmsegmentation and torchmetrics (module docstring); nan when no class
    is present (an empty matrix)."""
    per_class, _ = iou(confusion)
    present = present_classes(confusion)
    if not present.any():
        return float("nan")
    return per_class[present].mean().item()


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
        """JSON-ready dict.

        Keys: "mIoU" (mean over all classes, an absent class counting 0: the original SKD),
        "mIoU_present" (mean over classes with ground-truth or predicted pixels:
        cityscapesScripts, mmseg, torchmetrics; None when no class is present), "num_present",
        "absent_classes" (names with neither), "pixel_accuracy", "per_class" (IoU by name, 0
        for an absent class).
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class "
                             f"confusion matrix")
        per_class, miou = self.iou()
        present = present_classes(self.mat).tolist()
        miou_p = miou_present(self.mat)
        return {
            "mIoU": miou,
            "mIoU_present": None if miou_p != miou_p else miou_p,
            "num_present": sum(present),
            "absent_classes": [n for n, p in zip(class_names, present) if not p],
            "pixel_accuracy": pixel_accuracy(self.mat),
            "per_class": {name: float(v) for name, v in zip(class_names, per_class.tolist())},
        }


def format_table(summary: dict) -> str:
    """Per-class IoU table (percent) as aligned text, then both mIoU conventions, labelled.

    A class absent from ground truth and prediction shows "-" (0 in "mIoU", left out of
    "mIoU present"). Summaries without the present-class keys (older metrics.jsonl records)
    show the all-class mIoU only.
    """
    absent = set(summary.get("absent_classes", ()))
    width = max([15, *(len(name) for name in summary["per_class"])])
    rows = [f"{'class':<{width}} {'IoU':>6}"]
    rows += [f"{name:<{width}} {'-' if name in absent else f'{100 * v:6.2f}':>6}"
             for name, v in summary["per_class"].items()]
    k = len(summary["per_class"])
    rows.append(f"{'mIoU':<{width}} {100 * summary['mIoU']:6.2f}  over all {k} classes, "
                f"an absent class counting 0 (original SKD)")
    if "mIoU_present" in summary:
        value = summary["mIoU_present"]
        shown = "   nan" if value is None else f"{100 * value:6.2f}"
        rows.append(f"{'mIoU present':<{width}} {shown}  over the {summary['num_present']} "
                    f"classes in ground truth or prediction (cityscapesScripts, mmseg, "
                    f"torchmetrics)")
    return "\n".join(rows)
