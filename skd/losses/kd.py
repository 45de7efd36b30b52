"""Hinton knowledge distillation applied per pixel."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import check_same_shape, upcast


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Per-pixel KL divergence of the softened class distributions, a mean over pixels and batch.

        loss = t^2 / (B*H*W) * sum_{b,h,w} sum_c p^T * (log p^T - log p^S),  p = softmax(logits / t)

    `student_logits`, `teacher_logits`: (B, C, H, W), same size; the teacher is detached.
    Returns a scalar.
    """
    check_same_shape(student_logits, teacher_logits, "kd_loss")
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature={temperature} must be > 0")
    b, _, h, w = student_logits.shape
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(upcast(teacher_logits.detach()) / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * temperature**2 / (b * h * w)
