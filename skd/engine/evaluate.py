"""Whole-image and sliding-window inference, multi-scale and flip; mIoU over a dataset.

Read by skd.train (periodic validation), skd.evaluate (skd-eval) and skd.predict (skd-test).
Images are evaluated one at a time at their full size (1024x2048 on Cityscapes); under DDP each
rank takes every world_size-th image and the confusion matrices are summed. Images arrive raw
(float32 BGR 0..255) and are normalised the way the model expects (`model.input_spec`); logits
are upsampled with the model's align_corners.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from skd.engine.steps import input_spec
from skd.metrics import ConfusionMatrix

AVERAGES = ("logits", "probs")


@dataclass(frozen=True)
class Inference:
    """How to predict an image: mode "whole" or "sliding" (tiles of `crop` with 1/3 overlap),
    the scales, the flip, what several views average ("logits", the original's, or "probs"), the
    autocast factory and the memory format."""

    mode: str = "whole"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop: tuple[int, int] = (512, 512)
    average: str = "logits"
    autocast: object = contextlib.nullcontext
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "sliding"):
            raise ValueError(f"Inference: mode {self.mode!r}; expected whole or sliding")
        if self.average not in AVERAGES:
            raise ValueError(f"Inference: average {self.average!r}; expected one of {AVERAGES}")


def _logits_at(model: nn.Module, x: torch.Tensor, size: tuple[int, int], how: Inference) -> torch.Tensor:
    """Model logits for a normalised x (1, 3, h, w), upsampled to `size` in float32."""
    if how.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with how.autocast():
        logits = model(x).logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=input_spec(model).align_corners)


def _sliding(model: nn.Module, x: torch.Tensor, num_classes: int, how: Inference) -> torch.Tensor:
    """Tiles of `how.crop` with 1/3 overlap, padded with 0 (in normalised space) at the bottom
    and right; the logits of overlapping tiles are averaged (the original's predict_sliding,
    networks/evaluate.py lines 70-104). Returns (1, C, H, W)."""
    _, _, h, w = x.shape
    ch, cw = how.crop
    sh, sw = math.ceil(ch * 2 / 3), math.ceil(cw * 2 / 3)
    rows = max(math.ceil((h - ch) / sh), 0) + 1
    cols = max(math.ceil((w - cw) / sw), 0) + 1
    total = x.new_zeros(1, num_classes, h, w)
    count = x.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * sh, max(h - ch, 0))
            x0 = min(c * sw, max(w - cw, 0))
            tile = x[:, :, y0:y0 + ch, x0:x0 + cw]
            th, tw = tile.shape[2:]
            tile = F.pad(tile, (0, cw - tw, 0, ch - th))
            out = _logits_at(model, tile, (ch, cw), how)
            total[:, :, y0:y0 + th, x0:x0 + tw] += out[:, :, :th, :tw]
            count[:, :, y0:y0 + th, x0:x0 + tw] += 1
    return total / count


@torch.inference_mode()
def predict(model: nn.Module, image: torch.Tensor, num_classes: int, how: Inference = Inference()) -> torch.Tensor:
    """Class scores (1, C, H, W) for one raw image (1, 3, H, W), model in eval mode.

    Each scale s resizes the normalised image to round(s*H) x round(s*W) (bilinear); each view's
    logits are upsampled to (H, W). With how.average "logits" (the original's
    predict_multiscale, networks/evaluate.py lines 115-134, which averages the flipped view's
    logits too) the result is the mean of the upsampled logits; with "probs", the mean of their
    softmax maps. Argmax of either is the prediction.
    """
    h, w = image.shape[2:]
    x0 = input_spec(model).normalize(image)
    total = x0.new_zeros(1, num_classes, h, w)
    for s in how.scales:
        x = x0 if s == 1.0 else F.interpolate(
            x0, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=True)
        views = [x, x.flip(3)] if how.flip else [x]
        for i, v in enumerate(views):
            logits = (_logits_at(model, v, v.shape[2:], how) if how.mode == "whole"
                      else _sliding(model, v, num_classes, how))
            if i == 1:
                logits = logits.flip(3)
            if logits.shape[2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear",
                                       align_corners=input_spec(model).align_corners)
            total += logits if how.average == "logits" else logits.softmax(1)
    return total / (len(how.scales) * (2 if how.flip else 1))


def evaluate(model: nn.Module, dataset, *, device: torch.device, num_classes: int, how: Inference = Inference(),
             rank: int = 0, world_size: int = 1, max_images: int = 0, progress: bool = False,
             on_image: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, str], None] | None = None
             ) -> ConfusionMatrix:
    """Confusion matrix of `model` over `dataset` (items (raw image, label, name)), summed over ranks.

    `on_image(index, raw image (3, H, W), label (H, W), prediction (H, W), name)` is called for
    each image this rank evaluates (skd-eval's --vis panels)."""
    was_training = model.training
    model.eval()
    conf = ConfusionMatrix(num_classes, device=device)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    for i in tqdm(range(rank, n, world_size), desc="eval", disable=not progress, leave=False):
        image, label, name = dataset[i]
        scores = predict(model, image.unsqueeze(0).to(device), num_classes, how)
        pred = scores.argmax(1)[0]
        conf.update(pred, label.to(device))
        if on_image is not None:
            on_image(i, image, label, pred, name)
    conf.reduce()
    model.train(was_training)
    return conf
