"""Segmentation heads: pyramid pooling (PSPNet), atrous spatial pyramid pooling (DeepLabV3), and
the auxiliary head on layer3 (SKD's DSN, mmseg's FCNHead).

One class per head; the model variant is a `HeadStyle` argument:
- `SKD_HEADS`, the original SKD networks (networks/pspnet.py of irfanICMLL/
  structure_knowledge_distillation): norms with a fused leaky ReLU(0.01) (the original's
  InPlace-ABN default), priors concatenated before the features, bilinear upsampling with
  align_corners=True, a bias on the DSN's 3x3 conv.
- `MMSEG_HEADS`, mmsegmentation's PSPHead / ASPPHead / FCNHead (mmseg/models/decode_heads/
  psp_head.py, aspp_head.py, fcn_head.py, with mmcv's ConvModule = conv without bias + BN +
  ReLU): the features concatenated before the priors, align_corners=False, no bias before a norm.
Both put a Dropout2d(0.1) between the bottleneck and the 1x1 classifier (mmseg's
`BaseDecodeHead.cls_seg`; the original's bottleneck ends with it).

Module names are the SKD checkpoint layout (`pspmodule.stages.0.1.weight`, `head.weight`,
`dsn.3.weight`, ...) for both styles, so one network description serves both; the ASPP head
follows the same pattern (`aspp.stages.{0..4}`, `aspp.bottleneck`). `skd.models.layouts` maps
mmseg's key names onto these.

Interface: a decode head maps the backbone's last feature (B, C4, h, w) to (feat, logits), feat
(B, channels, h, w) being the bottleneck output after its dropout (the pair-wise loss's feature
in SKD) and logits (B, num_classes, h, w); the auxiliary head maps layer3 (B, C3, h, w) to
logits. Each has `.channels` and `.num_classes`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skd.models.layers import NormLayer, norm_act, numbered

PYRAMID_SIZES = (1, 2, 3, 6)
# DeepLabV3's atrous rates at output stride 8 (mmseg configs/_base_/models/deeplabv3_r50-d8.py:
# dilations=(1, 12, 24, 36), the 1 being the 1x1 branch).
ASPP_RATES = (12, 24, 36)
HEAD_DROPOUT = 0.1


@dataclass(frozen=True)
class HeadStyle:
    """activation (+ slope for leaky ReLU) after every head norm; align_corners of the
    upsampling inside the head; whether the input features come before the pooled priors in
    the concatenation; whether the auxiliary 3x3 conv has a bias."""

    activation: str
    slope: float
    align_corners: bool
    features_first: bool
    aux_conv_bias: bool


SKD_HEADS = HeadStyle(activation="leaky_relu", slope=0.01, align_corners=True, features_first=False, aux_conv_bias=True)
MMSEG_HEADS = HeadStyle(activation="relu", slope=0.0, align_corners=False, features_first=True, aux_conv_bias=False)


def _conv_norm_act(
    style: HeadStyle, norm_layer: NormLayer, in_ch: int, out_ch: int, kernel: int, dilation: int = 1, bias: bool = False
) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=bias)
    return [conv] + norm_act(norm_layer, out_ch, style.activation, style.slope)


class PSPModule(nn.Module):
    """Pyramid pooling: (B, in_ch, h, w) -> (B, out_ch, h, w).

    `stages.i` = (adaptive average pool to PYRAMID_SIZES[i], 1x1 conv, norm + activation);
    the priors, upsampled to (h, w), and the features are concatenated (priors first in SKD,
    features first in mmseg) and fused by `bottleneck` = (3x3 conv, norm + activation,
    Dropout2d(0.1)).
    """

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer, style: HeadStyle = SKD_HEADS) -> None:
        super().__init__()
        self.style = style
        self.stages = nn.ModuleList(
            numbered(nn.AdaptiveAvgPool2d(size), *_conv_norm_act(style, norm_layer, in_ch, out_ch, 1))
            for size in PYRAMID_SIZES
        )
        self.bottleneck = numbered(
            *_conv_norm_act(style, norm_layer, in_ch + len(PYRAMID_SIZES) * out_ch, out_ch, 3),
            nn.Dropout2d(HEAD_DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.interpolate stays inline, in the same frame as the stages: behind a helper function
        # it became a graph of its own under torch.compile with InPlace-ABN (whose ops break the
        # graph), and inductor 2.13's CPU code for that lone 1x1 upsampling's backward fails.
        size = x.shape[-2:]
        align = self.style.align_corners
        priors = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=align) for stage in self.stages]
        parts = [x] + priors if self.style.features_first else priors + [x]
        return self.bottleneck(torch.cat(parts, dim=1))


class ASPPModule(nn.Module):
    """Atrous spatial pyramid pooling: (B, in_ch, h, w) -> (B, out_ch, h, w).

    `stages.0` = (global average pool, 1x1 conv, norm + activation), upsampled back to (h, w);
    `stages.1` = (1x1 conv, norm + activation); `stages.2..4` = (3x3 conv with dilation 12, 24,
    36, padding = dilation, norm + activation); concatenated in that order (mmseg's ASPPHead:
    image pool, then aspp_modules) and fused by `bottleneck` = (3x3 conv, norm + activation,
    Dropout2d(0.1)).
    """

    def __init__(
        self, in_ch: int, out_ch: int, norm_layer: NormLayer, style: HeadStyle = SKD_HEADS,
        rates: tuple[int, ...] = ASPP_RATES,
    ) -> None:
        super().__init__()
        self.style = style
        stages = [numbered(nn.AdaptiveAvgPool2d(1), *_conv_norm_act(style, norm_layer, in_ch, out_ch, 1))]
        stages.append(numbered(*_conv_norm_act(style, norm_layer, in_ch, out_ch, 1)))
        stages += [numbered(*_conv_norm_act(style, norm_layer, in_ch, out_ch, 3, dilation=r)) for r in rates]
        self.stages = nn.ModuleList(stages)
        self.bottleneck = numbered(
            *_conv_norm_act(style, norm_layer, len(stages) * out_ch, out_ch, 3),
            nn.Dropout2d(HEAD_DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = self.style.align_corners
        pooled = F.interpolate(self.stages[0](x), size=x.shape[-2:], mode="bilinear", align_corners=align)
        return self.bottleneck(torch.cat([pooled] + [stage(x) for stage in self.stages[1:]], dim=1))


class PSPHead(nn.Module):
    """PSPNet decode head: (B, in_channels, h, w) -> (feat (B, channels, h, w), logits (B, K, h, w)).

    Children `pspmodule` (PSPModule) and `head` (1x1 conv with bias, the classifier).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, norm_layer: NormLayer, style: HeadStyle
    ) -> None:
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.pspmodule = PSPModule(in_channels, channels, norm_layer, style)
        self.head = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.pspmodule(x)
        return feat, self.head(feat)


class ASPPHead(nn.Module):
    """DeepLabV3 decode head: (B, in_channels, h, w) -> (feat (B, channels, h, w), logits (B, K, h, w)).

    Children `aspp` (ASPPModule) and `head` (1x1 conv with bias, the classifier).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, norm_layer: NormLayer, style: HeadStyle
    ) -> None:
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.aspp = ASPPModule(in_channels, channels, norm_layer, style)
        self.head = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.aspp(x)
        return feat, self.head(feat)


class AuxHead(nn.Module):
    """Auxiliary head on layer3: (B, in_channels, h, w) -> logits (B, K, h, w).

    `dsn` = (3x3 conv, norm + activation, Dropout2d(0.1), 1x1 conv with bias): SKD's DSN
    (with a bias on the 3x3 conv) and mmseg's FCNHead with num_convs=1, concat_input=False
    (_base_/models/pspnet_r50-d8.py), whose ConvModule has none.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, norm_layer: NormLayer, style: HeadStyle
    ) -> None:
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.dsn = numbered(
            *_conv_norm_act(style, norm_layer, in_channels, channels, 3, bias=style.aux_conv_bias),
            nn.Dropout2d(HEAD_DROPOUT),
            nn.Conv2d(channels, num_classes, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsn(x)
