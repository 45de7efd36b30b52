"""Channel-wise distillation (CWD, Shu et al. 2021): match each channel's spatial distribution."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from skd.losses.common import check_same_shape, upcast
from skd.nn.norm import BatchNormAct2d


def channel_wise_loss(student: Tensor, teacher: Tensor, tau: float = 4.0) -> Tensor:
    """Channel-wise distillation, KL of the per-channel spatial softmaxes.

        p[b,c,:] = softmax over the H*W positions of x[b,c] / tau
        loss     = tau^2 / (B*C) * sum_{b,c,i} p^T[b,c,i] * (log p^T[b,c,i] - log p^S[b,c,i])

    `student`, `teacher`: (B, C, H, W), same size (map the student's channels with `Connector`
    first when they differ). The teacher is detached. Returns a scalar, a mean over images and
    channels.
    """
    check_same_shape(student, teacher, "channel_wise_loss")
    if tau <= 0:
        raise ValueError(f"channel_wise_loss: tau={tau} must be > 0")
    b, c, _, _ = student.shape
    log_p_s = F.log_softmax(upcast(student).flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(upcast(teacher.detach()).flatten(2) / tau, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (b * c)


class Connector(nn.Module):
    """CWD's feature connector, (B, Cin, H, W) student features -> (B, Cout, H, W).

    As TorchDistiller builds it (SemSeg-distill/networks/kd_model.py, lines 113-117): a 1x1
    convolution without bias, InPlace-ABN with its default leaky ReLU (slope 0.01), then a ReLU.
    relu(leaky_relu(y)) = relu(y), so it computes conv -> batch norm -> ReLU. `norm_layer` is a
    constructor `(channels, activation=, slope=)` (`skd.nn.norm.make_norm`, so --norm applies);
    the default is BatchNorm + activation. TorchDistiller leaves the connector's learning rate at
    lr_g (its poly schedule sets only the student's parameter group); skd decays it with the
    student.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_layer=BatchNormAct2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = norm_layer(out_channels, activation="leaky_relu", slope=0.01)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.norm(self.conv(x)))
