"""Holistic distillation (the paper's ho term): the adversarial objectives and the gradient penalty.

The discriminator is built in skd.models; the training step applies lambda_d and lambda_gp.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("wgan-gp", "hinge")


def generator_loss(d_student: Tensor) -> Tensor:
    """-mean(D(S)) over every element of the discriminator's output `d_student` (any shape).

    The original uses this for both the WGAN-GP and the hinge objective.
    """
    return -d_student.mean()


def discriminator_loss(d_teacher: Tensor, d_student: Tensor, kind: str = "wgan-gp") -> Tensor:
    """Discriminator objective on its outputs for teacher (real) and student (fake) logits.

        wgan-gp: mean D(S) - mean D(T)
        hinge:   mean relu(1 - D(T)) + mean relu(1 + D(S))

    Means over every element of each output (any shape; (B, 1, 1, 1) for a 65x65 input).
    The caller passes D(student logits) computed from detached logits.
    """
    if kind == "wgan-gp":
        return d_student.mean() - d_teacher.mean()
    if kind == "hinge":
        return F.relu(1.0 - d_teacher).mean() + F.relu(1.0 + d_student).mean()
    raise ValueError(f"discriminator_loss: kind={kind!r}; expected one of {KINDS}")


def gradient_penalty(
    disc: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty mean_b (||grad_x D(x)||_2 - 1)^2 at x = alpha*real + (1-alpha)*fake.

    `real` (teacher logits) and `fake` (student logits): (B, C, H, W), both detached here, so the
    penalty's gradient reaches only the discriminator's parameters. One alpha ~ U[0, 1) per
    sample, shape (B, 1, 1, 1), drawn from `generator` (the global RNG when None). The gradient
    of disc(x).sum() is taken with create_graph=True so the penalty can be backpropagated; its
    L2 norm is over all of C*H*W per sample. `disc` must return a tensor. Returns a scalar.
    """
    real, fake = real.detach(), fake.detach()
    alpha = torch.rand((real.shape[0], 1, 1, 1), generator=generator, device=real.device, dtype=real.dtype)
    interp = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(interp).sum(), interp, create_graph=True)
    # vector_norm's backward is 0 (not NaN) at a zero gradient, unlike sqrt(sum(g^2)).
    grad_norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    return (grad_norm - 1.0).square().mean()
