"""Dilated ResNet backbones (output stride 8): the SKD teacher and student, and mmseg's ResNetV1c.

Module names follow the original checkpoints (`conv1`, `bn1`, ..., `layer1.0.downsample.1`),
so the SKD networks load the official weights without renaming; mmsegmentation's ResNet uses
the same block names (mmseg/models/backbones/resnet.py: `conv1`, `bn1`, ..., `downsample.0/1`)
and its deep stem is `stem.0 ... stem.8`, the layout of the "v1c" stem here.

The variants (`STYLES`): the SKD ResNet dilates every 3x3 convolution of layer3 and layer4 by
the layer's dilation (multi-grid 1, 1, 1); mmseg's (`contract_dilation=True`,
mmseg/models/utils/res_layer.py) gives the first block of a dilated layer half the dilation,
and its BasicBlock dilates only conv1 (conv2 has padding 1, dilation 1).

Every norm layer comes from the `norm_layer` constructor with `activation="identity"` and is
followed by a separate, out-of-place ReLU: InPlace-ABN keeps its output for backward and
overwrites its input, so nothing may write into a norm's output afterwards.

With InPlace-ABN norms the blocks take a leaner path through autograd (`skd.nn.fused`): each
layer chains its blocks on the pre-activation sums and applies the ReLUs inside the next
convolution and the residual sum, so only one tensor per convolution is kept for backward.
The values, the gradients and the modules (hence the state dict) are those of the plain path.
"""
from __future__ import annotations

import torch
from torch import nn

from skd.errors import SkdError
from skd.models.layers import NormLayer, init_weights
from skd.nn.fused import abn_add_, can_fuse, is_identity_abn, max_pool2d_keep_input, relu_conv2d


# depth -> (block type, blocks per layer)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# deep: SKD's 3x3 stem 64-64-128 with a ceil-mode max-pool; standard: torchvision's 7x7;
# v1c: mmseg's ResNetV1c 3x3 stem 32-32-64 (`stem.*`), max-pool without ceil mode.
STEMS = ("deep", "standard", "v1c")
# How each model variant builds its ResNet (see the module docstring).
STYLES: dict[str, dict[str, object]] = {
    "skd": {"stem": "deep", "contract_dilation": False, "dilate_basic_conv2": True},
    "mmseg": {"stem": "v1c", "contract_dilation": True, "dilate_basic_conv2": False},
}


def scaled(channels: int, width_mult: float) -> int:
    """`channels` scaled by `width_mult`, rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width_mult)))


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size at stride 1."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: (B, inplanes, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        dilate_conv2: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes, activation="identity")
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes, 1, dilation if dilate_conv2 else 1)
        self.bn2 = norm_layer(planes, activation="identity")
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)

    def fusable(self) -> bool:
        return _fusable(self, (self.bn1, self.relu1), (self.bn2, self.relu))

    def forward_pre(self, s: torch.Tensor) -> torch.Tensor:
        """The fused path: relu(s) -> this block's pre-activation sum (see ResLayer)."""
        shortcut, relu_shortcut = _shortcut_pre(self.downsample, s)
        out = relu_conv2d(self.bn1(relu_conv2d(s, self.conv1)), self.conv2)
        return abn_add_(out, self.bn2, shortcut, relu_shortcut)


class Bottleneck(nn.Module):
    """ResNet-50/101 block: (B, inplanes, H, W) -> (B, 4 * planes, H/stride, W/stride)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        dilate_conv2: bool = True,
    ) -> None:
        super().__init__()
        # dilate_conv2 is BasicBlock's switch; a Bottleneck has one 3x3 conv, always dilated.
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes, activation="identity")
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes, activation="identity")
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion, activation="identity")
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)

    def fusable(self) -> bool:
        return _fusable(self, (self.bn1, self.relu1), (self.bn2, self.relu2), (self.bn3, self.relu))

    def forward_pre(self, s: torch.Tensor) -> torch.Tensor:
        """The fused path: relu(s) -> this block's pre-activation sum (see ResLayer)."""
        shortcut, relu_shortcut = _shortcut_pre(self.downsample, s)
        out = self.bn1(relu_conv2d(s, self.conv1))
        out = relu_conv2d(self.bn2(relu_conv2d(out, self.conv2)), self.conv3)
        return abn_add_(out, self.bn3, shortcut, relu_shortcut)


def _fusable(block: nn.Module, *pairs: tuple[nn.Module, nn.Module]) -> bool:
    """Whether every (norm, ReLU) pair of `block` and its downsample norm are identity InPlace-ABN."""
    down = block.downsample
    if down is not None and not (
        isinstance(down, nn.Sequential) and len(down) == 2 and is_identity_abn(down[1])
    ):
        return False
    return all(can_fuse(norm, relu) for norm, relu in pairs)


