"""Norm layers with a fused activation, and `make_norm`, which picks one from the `--norm` flag.

The models take a `norm_layer` constructor `(num_features, activation=..., slope=...)` so that
InPlace-ABN (`skd.nn.inplace_abn`) can replace batch norm without touching the model files.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from skd.errors import SkdError
from skd.parallel import world_size

NORM_ACTIVATIONS = ("leaky_relu", "elu", "relu", "identity")
NORMS = ("bn", "syncbn", "inplace_abn", "inplace_abn_sync")


def apply_activation(x: torch.Tensor, activation: str, slope: float) -> torch.Tensor:
    """Apply `activation` out of place; `slope` is leaky ReLU's negative slope (or ELU's alpha)."""
    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope=slope)
    if activation == "elu":
        return F.elu(x, alpha=slope)
    if activation == "relu":
        return F.relu(x)
    return x


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation: (B, C, H, W) -> (B, C, H, W).

    The state dict is exactly BatchNorm2d's (weight, bias, running_mean, running_var,
    num_batches_tracked), so checkpoints move freely between this and a plain BatchNorm2d.
    """

    def __init__(
        self,
        num_features: int,
        activation: str = "leaky_relu",
        slope: float = 0.01,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        if activation not in NORM_ACTIVATIONS:
            raise SkdError(f"norm activation {activation!r}: unknown; use one of {', '.join(NORM_ACTIVATIONS)}")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.activation = activation
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(super().forward(x), self.activation, self.slope)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, slope={self.slope}"


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the default process group.

    The gradient of a sum that every rank uses is the sum of every rank's gradient, hence the
    all-reduce in backward. Same maths as `torch.distributed.nn.functional.all_reduce`, which
    torch 2.13 deprecates (a warning per call site) and refuses under torch.compile.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNormAct2d(BatchNormAct2d):
    """BatchNormAct2d whose training-mode statistics cover the whole global batch.

    Each rank contributes the per-channel sum, sum of squares and count of its (B, C, H, W)
    input; one all-reduce over the default process group (gloo or NCCL) gives the global mean
    and biased variance used for normalisation, and the running variance gets the unbiased
    global estimate, as BatchNorm does. With no process group, or a group of one, it is exactly
    BatchNormAct2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"SyncBatchNormAct2d expects (B, C, H, W), got shape {tuple(x.shape)}")
        channels = x.shape[1]
        # Statistics in float32 even under autocast: E[x^2] - E[x]^2 cancels badly in half.
        xf = x.float()
        count = torch.full((1,), float(xf.numel() // channels), device=x.device)
        local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        total = _AllReduceSum.apply(local)
        n = total[2 * channels]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)

        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum
                if factor is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight.float()
            shift = shift * self.weight.float() + self.bias.float()
        y = xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return apply_activation(y.to(x.dtype), self.activation, self.slope)


def make_norm(name: str) -> Callable[..., nn.Module]:
    """Constructor `(num_features, activation="leaky_relu", slope=0.01) -> nn.Module` for `--norm`.

    `bn`: BatchNormAct2d; `syncbn`: SyncBatchNormAct2d; `inplace_abn` / `inplace_abn_sync`: the
    InPlace-ABN layers of `skd.nn.inplace_abn`, imported only when asked for because they build
    a C++/CUDA extension.
    """
    if name == "bn":
        return BatchNormAct2d
    if name == "syncbn":
        return SyncBatchNormAct2d
    if name in ("inplace_abn", "inplace_abn_sync"):
        from skd.nn.inplace_abn import InPlaceABN, InPlaceABNSync

        return InPlaceABN if name == "inplace_abn" else InPlaceABNSync
    raise SkdError(f"--norm {name}: unknown norm layer; use one of {', '.join(NORMS)}")
