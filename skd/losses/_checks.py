"""Dtype and shape helpers shared by the comparison losses (attention, local affinity, IFVD, FitNet).

A stand-in until the package has one public home for `upcast` / `check_same_shape`; the
comparison losses import from here only.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """`x` in float32 if it is half or bfloat16, else unchanged (float64 stays float64).

    The maps these losses build (normalised attention maps, cosine similarities, neighbour
    distances) are sums over many channels; in half precision those sums lose digits.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager:
    """A region where autocast does not put the loss's matmuls and reductions back in half."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    """Both (B, C, H, W) and equal in every dimension."""
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be "
            "(B, C, H, W) of the same size; map the student's channels with a connector and resize "
            "one map to the other before the loss"
        )


def check_same_grid(student: Tensor, teacher: Tensor, what: str) -> None:
    """Both (B, C, H, W) with the same B, H and W; the channel counts may differ."""
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
