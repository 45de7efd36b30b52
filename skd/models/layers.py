"""Small building blocks shared by the backbones and heads: norm + activation, numbered stacks.

Every norm layer comes from a `norm_layer` constructor `(channels, activation=..., slope=...)`
(`skd.nn.norm.make_norm`), so BatchNorm, SyncBN and InPlace-ABN are interchangeable. InPlace-ABN
fuses only identity, leaky ReLU and ELU (it inverts the activation in backward), so ReLU and
ReLU6 always follow an identity norm as separate, out-of-place modules: they read the norm's
output and never write into it, which InPlace-ABN requires (it keeps that output for backward).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

NormLayer = Callable[..., nn.Module]

# Activations a norm layer applies itself (all of skd's norms support them); the others are
# separate modules after an identity norm.
FUSED_ACTIVATIONS = ("identity", "leaky_relu")
SEPARATE_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def norm_act(norm_layer: NormLayer, channels: int, activation: str, slope: float = 0.01) -> list[nn.Module]:
    """[norm with the activation fused] or [identity norm, separate activation module]."""
    if activation in FUSED_ACTIVATIONS:
        return [norm_layer(channels, activation=activation, slope=slope)]
    if activation not in SEPARATE_ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: use one of {FUSED_ACTIVATIONS + tuple(SEPARATE_ACTIVATIONS)}")
    return [norm_layer(channels, activation="identity"), SEPARATE_ACTIVATIONS[activation](inplace=False)]


def numbered(*modules: nn.Module) -> nn.Sequential:
    """nn.Sequential named 0, 1, 2, ... where a separate activation takes no number.

    So the state-dict keys of a stack (conv = 0, norm = 1, classifier = 3 after a dropout) are
    the same whether the activation is fused into the norm or follows it: an activation after
    module i is named `i_act`.
    """
    named: OrderedDict[str, nn.Module] = OrderedDict()
    index = 0
    for module in modules:
        if isinstance(module, tuple(SEPARATE_ACTIVATIONS.values())):
            named[f"{index - 1}_act"] = module
        else:
            named[str(index)] = module
            index += 1
    return nn.Sequential(named)


class ConvNormAct(nn.Module):
    """conv (no bias) -> norm -> activation: (B, in, H, W) -> (B, out, H', W').

    Children `conv` and `bn` (and `act`), the layout of mmcv's ConvModule with a BN norm
    (mmcv/cnn/bricks/conv_module.py: bias only without a norm, the norm named "bn"), so the
    MobileNetV2 keys are mmsegmentation's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm_layer: NormLayer,
        activation: str,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=False,
        )
        parts = norm_act(norm_layer, out_channels, activation)
        self.bn = parts[0]
        self.act = parts[1] if len(parts) > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan out, ReLU) convolutions, norms at weight 1 and bias 0: the backbones'
    random initialisation (torchvision's and mmseg's)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif hasattr(m, "running_var") and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    """`value` rounded to a multiple of `divisor` (at least `divisor`), never below 90% of it.

    The MobileNet channel rule (TensorFlow slim's, as torchvision's `_make_divisible` and
    mmseg's `make_divisible` apply it): 32 * 0.5 -> 16, 24 * 0.5 -> 16, 320 * 0.5 -> 160.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < min_ratio * value:
        new += divisor
    return new
