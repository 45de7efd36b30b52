"""Pixel-wise distillation (the paper's pi term): per-pixel cross-entropy to the teacher's softmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _upcast(x: Tensor) -> Tensor:
    """`x` in float32 if it is half or bfloat16, else unchanged (float64 stays float64).

    The distillation terms sum many small products; under autocast the logits arrive in half
    precision, where those sums lose digits the original (float32) never lost.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be "
            "(B, C, H, W) of the same size; resize one to the other before the loss"
        )


def pixel_wise_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Pixel-wise distillation, summed over the batch and divided by H*W only.

        loss = t^2 / (H*W) * sum_{b,h,w} sum_c -softmax(T/t)[b,c,h,w] * log_softmax(S/t)[b,c,h,w]

    `student_logits`, `teacher_logits`: (B, C, H, W), same size. The teacher is detached.
    The original divides by H*W but not by B (the per-image mean summed over images), so the
    value grows with the batch; t = 1 is the original, t != 1 (with the t^2 factor) our
    extension. Returns a scalar in float32 (float64 for float64 inputs).
    """
    _check_same_shape(student_logits, teacher_logits, "pixel_wise_loss")
    if temperature <= 0:
        raise ValueError(f"pixel_wise_loss: temperature={temperature} must be > 0")
    _, _, h, w = student_logits.shape
    s = _upcast(student_logits) / temperature
    t = _upcast(teacher_logits.detach()) / temperature
    cross_entropy = -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum()
    return cross_entropy / (h * w) * temperature**2


class PixelWiseLoss(nn.Module):
    """Holds the temperature for `pixel_wise_loss`."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return pixel_wise_loss(student_logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
