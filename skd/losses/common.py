"""Argument handling the distillation losses share."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """`x` in float32 if it is half or bfloat16, else unchanged (float64 stays float64).

    The distillation terms sum many small products; under autocast the logits arrive in half
    precision, where those sums lose digits the original (float32) never lost.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    """ValueError unless both are (B, C, H, W) of one size; `what` names the loss."""
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be "
            "(B, C, H, W) of the same size; resize one to the other before the loss"
        )


def check_same_grid(student: Tensor, teacher: Tensor, what: str) -> None:
    """ValueError unless both are (B, C, H, W) with the same B, H and W (channels may differ)."""
    if (
        student.dim() != 4
        or teacher.dim() != 4
        or student.shape[0] != teacher.shape[0]
        or student.shape[2:] != teacher.shape[2:]
    ):
        raise ValueError(
            f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be "
            "(B, C, H, W) with the same B, H and W (channels may differ); resize one map to the "
            "other before the loss"
        )


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager:
    """A region where autocast does not put a loss's matmuls and reductions back in half."""
    return torch.autocast(device_type=x.device.type, enabled=False)
