"""InPlace-ABN (Rota Bulò et al., CVPR 2018): batch norm + activation that overwrites its input.

`InPlaceABN` computes the same function as `nn.BatchNorm2d` followed by the activation, with the
plain weight convention y = (x - mean) / sqrt(var + eps) * weight + bias (official SKD
checkpoints store `|weight| + eps` weights and are converted at load time by
`skd.models.checkpoint`). The memory saving: the result is written into the input's storage and
only that output is kept for backward. Backward inverts the activation to get y back, then the
normalised input xhat = (y - bias) / weight, and computes the input, weight and bias gradients.

Constraints that follow from that, and what you see when they are broken:

* The activation must be invertible: `leaky_relu` (slope > 0), `elu` (alpha = slope > 0) or
  `identity`. Plain ReLU is not; use `identity` and a separate out-of-place `nn.ReLU`. ELU is
  invertible only down to where its output rounds to -alpha (y below about -17 in float32, -8
  in float16, -6 in bfloat16); below that backward takes a finite stand-in for y, so such
  values get an approximate input gradient in training mode.
* The input is overwritten. If an earlier op saved it for its own backward (e.g. `x * x`, or a
  `sigmoid`), or a later op overwrites this layer's output (e.g. `nn.ReLU(inplace=True)`),
  backward raises PyTorch's "one of the variables needed for gradient computation has been
  modified by an inplace operation". Fix: give that op a copy (`x.clone()`) or make it out of
  place. A leaf tensor that requires grad cannot be the input at all ("a leaf Variable that
  requires grad is being used in an in-place operation").
* `weight` must be non-zero (xhat is divided by it). A zero channel weight gives non-finite
  gradients for that channel; it is not checked, because the check would need a device sync per
  layer. Tiny weights lose precision in xhat. Weights start at 1 and SGD does not land on 0.0
  exactly; the original's `|weight| + eps` convention avoided the division altogether.

`InPlaceABNSync` also all-reduces the statistics over a process group in training mode.

The C++/CUDA kernels come from `skd.ext`; without them the same algorithm runs in PyTorch.
Read by `skd.nn.norm.make_norm` ("inplace_abn", "inplace_abn_sync").
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from skd import ext
from skd.errors import SkdError
from skd.parallel import world_size

logger = logging.getLogger(__name__)

# Activation name -> code of skd::Activation in libs/src/skd_ext.h (the invertible ones only).
ABN_ACTIVATIONS = {"identity": 0, "leaky_relu": 1, "elu": 2}


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Statistics and per-channel maths run in float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """(C,) -> (1, C, 1, ...) broadcastable against x (B, C, *)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _TorchOps:
    """The kernels of libs/src written with PyTorch ops: same maths, same in-place contract."""

    @staticmethod
    def abn_stats(x: Tensor) -> tuple[Tensor, Tensor]:
        var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=_reduce_dims(x), correction=0)
        return mean, var

    @staticmethod
    def abn_forward_(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor, bias: Tensor, act: int, param: float) -> None:
        scale = invstd * weight
        x.mul_(_per_channel(scale, x)).add_(_per_channel(bias - mean * scale, x))
        if act == ABN_ACTIVATIONS["leaky_relu"]:
            torch.nn.functional.leaky_relu_(x, param)
        elif act == ABN_ACTIVATIONS["elu"]:
            torch.nn.functional.elu_(x, param)

    @staticmethod
    def _pre_activation(z: Tensor, dz: Tensor, weight: Tensor, bias: Tensor, act: int, param: float) -> tuple[Tensor, Tensor]:
        """(xhat, dy): the normalised input and the gradient before the activation."""
        z, dz = z.to(weight.dtype), dz.to(weight.dtype)
        y, dy = z, dz
        if act != ABN_ACTIVATIONS["identity"]:
            negative = z < 0
            if act == ABN_ACTIVATIONS["leaky_relu"]:
                y = torch.where(negative, z / param, z)
                dy = torch.where(negative, dz * param, dz)
            else:
                # Clamped as in libs/src/skd_ext.h: a saturated ELU (z = -alpha) must not give
                # y = -inf and NaN gradients.
                above_minus_one = -1 + torch.finfo(z.dtype).eps / 2
                y = torch.where(negative, torch.log1p((z / param).clamp_min(above_minus_one)), z)
                dy = torch.where(negative, dz * (z + param), dz)
        return (y - _per_channel(bias, z)) / _per_channel(weight, z), dy

    @staticmethod
    def abn_backward_reduce(z: Tensor, dz: Tensor, weight: Tensor, bias: Tensor, act: int, param: float) -> tuple[Tensor, Tensor]:
        xhat, dy = _TorchOps._pre_activation(z, dz, weight, bias, act, param)
        dims = _reduce_dims(z)
        return dy.sum(dims), (dy * xhat).sum(dims)

    @staticmethod
    def abn_backward_apply(
        z: Tensor, dz: Tensor, invstd: Tensor, weight: Tensor, bias: Tensor, mean_dy: Tensor, mean_dy_xhat: Tensor, act: int, param: float
    ) -> Tensor:
        xhat, dy = _TorchOps._pre_activation(z, dz, weight, bias, act, param)
        dx = (dy - _per_channel(mean_dy, z) - xhat * _per_channel(mean_dy_xhat, z)) * _per_channel(weight * invstd, z)
        return dx.to(z.dtype)


