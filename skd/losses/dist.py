"""DIST (Huang et al. 2022): inter- and intra-class Pearson correlation of class distributions."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import check_same_shape, upcast


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows of a, b (R, K) -> (R,): cosine of the mean-centred rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0
) -> Tensor:
    """DIST for dense prediction.

        p      = softmax(logits / tau) over classes, reshaped to (P, K), P = B*H*W pixels
        inter  = 1 - mean over the P pixels of pearson(p^S[pixel, :], p^T[pixel, :])
        intra  = 1 - mean over the K classes of pearson(p^S[:, class], p^T[:, class])
        loss   = tau^2 * (beta * inter + gamma * intra)

    pearson(a, b) = (a - mean a).(b - mean b) / (||a - mean a|| * ||b - mean b|| + 1e-8).
    `student_logits`, `teacher_logits`: (B, K, H, W), same size; the teacher is detached.
    The tau^2 factor follows the DIST authors' code (which multiplies both terms by tau^2); the
    segmentation version has no temperature, i.e. tau = 1, where the factor is 1. The intra term
    correlates over every pixel of the batch given, so under DDP it is per rank. Returns a scalar.
    """
    check_same_shape(student_logits, teacher_logits, "dist_loss")
    if tau <= 0:
        raise ValueError(f"dist_loss: tau={tau} must be > 0")
    k = student_logits.shape[1]
    p_s = F.softmax(upcast(student_logits) / tau, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    p_t = F.softmax(upcast(teacher_logits.detach()) / tau, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    inter = 1.0 - _pearson_rows(p_s, p_t).mean()
    intra = 1.0 - _pearson_rows(p_s.t(), p_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)
