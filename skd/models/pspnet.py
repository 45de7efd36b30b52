"""PSPNet on a dilated ResNet, with the auxiliary (DSN) head: the SKD teacher and student.

Built by `pspnet` / `build_pspnet` from the `--arch`, `--width-mult`, `--norm`, `--stem` flags;
read by the training step (named outputs), evaluation, and `skd.models.checkpoint`.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from skd.errors import SkdError
from skd.models.resnet import DEPTHS, DilatedResNet, NormLayer
from skd.nn.norm import make_norm

logger = logging.getLogger(__name__)

ARCHS = tuple(f"resnet{d}" for d in sorted(DEPTHS))
PYRAMID_SIZES = (1, 2, 3, 6)
# The original's InPlace-ABN default activation in the heads.
HEAD_SLOPE = 0.01


class PSPNetOutput(NamedTuple):
    """PSPNet outputs, in the original's order. For a (B, 3, H, W) input, with s = 1/8:

    logits (B, K, sH, sW); aux_logits (B, K, sH, sW) from the DSN head on layer3;
    feat (B, C4/4, sH, sW) the pyramid-pooling bottleneck output (the pair-wise loss's feature);
    layer4 (B, C4, sH, sW); layer3 (B, C4/2, sH, sW); layer2 (B, C4/4, sH, sW);
    layer1 (B, C1, H/4, W/4). Sizes round up (512 -> 65 and 129).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    feat: torch.Tensor
    layer4: torch.Tensor
    layer3: torch.Tensor
    layer2: torch.Tensor
    layer1: torch.Tensor


class PSPModule(nn.Module):
    """Pyramid pooling: (B, in_ch, h, w) -> (B, out_ch, h, w).

    `stages.i` = (adaptive average pool to PYRAMID_SIZES[i], 1x1 conv, norm + leaky ReLU);
    the priors, upsampled to (h, w), are concatenated before the features and fused by
    `bottleneck` = (3x3 conv, norm + leaky ReLU, Dropout2d(0.1)).
    """

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                norm_layer(out_ch, activation="leaky_relu", slope=HEAD_SLOPE),
            )
            for size in PYRAMID_SIZES
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_ch + len(PYRAMID_SIZES) * out_ch, out_ch, 3, padding=1, bias=False),
            norm_layer(out_ch, activation="leaky_relu", slope=HEAD_SLOPE),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        priors = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages
        ]
        return self.bottleneck(torch.cat(priors + [x], dim=1))


class PSPNet(DilatedResNet):
    """PSPNet: (B, 3, H, W) mean-subtracted BGR image -> PSPNetOutput.

    Extends the backbone rather than wrapping it so that the state-dict keys are the
    original's (`conv1.weight`, `layer1.0...`, `pspmodule...`, `head...`, `dsn...`).
    """

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 19,
        width_mult: float = 1.0,
        norm: str = "bn",
        stem: str = "deep",
    ) -> None:
        if num_classes < 1:
            raise SkdError(f"--num-classes {num_classes}: must be at least 1")
        norm_layer = make_norm(norm)
        super().__init__(depth, norm_layer, width_mult=width_mult, stem=stem)
        self.arch = f"resnet{depth}"
        self.num_classes = num_classes
        self.width_mult = width_mult
        self.norm = norm

        c3, c4 = self.layer_channels[2], self.layer_channels[3]
        out_ch = max(1, c4 // 4)
        self.pspmodule = PSPModule(c4, out_ch, norm_layer)
        self.head = nn.Conv2d(out_ch, num_classes, 1, bias=True)
        self.dsn = nn.Sequential(
            nn.Conv2d(c3, out_ch, 3, padding=1, bias=True),
            norm_layer(out_ch, activation="leaky_relu", slope=HEAD_SLOPE),
            nn.Dropout2d(0.1),
            nn.Conv2d(out_ch, num_classes, 1, bias=True),
        )
        self.feat_channels = out_ch

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as stored in checkpoints (`build_pspnet(**config)`)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "width_mult": self.width_mult,
            "norm": self.norm,
            "stem": self.stem,
        }

    def describe(self) -> str:
        """Short human description for messages: `resnet18 (width 1.0, 19 classes)`."""
        stem = "" if self.stem == "deep" else f", {self.stem} stem"
        return f"{self.arch} (width {self.width_mult}, {self.num_classes} classes{stem})"

    def forward(self, x: torch.Tensor) -> PSPNetOutput:  # type: ignore[override]
        l1, l2, l3, l4 = self.forward_features(x)
        feat = self.pspmodule(l4)
        return PSPNetOutput(
            logits=self.head(feat),
            aux_logits=self.dsn(l3),
            feat=feat,
            layer4=l4,
            layer3=l3,
            layer2=l2,
            layer1=l1,
        )


def pspnet(
    depth: int = 18, num_classes: int = 19, width_mult: float = 1.0, norm: str = "bn", stem: str = "deep"
) -> PSPNet:
    """PSPNet on a dilated ResNet-`depth` (18, 34, 50 or 101)."""
    return PSPNet(depth=depth, num_classes=num_classes, width_mult=width_mult, norm=norm, stem=stem)


def build_pspnet(
    arch: str, num_classes: int = 19, width_mult: float = 1.0, norm: str = "bn", stem: str = "deep"
) -> PSPNet:
    """PSPNet from the `--arch` name (`resnet18`, `resnet34`, `resnet50`, `resnet101`)."""
    if arch not in ARCHS:
        raise SkdError(f"--arch {arch}: unknown architecture; use one of {', '.join(ARCHS)}")
    model = pspnet(int(arch[len("resnet"):]), num_classes, width_mult, norm, stem)
    logger.debug("built PSPNet %s", model.describe())
    return model
