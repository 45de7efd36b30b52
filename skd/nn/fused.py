"""Memory-lean autograd for the ResNet blocks when their norms are InPlace-ABN.

In the original SKD layout every norm in a residual block is InPlace-ABN with the identity
activation, followed by a separate ReLU. InPlace-ABN keeps only its output y, but the ReLU's
output relu(y) is a second activation-sized tensor kept for the next convolution, and the block
output relu(y3 + shortcut) a third next to y3. The two functions here compute the same values
and gradients while keeping fewer tensors:

* `relu_conv2d(y, conv)` = conv(relu(y)), keeping y (which the norm keeps anyway) and
  recomputing relu(y) in backward, which costs one elementwise pass.
* `max_pool2d_keep_input(y, pool)` = pool(y), keeping y instead of the int64 argmax indices
  and recomputing them in backward. The stem pools before its last ReLU (the two commute),
  so the pooling reads the norm's output.
* `abn_add_(x, norm, residual, relu_residual)` = identity-InPlace-ABN(x) + residual (or
  + relu(residual)), written into x. It keeps the sum s and the residual, both kept by others
  anyway, and recovers the norm's output in backward as y = s - residual (exact up to one
  rounding of s).

Chaining blocks on the pre-activation sums s (each block applies the ReLU of its input inside
`relu_conv2d` and `abn_add_`) leaves one kept tensor per convolution: see
`skd.models.resnet.ResLayer`. Same numbers as the plain layout, up to float rounding.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from skd.nn.inplace_abn import ABN_ACTIVATIONS, InPlaceABN, abn_backward, abn_forward_, keep_for_backward, ops_for


class _ReLUConv2d(torch.autograd.Function):
    """conv2d(relu(x), weight, bias); keeps x, not relu(x)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
    ) -> Tensor:
        # Under autocast F.conv2d casts its inputs; backward replays the same dtype.
        out = F.conv2d(F.relu(x), weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else bias.shape, out.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_shape, dtype = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out.to(dtype),
            F.relu(x).to(dtype),
            weight.to(dtype),
            None if bias_shape is None else list(bias_shape),
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0] * len(stride),
            groups,
            [need_x, need_w, need_b and bias_shape is not None],
        )
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype).masked_fill_(x <= 0, 0)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def relu_conv2d(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv(relu(x)) for an `nn.Conv2d` with numeric padding, keeping x rather than relu(x)."""
    return _ReLUConv2d.apply(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ABNAdd(torch.autograd.Function):
    """x <- batch_norm(x) + residual (or + relu(residual)), in place; keeps the sum and residual."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        residual: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        relu_residual: bool,
        training: bool,
        momentum: float,
        eps: float,
        group: dist.ProcessGroup | None,
        sync: bool,
        impl: str,
    ) -> Tensor:
        ops = ops_for(x, impl)
        act = ABN_ACTIVATIONS["identity"]
        invstd, count, distributed = abn_forward_(
            x, weight, bias, running_mean, running_var, training, momentum, eps, act, 0.0, group, sync, ops
        )
        x.add_(F.relu(residual) if relu_residual else residual)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, residual, weight, bias, invstd)
        keep_for_backward(ctx, ops, act, 0.0, training, count, distributed, group)
        ctx.relu_residual = relu_residual
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, ds: Tensor) -> tuple[Tensor | None, ...]:
        s, residual, weight, bias, invstd = ctx.saved_tensors
        shortcut = F.relu(residual) if ctx.relu_residual else residual
        y = s - shortcut
        del shortcut
        # abn_backward reads needs_input_grad[:3] as (x, weight, bias): the first three inputs.
        dx, grad_w, grad_b = abn_backward(ctx, y, ds, weight, bias, invstd)
        d_residual = None
        if ctx.needs_input_grad[3]:
            d_residual = ds.masked_fill(residual <= 0, 0) if ctx.relu_residual else ds
            d_residual = d_residual.to(residual.dtype)
        return (dx, grad_w, grad_b, d_residual) + (None,) * 9


def abn_add_(x: Tensor, norm: InPlaceABN, residual: Tensor, relu_residual: bool = False) -> Tensor:
    """`norm(x) + residual` (or `+ relu(residual)`) written into x, for an identity InPlace-ABN.

    Same values, running statistics and gradients as `norm(x) + residual`, keeping only the sum
    and the residual for backward; x is overwritten and returned.
    """
    if norm.activation != "identity":
        raise ValueError(f"abn_add_: the norm's activation is {norm.activation!r}; only 'identity' can be fused")
    return _ABNAdd.apply(
        x, norm.weight, norm.bias, residual, norm.running_mean, norm.running_var, relu_residual,
        norm.training, norm.momentum, norm.eps, norm.group, norm.sync, norm.impl,
    )


class _MaxPool2dKeepInput(torch.autograd.Function):
    """max_pool2d that keeps its input (kept by the norm anyway) instead of the argmax indices."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.conf = conf
        return F.max_pool2d(x, *conf)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None]:
        (x,) = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.conf
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, x, kernel, stride, padding, dilation, ceil_mode, indices
        )
        return grad_x, None


def max_pool2d_keep_input(x: Tensor, pool: nn.MaxPool2d) -> Tensor:
    """`pool(x)`, keeping x for backward and recomputing the argmax there (one more pooling pass)."""
    pair = torch.nn.modules.utils._pair
    conf = (pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding),
            pair(pool.dilation), pool.ceil_mode)
    return _MaxPool2dKeepInput.apply(x, conf)


def is_identity_abn(norm: nn.Module) -> bool:
    """Whether `norm` is InPlace-ABN without an activation (what `abn_add_` and the kept-output
    recomputations rely on)."""
    return isinstance(norm, InPlaceABN) and norm.activation == "identity"


def can_fuse(norm: nn.Module, relu: nn.Module) -> bool:
    """Whether (identity norm, ReLU) may take the fused path: the norm is InPlace-ABN."""
    return is_identity_abn(norm) and type(relu) is nn.ReLU