def ops_for(x: Tensor, impl: str) -> Any:
    """The extension module when it can run x (`skd.ext.kernels_for`), else `_TorchOps`."""
    return ext.kernels_for(x, impl, "inplace_abn") or _TorchOps


def _global_stats(mean: Tensor, var: Tensor, count: int, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and element count over all ranks of `group`, from each rank's own.

    Each rank contributes (count, mean, var) rather than (count, sum, sum of squares): combining
    per-rank means and variances (Chan et al.) does not cancel the way sum(x^2) - n mean^2 does.
    One all-gather in float64; the ranks may hold different batch sizes. The count stays a
    tensor, so nothing waits for the device.
    """
    channels = mean.numel()
    packet = torch.cat([mean.double(), var.double(), mean.new_full((1,), float(count), dtype=torch.float64)])
    parts = [torch.empty_like(packet) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, packet, group=group)
    table = torch.stack(parts)
    n = table[:, 2 * channels :]
    total = n.sum()
    g_mean = (n * table[:, :channels]).sum(0) / total
    g_var = (n * (table[:, channels : 2 * channels] + (table[:, :channels] - g_mean) ** 2)).sum(0) / total
    return g_mean.to(mean.dtype), g_var.to(var.dtype), total


def abn_forward_(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    act: int,
    slope: float,
    group: dist.ProcessGroup | None,
    sync: bool,
    ops: Any,
) -> tuple[Tensor, int | Tensor, bool]:
    """Overwrite x with act(batch_norm(x)); update the running statistics in training mode.

    Returns (invstd, count, distributed): what backward needs besides the output, weight and
    bias. `count` is the number of values per channel the statistics cover (all ranks).
    """
    stat_dtype = _stat_dtype(x)
    w = weight.detach().to(stat_dtype).contiguous()
    b = bias.detach().to(stat_dtype).contiguous()
    # The kernels want contiguous memory; other layouts run on a copy that is copied back.
    work = x if ops is _TorchOps or x.is_contiguous() else x.contiguous()
    distributed = sync and training and world_size(group) > 1

    if training:
        count: int | Tensor = x.numel() // x.shape[1]
        if count <= 1 and not distributed:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        mean, var = ops.abn_stats(work)
        if distributed:
            mean, var, count = _global_stats(mean, var, int(count), group)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                # Unbiased variance in the running estimate, as nn.BatchNorm2d does.
                dof = count - 1 if isinstance(count, int) else (count - 1).clamp_min(1)
                unbiased = var * (count / dof)
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("inplace_abn in eval mode needs running_mean and running_var")
        mean, var = running_mean.to(stat_dtype), running_var.to(stat_dtype)
        count = 0
    invstd = torch.rsqrt(var + eps).contiguous()
    ops.abn_forward_(work, mean.contiguous(), invstd, w, b, act, slope)
    if work is not x:
        x.copy_(work)
    return invstd, count, distributed


def keep_for_backward(ctx: Any, ops: Any, act: int, slope: float, training: bool, count: int | Tensor,
                       distributed: bool, group: dist.ProcessGroup | None) -> None:
    """Store on ctx what `abn_backward` reads besides the saved tensors."""
    ctx.ops, ctx.act, ctx.slope, ctx.training = ops, act, slope, training
    ctx.count, ctx.distributed, ctx.group = count, distributed, group


def abn_backward(ctx: Any, z: Tensor, dz: Tensor, weight: Tensor, bias: Tensor, invstd: Tensor) -> tuple[Tensor | None, ...]:
    """(dx, dweight, dbias) of act(batch_norm(x)) from its output z and the output gradient dz.

    `ctx` carries what `abn_forward_` decided (ops, act, slope, training, count, distributed,
    group) and `needs_input_grad` for (x, weight, bias) in its first three entries.
    """
    ops = ctx.ops
    stat_dtype = invstd.dtype
    w = weight.to(stat_dtype).contiguous()
    b = bias.to(stat_dtype).contiguous()
    if ops is not _TorchOps:
        z, dz = z.contiguous(), dz.contiguous()
    if dz.dtype != z.dtype:
        dz = dz.to(z.dtype)

    # Per-channel sums over this rank's batch: they are the weight and bias gradients (DDP
    # then averages those over ranks, like every other parameter's).
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if ctx.training or need_w or need_b:
        sum_dy, sum_dy_xhat = ops.abn_backward_reduce(z, dz, w, b, ctx.act, ctx.slope)
    dx = None
    if need_x:
        if ctx.training:
            g_sum_dy, g_sum_dy_xhat = sum_dy, sum_dy_xhat
            if ctx.distributed:
                both = torch.stack([sum_dy, sum_dy_xhat])
                dist.all_reduce(both, group=ctx.group)
                g_sum_dy, g_sum_dy_xhat = both[0], both[1]
            mean_dy = (g_sum_dy / ctx.count).contiguous()
            mean_dy_xhat = (g_sum_dy_xhat / ctx.count).contiguous()
        else:
            # Running statistics are constants: no batch terms in the input gradient.
            mean_dy = mean_dy_xhat = torch.zeros_like(w)
        dx = ops.abn_backward_apply(z, dz, invstd, w, b, mean_dy, mean_dy_xhat, ctx.act, ctx.slope)
    grad_w = sum_dy_xhat.to(weight.dtype) if need_w else None
    grad_b = sum_dy.to(bias.dtype) if need_b else None
    return dx, grad_w, grad_b


class _InPlaceABNFunction(torch.autograd.Function):
    """Autograd of InPlace-ABN; see the module docstring. Returns x itself, overwritten."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        activation: str,
        slope: float,
        group: dist.ProcessGroup | None,
        sync: bool,
        impl: str,
    ) -> Tensor:
        ops = ops_for(x, impl)
        act = ABN_ACTIVATIONS[activation]
        invstd, count, distributed = abn_forward_(
            x, weight, bias, running_mean, running_var, training, momentum, eps, act, slope, group, sync, ops
        )
        ctx.mark_dirty(x)
        # x now holds the output: the only activation-sized tensor kept for backward.
        ctx.save_for_backward(x, weight, bias, invstd)
        keep_for_backward(ctx, ops, act, slope, training, count, distributed, group)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dz: Tensor) -> tuple[Tensor | None, ...]:
        z, weight, bias, invstd = ctx.saved_tensors
        return abn_backward(ctx, z, dz, weight, bias, invstd) + (None,) * 10


