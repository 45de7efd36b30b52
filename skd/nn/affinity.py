"""Fused pair-wise affinity distance, the core of the pair-wise distillation loss.

`affinity_distance(s, t)` gives, per image, sum_{i,j} (t_i.t_j - s_i.s_j)^2 without ever
holding the two N x N similarity graphs: the C++/CUDA kernels of `skd.ext` go tile by tile, and
the PyTorch fallback goes a block of rows at a time. The gradients are computed in the same pass
and kept (they are the size of s and t) so backward is one multiplication. Read by
`skd.losses.pair_wise` (impl="ext").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from skd import ext

# Fallback: elements of one (B, rows, N) block of the graph difference, 16 MiB in float32.
_BLOCK_ELEMENTS = 1 << 22


def _affinity_torch(s: Tensor, t: Tensor, grad_s: bool, grad_t: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Same contract as the extension's affinity_forward, a block of rows at a time."""
    batch, n = s.shape[:2]
    rows = max(1, min(n, _BLOCK_ELEMENTS // max(1, batch * n)))
    loss = torch.zeros(batch, dtype=torch.float64, device=s.device)
    gs = torch.empty_like(s) if grad_s else None
    gt = torch.empty_like(t) if grad_t else None
    s_t, t_t = s.transpose(1, 2), t.transpose(1, 2)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        # d = T_i T^T - S_i S^T: rows i0..i1 of the graph difference, (B, rows, N).
        d = torch.baddbmm(torch.bmm(t[:, i0:i1], t_t), s[:, i0:i1], s_t, beta=1, alpha=-1)
        loss += d.square().sum(dim=(1, 2), dtype=torch.float64)
        if gs is not None:
            gs[:, i0:i1] = torch.bmm(d, s).mul_(-4)
        if gt is not None:
            gt[:, i0:i1] = torch.bmm(d, t).mul_(4)
    return loss.to(s.dtype), gs, gt


class _AffinityDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, s: Tensor, t: Tensor, grad_s: bool, grad_t: bool, module: Any) -> Tensor:  # type: ignore[override]
        if module is not None:
            loss, gs, gt = module.affinity_forward(s.contiguous(), t.contiguous(), grad_s, grad_t)
        else:
            loss, gs, gt = _affinity_torch(s, t, grad_s, grad_t)
        ctx.save_for_backward(gs, gt)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gs, gt = ctx.saved_tensors
        scale = grad.view(-1, 1, 1)
        return (
            gs * scale if gs is not None and ctx.needs_input_grad[0] else None,
            gt * scale if gt is not None and ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )


def affinity_distance(s: Tensor, t: Tensor, impl: str = "auto") -> Tensor:
    """Per-image squared distance between the node-similarity graphs of s and t.

        loss_b = sum_{i,j} (t_i . t_j - s_i . s_j)^2,   d/ds_i = -4 sum_j (t_i.t_j - s_i.s_j) s_j

    s (B, N, Cs) and t (B, N, Ct) are the (already L2-normalised) node features of the student
    and teacher; Cs and Ct may differ. Returns (B,) in float32 (float64 if either input is
    float64; half inputs are computed in float32). Differentiable w.r.t. s and t (the teacher is
    normally detached, and then no gradient is computed for it); not twice differentiable.
    `impl`: "auto" (extension when built, else PyTorch), "ext" or "torch".
    """
    if s.dim() != 3 or t.dim() != 3 or s.shape[:2] != t.shape[:2]:
        raise ValueError(
            f"affinity_distance: s {tuple(s.shape)} and t {tuple(t.shape)} must be (B, N, Cs) and (B, N, Ct)"
        )
    if s.device != t.device:
        raise ValueError(f"affinity_distance: s on {s.device} but t on {t.device}")
    dtype = torch.float64 if torch.float64 in (s.dtype, t.dtype) else torch.float32
    s, t = s.to(dtype), t.to(dtype)
    module = ext.kernels_for(s, impl, "affinity_distance")
    grad_enabled = torch.is_grad_enabled()
    return _AffinityDistance.apply(s, t, grad_enabled and s.requires_grad, grad_enabled and t.requires_grad, module)