def _shortcut_pre(downsample: nn.Module | None, s: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(residual, whether the sum applies ReLU to it) for a block whose input is relu(s)."""
    if downsample is None:
        return s, True
    return downsample[1](relu_conv2d(s, downsample[0])), False


class ResLayer(nn.Sequential):
    """A stage of residual blocks: (B, C, H, W) -> (B, C', H', W'), module names 0, 1, ...

    With identity InPlace-ABN norms throughout (`fusable`), the blocks pass their
    pre-activation sums s to each other (`forward_pre`) and the layer returns relu(s); same
    values as calling the blocks in turn, with about half the tensors kept for backward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not all(block.fusable() for block in self):
            return super().forward(x)
        # x is relu(x) already (a layer output or the stem's max pool): a valid start.
        for block in self:
            x = block.forward_pre(x)
        return torch.relu(x)


def _relu_then(x: torch.Tensor, relu: nn.Module, norm: nn.Module, conv: nn.Conv2d) -> torch.Tensor:
    """conv(relu(x)) for x = norm(...): fused (relu(x) not kept) after an identity InPlace-ABN."""
    return relu_conv2d(x, conv) if can_fuse(norm, relu) else conv(relu(x))


class DilatedResNet(nn.Module):
    """ResNet with layer3 and layer4 dilated (2 and 4) instead of strided: output stride 8.

    `forward` maps a (B, 3, H, W) image to the four layer outputs: layer1 at about 1/4 of the
    input, layer2..layer4 at about 1/8 (65x65 for 512x512 with the deep stem, whose max-pool
    rounds up; 64x64 with the others). Channels with `width_mult` w (`channels`): layer1..layer4
    give e*64w, e*128w, e*256w, e*512w, with e = 1 (BasicBlock) or 4 (Bottleneck).
    `contract_dilation`: the first block of layer3/layer4 uses dilation 1/2 (mmseg);
    `dilate_basic_conv2`: whether a BasicBlock's second conv is dilated too (SKD) or not (mmseg).
    """

    # Top-level modules that make up the stem, per stem.
    STEM_MODULES = {
        "deep": ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"),
        "standard": ("conv1", "bn1"),
        "v1c": ("stem",),
    }
    LAYER_MODULES = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        depth: int,
        norm_layer: NormLayer,
        width_mult: float = 1.0,
        stem: str = "deep",
        contract_dilation: bool = False,
        dilate_basic_conv2: bool = True,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise SkdError(f"--arch resnet{depth}: unknown depth; use one of {sorted(DEPTHS)}")
        if stem not in STEMS:
            raise SkdError(f"--stem {stem}: unknown stem; use one of {', '.join(STEMS)}")
        if not width_mult > 0:
            raise SkdError(f"--width-mult {width_mult}: must be a positive number")
        kind, blocks = DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.stem_kind = stem

        if stem == "deep":
            c1, c2, c3 = scaled(64, width_mult), scaled(64, width_mult), scaled(128, width_mult)
            self.conv1 = conv3x3(3, c1, stride=2)
            self.bn1 = norm_layer(c1, activation="identity")
            self.relu1 = nn.ReLU(inplace=False)
            self.conv2 = conv3x3(c1, c2)
            self.bn2 = norm_layer(c2, activation="identity")
            self.relu2 = nn.ReLU(inplace=False)
            self.conv3 = conv3x3(c2, c3)
            self.bn3 = norm_layer(c3, activation="identity")
            self.relu3 = nn.ReLU(inplace=False)
            # ceil_mode is what turns 512 into 65 rather than 64 at 1/8.
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
            inplanes = c3
        elif stem == "standard":
            c1 = scaled(64, width_mult)
            self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(c1, activation="identity")
            self.relu1 = nn.ReLU(inplace=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = c1
        else:
            # mmseg ResNet._make_stem_layer with deep_stem=True: stem_channels 64 -> 32, 32, 64.
            c1, c3 = scaled(32, width_mult), scaled(64, width_mult)
            self.stem = nn.Sequential(
                conv3x3(3, c1, stride=2), norm_layer(c1, activation="identity"), nn.ReLU(inplace=False),
                conv3x3(c1, c1), norm_layer(c1, activation="identity"), nn.ReLU(inplace=False),
                conv3x3(c1, c3), norm_layer(c3, activation="identity"), nn.ReLU(inplace=False),
            )
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = c3

        layers = []
        for planes, n, stride, dilation in zip((64, 128, 256, 512), blocks, (1, 2, 1, 1), (1, 1, 2, 4)):
            first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
            layer, inplanes = self._make_layer(
                block, inplanes, scaled(planes, width_mult), n, stride, (first_dilation, dilation),
                norm_layer, dilate_basic_conv2,
            )
            layers.append(layer)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            scaled(p, width_mult) * block.expansion for p in (64, 128, 256, 512)
        )
        init_weights(self)

    @property
    def layer_channels(self) -> tuple[int, int, int, int]:
        """Alias of `channels` (the name before the backbone interface)."""
        return self.channels

    @staticmethod
    def _make_layer(
        block: type[BasicBlock] | type[Bottleneck],
        inplanes: int,
        planes: int,
        blocks: int,
        stride: int,
        dilations: tuple[int, int],
        norm_layer: NormLayer,
        dilate_basic_conv2: bool,
    ) -> tuple[nn.Sequential, int]:
        """A stage; `dilations` = (first block's, the others')."""
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_ch, 1, stride=stride, bias=False),
                norm_layer(out_ch, activation="identity"),
            )
        first, rest = dilations
        layers = [block(inplanes, planes, stride, first, downsample, norm_layer, dilate_basic_conv2)]
        layers += [block(out_ch, planes, 1, rest, None, norm_layer, dilate_basic_conv2) for _ in range(1, blocks)]
        return ResLayer(*layers), out_ch

    def backbone_module_names(self) -> tuple[str, ...]:
        """Names of the top-level modules holding backbone weights (stem and layer1..4)."""
        return self.STEM_MODULES[self.stem_kind] + self.LAYER_MODULES

    def imagenet_layout(self, sd: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """(layout, tensors under this backbone's keys) of an ImageNet ResNet file's state dict.

        "original": the deep stem of the original's resnet*-imagenet.pth (conv1..conv3, bn1..bn3);
        "torchvision": torchvision's resnet*.pth (a 7x7 conv1); "mmseg": mmseg's resnet*_v1c
        (`stem.*`, possibly under `backbone.`). The block keys are the same in all three, so
        only the prefix changes; which stem the file fits is the caller's shape check.
        """
        sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
        if "stem.0.weight" in sd:
            return "mmseg", sd
        if "conv2.weight" in sd:
            return "original", sd
        return "torchvision", sd

    def default_head_channels(self, variant: str) -> tuple[int, int]:
        """(decode head, auxiliary head) channels of `variant`: SKD's c4/4 for both
        (pspnet.py of the original: 512 -> 128 for ResNet-18); mmseg's c4/4 and c3/4
        (configs/pspnet/pspnet_r18-d8: 128 and 64; _base_/models/pspnet_r50-d8: 512 and 256)."""
        c3, c4 = self.channels[2], self.channels[3]
        return (max(1, c4 // 4), max(1, c4 // 4)) if variant == "skd" else (max(1, c4 // 4), max(1, c3 // 4))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image -> (B, C, ~H/4, ~W/4) input of layer1."""
        if self.stem_kind == "v1c":
            return self.maxpool(self.stem(x))
        x = self.bn1(self.conv1(x))
        norm, relu = self.bn1, self.relu1
        if self.stem_kind == "deep":
            x = self.bn2(_relu_then(x, self.relu1, self.bn1, self.conv2))
            x = self.bn3(_relu_then(x, self.relu2, self.bn2, self.conv3))
            norm, relu = self.bn3, self.relu3
        # Max pooling and ReLU commute (both monotone, ties included), so pool first: the
        # full-size ReLU output is never made, and the pooling reads the norm's kept output.
        x = max_pool2d_keep_input(x, self.maxpool) if can_fuse(norm, relu) else self.maxpool(x)
        return relu(x)

    def forward_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (layer1, layer2, layer3, layer4) outputs, see the class docstring."""
        l1 = self.layer1(self.forward_stem(x))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return l1, l2, l3, l4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_features(x)


def resnet_backbone(
    depth: int, norm_layer: NormLayer, width_mult: float, stem: str | None, variant: str
) -> DilatedResNet:
    """The ResNet of model variant `variant` ("skd" or "mmseg", see `STYLES`); stem None = the variant's."""
    style = STYLES[variant]
    return DilatedResNet(
        depth, norm_layer, width_mult=width_mult, stem=str(style["stem"]) if stem is None else stem,
        contract_dilation=bool(style["contract_dilation"]), dilate_basic_conv2=bool(style["dilate_basic_conv2"]),
    )