def check_abn_options(num_features: int, activation: str, slope: float, momentum: float) -> None:
    if activation not in ABN_ACTIVATIONS:
        hint = " (ReLU is not invertible: use 'identity' then nn.ReLU, or 'leaky_relu')" if activation == "relu" else ""
        raise SkdError(f"InPlace-ABN activation {activation!r}: unsupported{hint}; use one of {', '.join(ABN_ACTIVATIONS)}")
    if activation != "identity" and not slope > 0:
        raise SkdError(f"InPlace-ABN {activation} with slope {slope}: must be > 0 so that backward can invert it")
    if num_features < 1:
        raise SkdError(f"InPlace-ABN num_features={num_features}: must be >= 1")
    if not 0.0 <= momentum <= 1.0:
        raise SkdError(f"InPlace-ABN momentum={momentum}: must be in [0, 1]")


def inplace_abn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "leaky_relu",
    slope: float = 0.01,
    sync: bool = False,
    group: dist.ProcessGroup | None = None,
    impl: str = "auto",
) -> Tensor:
    """act(batch_norm(x)) written into x, which is returned; x (B, C, *) -> (B, C, *).

    Training mode normalises with the batch statistics (over B and the trailing dims) and
    updates the running ones in place (momentum, unbiased variance); eval mode uses the running
    statistics. With `sync`, training statistics cover all ranks of `group` (default group).
    `impl`: "auto" (extension when built, else PyTorch), "ext" or "torch".
    """
    check_abn_options(weight.numel(), activation, slope, momentum)
    if x.dim() < 2 or x.shape[1] != weight.numel():
        raise ValueError(f"inplace_abn: input of shape {tuple(x.shape)}; expected (B, {weight.numel()}, *)")
    return _InPlaceABNFunction.apply(
        x, weight, bias, running_mean, running_var, training, momentum, eps, activation, slope, group, sync, impl
    )


