"""FitNet hints (Romero et al., ICLR 2015) for dense maps: the student's feature through a
learned connector regresses the teacher's.

Matches winycg/CIRKD losses/fitnet.py: the connector is its `CriterionFitNet.conv`, a 1x1
convolution without bias (line 11), and the loss its `((conv(feat_S) - feat_T) ** 2).mean()`
(lines 16-19). Here the two are apart: `FitNetConnector` is a module whose parameters the
optimiser must train with the student's, `fitnet_loss` a pure function of the two maps.
"""
from __future__ import annotations

from torch import Tensor, nn

from skd.losses.common import autocast_off, check_same_shape, upcast


class FitNetConnector(nn.Module):
    """1x1 convolution, no bias, no norm, no activation: (B, Cs, H, W) -> (B, Ct, H, W).

    CIRKD's FitNet regressor (losses/fitnet.py line 11), PyTorch's default initialisation.
    CIRKD applies it even when Cs == Ct, and trains it with the student: it adds the module to
    the student's SGD parameter list (train_kd.py lines 249-252) and wraps it in DDP.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"FitNetConnector: in_channels={in_channels}, out_channels={out_channels} must be >= 1"
            )
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def fitnet_loss(student_hint: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNet: mean squared error between the connected student feature and the teacher's.

        loss = 1 / (B * C * H * W) * sum_{b,c,h,w} (r[b,c,h,w] - t[b,c,h,w])^2

    `student_hint` r = `FitNetConnector`(student feature), (B, Ct, H, W); `teacher_feat` t,
    (B, Ct, H, W), the same shape (the caller resizes; CIRKD needs none, both maps are at 1/8).
    The teacher is detached. Autocast is off inside; half/bfloat16 inputs are computed in
    float32 (float64 stays float64). A mean over every element: a batch mean, exact under DDP
    gradient averaging (equal per-rank batches). The paper's 1/2 factor is not applied (CIRKD
    does not apply it; it is a factor of the weight). Returns a scalar.
    """
    check_same_shape(student_hint, teacher_feat, "fitnet_loss")
    with autocast_off(student_hint):
        return (upcast(student_hint) - upcast(teacher_feat.detach())).square().mean()
