"""Channel-wise distillation (CWD, Shu et al. 2021): match each channel's spatial distribution."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from skd.losses.pixel_wise import _check_same_shape, _upcast


def channel_wise_loss(student: Tensor, teacher: Tensor, tau: float = 4.0) -> Tensor:
    """Channel-wise distillation, KL of the per-channel spatial softmaxes.

        p[b,c,:] = softmax over the H*W positions of x[b,c] / tau
        loss     = tau^2 / (B*C) * sum_{b,c,i} p^T[b,c,i] * (log p^T[b,c,i] - log p^S[b,c,i])

    `student`, `teacher`: (B, C, H, W), same size (map the student's channels with `Connector`
    first when they differ). The teacher is detached. Returns a scalar, a mean over images and
    channels.
    """
    _check_same_shape(student, teacher, "channel_wise_loss")
    if tau <= 0:
        raise ValueError(f"channel_wise_loss: tau={tau} must be > 0")
    b, c, _, _ = student.shape
    log_p_s = F.log_softmax(_upcast(student).flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(_upcast(teacher.detach()).flatten(2) / tau, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (b * c)


class Connector(nn.Module):
    """1x1 conv (no bias) + norm mapping student features (B, Cin, H, W) to the teacher's Cout channels."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = norm_layer(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class ChannelWiseLoss(nn.Module):
    """Holds tau for `channel_wise_loss`."""

    def __init__(self, tau: float = 4.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return channel_wise_loss(student, teacher, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
