"""Local affinity distillation (the CWD paper's LOCAL baseline): match each position's
Euclidean distances to its 8 neighbours.

No official code exists for it: neither the CWD authors' code (irfanICMLL/TorchDistiller
SemSeg-distill, pppppM/mmsegmentation-distiller) nor CIRKD (winycg/CIRKD losses/) nor IFVD
(YukangWang/IFVD) has a LOCAL loss. The definition below follows the CWD paper's description
(Shu et al., ICCV 2021, section 2: "a local similarity map ... where the Euclidean distance
between the center pixel and the 8-neighborhood pixels is used as knowledge for transferring",
citing its reference [34], the paper on first-order knowledge of Xie et al., BMVC 2018); the
reduction and border handling are our choices, stated in `local_affinity_loss`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from skd.losses.common import autocast_off, check_same_grid, upcast

# Half of the 8-neighbourhood, as (dy, dx): right, down, down-right, down-left. The other four
# offsets give the same pairs the other way round, with the same distance.
HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def _shift_pairs(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """The two ends of every in-map pair (p, p + (dy, dx)) of `x` (B, C, H, W), dy >= 0."""
    h, w = x.shape[2:]
    rows_a, rows_b = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        cols_a, cols_b = slice(0, w - dx), slice(dx, w)
    else:
        cols_a, cols_b = slice(-dx, w), slice(0, w + dx)
    return x[:, :, rows_a, cols_a], x[:, :, rows_b, cols_b]


def neighbour_distances(feat: Tensor) -> list[Tensor]:
    """Euclidean distances ||x_p - x_q||_2 over the channels, for every in-map neighbour pair.

    `feat` (B, C, H, W) -> one map per offset of `HALF_NEIGHBOURHOOD`: (B, H, W-1), (B, H-1, W),
    (B, H-1, W-1), (B, H-1, W-1). The norm's gradient at a zero difference is 0 (not NaN).
    """
    out = []
    for dy, dx in HALF_NEIGHBOURHOOD:
        a, b = _shift_pairs(feat, dy, dx)
        out.append(torch.linalg.vector_norm(a - b, dim=1))
    return out


def local_affinity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """LOCAL: mean squared difference of the two networks' 8-neighbour distance maps.

        d[b, p, q] = ||x[b, :, p] - x[b, :, q]||_2          for q one of the 8 neighbours of p
        loss       = 1 / (B * P) * sum_b sum_{(p, q) in map} (d^S[b, p, q] - d^T[b, p, q])^2

    Border: only neighbours inside the map count (no padding; a corner has 3, an edge 5, an
    inner position 8), and P is the number of such ordered pairs per image,
    P = 2 H (W-1) + 2 (H-1) W + 4 (H-1)(W-1). Each unordered pair appears twice with the same
    distance, so the value is computed over the four offsets right, down, down-right and
    down-left, and equals the mean over all 8. A 1x1 map has no pairs: the loss is 0.

    `student` (B, Cs, H, W) and `teacher` (B, Ct, H, W), logits or features of the same grid;
    channel counts may differ (only distances are compared). The teacher is detached. Autocast
    is off inside; half/bfloat16 inputs are computed in float32 (float64 stays float64).
    Each image has the same P terms, so the value is a batch mean and exact under DDP gradient
    averaging (equal per-rank batches). Returns a scalar.
    """
    check_same_grid(student, teacher, "local_affinity_loss")
    b, _, h, w = student.shape
    pairs = 2 * h * (w - 1) + 2 * (h - 1) * w + 4 * (h - 1) * (w - 1)
    with autocast_off(student):
        s = upcast(student)
        if pairs == 0:
            return s.sum() * 0.0
        d_s = neighbour_distances(s)
        d_t = neighbour_distances(upcast(teacher.detach()))
        # Each of the four offsets stands for two of the eight: 2 * total / (B * P).
        total = sum((ds - dt).square().sum() for ds, dt in zip(d_s, d_t))
        return 2.0 * total / (b * pairs)
