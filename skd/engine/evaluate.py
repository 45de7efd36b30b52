"""Whole-image and sliding-window inference, multi-scale and flip; mIoU over a dataset.

Read by `skd.train` (periodic validation), `skd.evaluate` (skd-eval) and `skd.predict` (skd-test).
Images are evaluated one at a time at their full size (1024x2048 on Cityscapes); under DDP each
rank takes every world_size-th image and the confusion matrices are summed.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from skd.metrics import ConfusionMatrix


def _logits_at(model: nn.Module, x: torch.Tensor, size: tuple[int, int], autocast) -> torch.Tensor:
    """Model logits for x (1,3,h,w), upsampled (align_corners=True) to `size`, float32."""
    with autocast():
        logits = model(x).logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)


def _sliding(model: nn.Module, x: torch.Tensor, num_classes: int, crop: tuple[int, int], autocast) -> torch.Tensor:
    """Tiles of `crop` with 1/3 overlap; tiles padded with 0 at the bottom/right; the logits of
    overlapping tiles are averaged. Returns (1, C, H, W)."""
    _, _, h, w = x.shape
    ch, cw = crop
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
            out = _logits_at(model, tile, (ch, cw), autocast)
            total[:, :, y0:y0 + th, x0:x0 + tw] += out[:, :, :th, :tw]
            count[:, :, y0:y0 + th, x0:x0 + tw] += 1
    return total / count


@torch.inference_mode()
def predict(model: nn.Module, image: torch.Tensor, num_classes: int, mode: str = "whole",
            scales: tuple[float, ...] = (1.0,), flip: bool = False, crop: tuple[int, int] = (512, 512),
            autocast=contextlib.nullcontext) -> torch.Tensor:
    """Class probabilities (1, C, H, W) for one image (1, 3, H, W), model in eval mode.

    Single scale without flip returns the softmax of the upsampled logits (the original); with
    several scales and/or flip the softmax maps are averaged.
    """
    h, w = image.shape[2:]
    probs = image.new_zeros(1, num_classes, h, w)
    for s in scales:
        x = image if s == 1.0 else F.interpolate(
            image, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=True)
        views = [x, x.flip(3)] if flip else [x]
        for i, v in enumerate(views):
            logits = (_logits_at(model, v, v.shape[2:], autocast) if mode == "whole"
                      else _sliding(model, v, num_classes, crop, autocast))
            if i == 1:
                logits = logits.flip(3)
            if logits.shape[2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
            probs += logits.softmax(1)
    return probs / (len(scales) * (2 if flip else 1))


def evaluate(model: nn.Module, dataset, device: torch.device, num_classes: int, mode: str = "whole",
             scales: tuple[float, ...] = (1.0,), flip: bool = False, crop: tuple[int, int] = (512, 512),
             rank: int = 0, world_size: int = 1, max_images: int = 0, progress: bool = False,
             channels_last: bool = False, autocast=contextlib.nullcontext) -> ConfusionMatrix:
    """Confusion matrix of `model` over `dataset` (items (image, label, name)), reduced over ranks."""
    was_training = model.training
    model.eval()
    conf = ConfusionMatrix(num_classes, device=device)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    indices = range(rank, n, world_size)
    for i in tqdm(indices, desc="eval", disable=not progress, leave=False):
        image, label, _ = dataset[i]
        image = image.unsqueeze(0).to(device)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        probs = predict(model, image, num_classes, mode, scales, flip, crop, autocast)
        conf.update(probs.argmax(1)[0], label.to(device))
    conf.reduce()
    model.train(was_training)
    return conf
