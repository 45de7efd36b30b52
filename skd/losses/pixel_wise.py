"""Pixel-wise distillation (the paper's pi term): per-pixel cross-entropy to the teacher's softmax."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import check_same_shape, upcast


def pixel_wise_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Pixel-wise distillation, summed over the batch and divided by H*W only.

        loss = t^2 / (H*W) * sum_{b,h,w} sum_c -softmax(T/t)[b,c,h,w] * log_softmax(S/t)[b,c,h,w]

    `student_logits`, `teacher_logits`: (B, C, H, W), same size. The teacher is detached.
    The original divides by H*W but not by B (the per-image mean summed over images), so the
    value grows with the batch; t = 1 is the original, t != 1 (with the t^2 factor) our
    extension. Returns a scalar in float32 (float64 for float64 inputs).
    """
    check_same_shape(student_logits, teacher_logits, "pixel_wise_loss")
    if temperature <= 0:
        raise ValueError(f"pixel_wise_loss: temperature={temperature} must be > 0")
    _, _, h, w = student_logits.shape
    s = upcast(student_logits) / temperature
    t = upcast(teacher_logits.detach()) / temperature
    cross_entropy = -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum()
    return cross_entropy / (h * w) * temperature**2
