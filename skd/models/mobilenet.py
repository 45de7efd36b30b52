"""MobileNetV2 at output stride 8: the last two strided stages dilated instead (mmseg's "-d8").

Structure and key names are mmsegmentation's (mmseg/models/backbones/mobilenet_v2.py and
models/utils/inverted_residual.py): `conv1` (3x3 stride 2, ConvModule = conv + BN + ReLU6),
then `layer1`..`layer7` of inverted residual blocks, each block's `conv` a stack of ConvModules
(1x1 expansion unless the ratio is 1, 3x3 depthwise, 1x1 linear projection without activation),
with the residual sum when stride is 1 and channels are unchanged. No final 1x1 to 1280
channels: segmentation stops at layer7 (320 channels).

Output stride 8 as in configs/mobilenet_v2/mobilenet-v2-d8_*: strides (1, 2, 2, 1, 1, 1, 1)
and dilations (1, 1, 1, 2, 2, 4, 4) per layer. How a layer's dilation reaches its blocks is the
variant (`DILATION_MODES`):
- "first" (mmseg): only the first block of each layer is dilated (mmseg's `make_layer` passes
  `dilation if i == 0 else 1`), the others use dilation 1.
- "all" (CIRKD's models/base_models/mobilenetv2.py `_nostride_dilate`, the scheme of SKD's own
  ResNet): every block of a dilated layer uses its dilation, except the block whose stride was
  removed (first of layer4 and layer6), which uses half of it.
The four outputs are those of layer2, layer3, layer5 and layer7 (mmseg's out_indices
(1, 2, 4, 6)): 24, 32, 96 and 320 channels at width 1.0, at 1/4, 1/8, 1/8 and 1/8.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from skd.errors import SkdError
from skd.models.layers import ConvNormAct, NormLayer, init_weights, make_divisible

# (expansion ratio t, output channels c, blocks n) per layer (the MobileNetV2 paper's Table 2).
SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
STRIDES = (1, 2, 2, 1, 1, 1, 1)
DILATIONS = (1, 1, 1, 2, 2, 4, 4)
# The layers where ImageNet's MobileNetV2 strides by 2 and the d8 network does not.
UNSTRIDED = (3, 5)
OUT_LAYERS = ("layer2", "layer3", "layer5", "layer7")
DILATION_MODES = {"skd": "all", "mmseg": "first"}


class InvertedResidual(nn.Module):
    """(B, inp, H, W) -> (B, oup, H/stride, W/stride); x + conv(x) when shapes allow."""

    def __init__(
        self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_residual = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(inp, hidden, 1, norm_layer, "relu6"))
        layers.append(ConvNormAct(hidden, hidden, 3, norm_layer, "relu6", stride=stride, padding=dilation,
                                  dilation=dilation, groups=hidden))
        layers.append(ConvNormAct(hidden, oup, 1, norm_layer, "identity"))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2-D8 backbone: (B, 3, H, W) -> (layer2, layer3, layer5, layer7) outputs.

    `width_mult` scales every layer's channels with the MobileNet rounding (`make_divisible`):
    1.0 gives (24, 32, 96, 320) output channels, 0.5 gives (16, 16, 48, 160).
    `dilation_mode`: "first" (mmseg) or "all" (CIRKD), see the module docstring.
    """

    STEM_MODULES = ("conv1",)
    LAYER_MODULES = tuple(f"layer{i}" for i in range(1, 8))

    def __init__(self, norm_layer: NormLayer, width_mult: float = 1.0, dilation_mode: str = "first") -> None:
        super().__init__()
        if not width_mult > 0:
            raise SkdError(f"--width-mult {width_mult}: must be a positive number")
        if dilation_mode not in DILATION_MODES.values():
            raise ValueError(f"dilation_mode {dilation_mode!r}: use 'first' or 'all'")
        self.width_mult = width_mult
        inp = make_divisible(32 * width_mult, 8)
        self.conv1 = ConvNormAct(3, inp, 3, norm_layer, "relu6", stride=2, padding=1)
        widths = {}
        for i, ((t, c, n), stride, dilation) in enumerate(zip(SETTINGS, STRIDES, DILATIONS)):
            oup = make_divisible(c * width_mult, 8)
            if dilation_mode == "first":
                block_dilations = [dilation] + [1] * (n - 1)
            else:
                first = dilation // 2 if i in UNSTRIDED else dilation
                block_dilations = [first] + [dilation] * (n - 1)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(inp, oup, stride if j == 0 else 1, t, block_dilations[j], norm_layer))
                inp = oup
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            widths[f"layer{i + 1}"] = oup
        c1, c2, c3, c4 = (widths[name] for name in OUT_LAYERS)
        self.channels: tuple[int, int, int, int] = (c1, c2, c3, c4)
        init_weights(self)

    def backbone_module_names(self) -> tuple[str, ...]:
        """Names of the top-level modules holding backbone weights."""
        return self.STEM_MODULES + self.LAYER_MODULES

    def imagenet_layout(self, sd: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """(layout, tensors under this backbone's keys) of an ImageNet MobileNetV2 state dict.

        "torchvision" (mobilenet_v2-b0353104.pth, `features.*`): features.0 is conv1 (`0` conv,
        `1` norm); features.k is the k-th inverted residual, whose `conv` holds its units but
        the last as Conv2dNormActivation (`conv.i.0` conv, `conv.i.1` norm) and the last,
        linear unit as two entries (`conv.n-1` conv, `conv.n` norm). features.18 (the 1x1 to
        1280 channels) and the classifier keep their names: they have no place here.
        "mmseg" (mmcls's mobilenet_v2, `backbone.conv1.conv...`): skd's own names.
        """
        if not any(k.startswith("features.") for k in sd):
            return "mmseg", {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
        blocks = [(f"{name}.{j}", len(block.conv)) for name in self.LAYER_MODULES
                  for j, block in enumerate(getattr(self, name))]
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
            index = int(m.group(1)) if m else -1
            if index == 0 and (unit := re.fullmatch(r"([01])\.(.+)", m.group(2))):
                out[f"conv1.{'conv' if unit.group(1) == '0' else 'bn'}.{unit.group(2)}"] = value
            elif 1 <= index <= len(blocks) and (unit := re.fullmatch(r"conv\.(\d+)\.(?:([01])\.)?(.+)", m.group(2))):
                prefix, units = blocks[index - 1]
                i, sub, leaf = int(unit.group(1)), unit.group(2), unit.group(3)
                if sub is not None:  # a Conv2dNormActivation unit
                    out[f"{prefix}.conv.{i}.{'conv' if sub == '0' else 'bn'}.{leaf}"] = value
                else:  # the linear unit: conv at units-1, norm at units
                    out[f"{prefix}.conv.{units - 1}.{'conv' if i == units - 1 else 'bn'}.{leaf}"] = value
            else:
                out[key] = value
        return "torchvision", out

    def default_head_channels(self, variant: str) -> tuple[int, int]:
        """(decode head, auxiliary head) channels of `variant`: SKD's rule c4/4 for both; mmseg's
        MobileNetV2 configs keep the ResNet-101 heads of their base config (512 and 256,
        configs/mobilenet_v2/mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024.py), at any width."""
        c4 = self.channels[3]
        return (max(1, c4 // 4), max(1, c4 // 4)) if variant == "skd" else (512, 256)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        outs = []
        for i in range(1, 8):
            x = getattr(self, f"layer{i}")(x)
            if f"layer{i}" in OUT_LAYERS:
                outs.append(x)
        return outs[0], outs[1], outs[2], outs[3]


def mobilenetv2_backbone(norm_layer: NormLayer, width_mult: float, stem: str | None, variant: str) -> MobileNetV2:
    """The MobileNetV2-D8 of model variant `variant` ("skd": every block dilated; "mmseg": first only)."""
    if stem is not None:
        raise SkdError(f"--stem {stem}: MobileNetV2 has one stem; the flag applies to ResNet backbones only")
    return MobileNetV2(norm_layer, width_mult=width_mult, dilation_mode=DILATION_MODES[variant])
