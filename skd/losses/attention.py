"""Attention transfer (AT, Zagoruyko and Komodakis, ICLR 2017), applied to dense maps.

Matches the authors' code, szagoruyko/attention-transfer utils.py lines 18-23 (`at`, `at_loss`),
which CIRKD repeats in losses/at.py lines 14-19 (`CriterionAT`, p = 2).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import autocast_off, check_same_grid, upcast


def attention_map(feat: Tensor) -> Tensor:
    """The L2-normalised spatial attention map of `feat` (B, C, H, W) -> (B, H*W).

        q[b, i] = mean_c feat[b, c, i]^2          (p = 2, position i over the H*W grid)
        a[b]    = q[b] / max(||q[b]||_2, 1e-12)

    The paper writes the channel SUM of |A_c|^p; the authors' code takes the channel MEAN of
    A_c^2. After the normalisation the two differ only by C inside the 1e-12 floor, which
    matters for an all-zero map alone (a = 0 either way); we take the mean, as the code does.
    Computed in float32 for half/bfloat16 inputs (float64 stays float64).
    """
    q = upcast(feat).pow(2).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1, eps=1e-12)


def attention_transfer_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Attention transfer: mean squared difference of the two normalised attention maps.

        loss = 1 / (B * H*W) * sum_{b,i} (a^S[b, i] - a^T[b, i])^2,   a = `attention_map`

    `student` (B, Cs, H, W) and `teacher` (B, Ct, H, W): logits or features of the same grid;
    the channel counts may differ (only the (H, W) maps are compared), the spatial sizes may not
    (no resizing is done here: the caller resizes one to the other, as neither AT's nor CIRKD's
    code resizes). The teacher is detached. Autocast is off inside; half/bfloat16 inputs are
    computed in float32 (float64 stays float64).

    Reduction: the authors' code, `(at(x) - at(y)).pow(2).mean()`, a mean over images and
    positions. The paper's beta = 1e3 "divided by the number of elements in the attention map
    and batch size" is this mean times 1e3 (it writes the norm of the difference, not its
    square; the code, which we follow, squares). Each image has the same H*W terms, so the
    value is a batch mean and exact under DDP gradient averaging (equal per-rank batches).
    Returns a scalar.
    """
    check_same_grid(student, teacher, "attention_transfer_loss")
    with autocast_off(student):
        a_s = attention_map(student)
        a_t = attention_map(teacher.detach())
        return (a_s - a_t).square().mean()