class InPlaceABN(nn.Module):
    """BatchNorm + activation in place, (B, C, *) -> (B, C, *), the input's storage reused.

    Same result as `nn.BatchNorm2d(num_features, eps, momentum)` followed by the activation
    (`leaky_relu` with negative slope `slope`, `elu` with alpha `slope`, or `identity`), also
    for (B, C) inputs. State: weight, bias, running_mean, running_var (no num_batches_tracked;
    one in a loaded state dict is ignored). See the module docstring for what in-place implies.
    """

    def __init__(
        self,
        num_features: int,
        activation: str = "leaky_relu",
        slope: float = 0.01,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        check_abn_options(num_features, activation, slope, momentum)
        self.num_features = num_features
        self.activation = activation
        self.slope = slope
        self.eps = eps
        self.momentum = momentum
        # "auto" | "ext" | "torch": which implementation runs (see `inplace_abn`).
        self.impl = "auto"
        self.sync = False
        self.group: dist.ProcessGroup | None = None
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return inplace_abn(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.training,
            self.momentum,
            self.eps,
            self.activation,
            self.slope,
            sync=self.sync,
            group=self.group,
            impl=self.impl,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # BatchNorm checkpoints carry a batch counter that this layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, activation={self.activation}, slope={self.slope}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )


class InPlaceABNSync(InPlaceABN):
    """InPlaceABN whose training statistics cover every rank of a process group.

    Forward all-gathers each rank's (count, mean, variance); backward all-reduces the sums of dy
    and dy * xhat. Works with gloo (CPU) and NCCL (CUDA); the ranks may hold different batch
    sizes. Weight and bias gradients are this rank's share, as with nn.SyncBatchNorm (DDP sums
    or averages them). Without an initialised process group, or with one rank, it is InPlaceABN.
    `group`: the process group, default the default group.
    """

    def __init__(
        self,
        num_features: int,
        activation: str = "leaky_relu",
        slope: float = 0.01,
        eps: float = 1e-5,
        momentum: float = 0.1,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_features, activation, slope, eps, momentum)
        self.sync = True
        self.group = group
