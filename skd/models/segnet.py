"""Segmentation networks: a backbone, a decode head and an auxiliary head, one description for all.

`build_model(arch=..., head=..., variant=..., ...)` builds any of them from plain config values
and `build_model(**net.config())` rebuilds the same network. The choices, each one registry:
- `BACKBONES`: resnet18/34/50/101 (`skd.models.resnet`, stems deep | standard | v1c) and
  mobilenetv2 (`skd.models.mobilenet`, widths such as 1.0 and 0.5). A backbone maps a
  (B, 3, H, W) image to four features (strides ~4, 8, 8, 8), has `.channels` (their channel
  counts) and `default_head_channels(variant)`.
- `HEADS`: psp (PSPNet) and aspp (DeepLabV3), see `skd.models.heads`; the auxiliary head on
  the third feature is always there.
- `VARIANTS`: "skd" (the original SKD networks: SKD_INPUT, SKD_HEADS, the SKD ResNet) and
  "mmseg" (mmsegmentation's: MMSEG_INPUT, MMSEG_HEADS, ResNetV1c with contract_dilation,
  MobileNetV2 dilated on the first block of a layer).

The state dict is flat, the official SKD layout: the backbone's modules sit at the top level
(`conv1.weight`, `layer1.0.conv1.weight` or `stem.0.weight`), then the heads' (`pspmodule.` or
`aspp.`, `head.`, `dsn.`). `net.backbone`, `net.decode_head`, `net.auxiliary_head` are the
parts, the same module objects as the top-level children.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from skd.errors import SkdError
from skd.models.convention import MMSEG_INPUT, SKD_INPUT, InputSpec
from skd.models.heads import MMSEG_HEADS, SKD_HEADS, ASPPHead, AuxHead, HeadStyle, PSPHead
from skd.models.mobilenet import mobilenetv2_backbone
from skd.models.resnet import DEPTHS, resnet_backbone
from skd.models.resnet import STYLES as RESNET_STYLES
from skd.nn.norm import make_norm

logger = logging.getLogger(__name__)

# name -> (norm_layer, width_mult, stem or None, variant) -> backbone module.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(resnet_backbone, d) for d in sorted(DEPTHS)},
    "mobilenetv2": mobilenetv2_backbone,
}
# name -> (in_channels, channels, num_classes, norm_layer, style) -> decode head.
HEADS: dict[str, Callable[..., nn.Module]] = {"psp": PSPHead, "aspp": ASPPHead}


class Variant(NamedTuple):
    input_spec: InputSpec
    heads: HeadStyle


VARIANTS: dict[str, Variant] = {"skd": Variant(SKD_INPUT, SKD_HEADS), "mmseg": Variant(MMSEG_INPUT, MMSEG_HEADS)}
ARCHS = tuple(BACKBONES)
# The command-line flag behind each config key (None: set by the others, read from files).
CONFIG_FLAGS: dict[str, str | None] = {
    "arch": "--arch", "head": "--head", "variant": "--variant", "num_classes": "--num-classes",
    "width_mult": "--width-mult", "stem": "--stem", "norm": "--norm",
    "head_channels": None, "aux_channels": None,
}


class PSPNetOutput(NamedTuple):
    """Outputs of every network, in the original's order. For a (B, 3, H, W) input, s ~ 1/8:

    logits (B, K, sH, sW) of the decode head; aux_logits (B, K, sH, sW) of the auxiliary head
    on layer3; feat (B, head channels, sH, sW) the decode head's bottleneck output (after its
    dropout; the pair-wise loss's feature); layer4 .. layer1 the backbone's four features
    (layer1 at ~1/4). ResNet: C4, C4/2, C4/4, C1 channels; MobileNetV2: 320, 96, 32, 24 at
    width 1. With SKD's deep stem sizes round up (512 -> 65 and 129), otherwise 512 -> 64, 128.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    feat: torch.Tensor
    layer4: torch.Tensor
    layer3: torch.Tensor
    layer2: torch.Tensor
    layer1: torch.Tensor


# The general name; PSPNetOutput stays for the scripts that import it.
SegOutput = PSPNetOutput


def _choice(value: Any, choices: Any, flag: str) -> None:
    if value not in choices:
        raise SkdError(f"{flag} {value}: unknown; use one of {', '.join(str(c) for c in choices)}")


class SegmentationNet(nn.Module):
    """backbone -> decode head on layer4, auxiliary head on layer3: (B, 3, H, W) -> PSPNetOutput.

    The input is normalised as `input_spec` says (`input_spec.normalize(raw)`), and logits are
    upsampled to a label with `input_spec.align_corners`. Arguments are the config values
    (`config()`); `head_channels` / `aux_channels` None take the variant's rule
    (`backbone.default_head_channels`).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        head: str = "psp",
        variant: str = "skd",
        num_classes: int = 19,
        width_mult: float = 1.0,
        stem: str | None = None,
        norm: str = "bn",
        head_channels: int | None = None,
        aux_channels: int | None = None,
    ) -> None:
        super().__init__()
        _choice(arch, BACKBONES, "--arch")
        _choice(head, HEADS, "--head")
        _choice(variant, VARIANTS, "--variant")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise SkdError(f"--num-classes {num_classes}: must be at least 1")
        for name, value in (("head_channels", head_channels), ("aux_channels", aux_channels)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SkdError(f"model config {name} {value!r}: must be a positive integer")
        norm_layer = make_norm(norm)
        style = VARIANTS[variant]
        backbone = BACKBONES[arch](norm_layer, width_mult, stem, variant)
        default_head, default_aux = backbone.default_head_channels(variant)
        head_channels = default_head if head_channels is None else head_channels
        aux_channels = default_aux if aux_channels is None else aux_channels
        c3, c4 = backbone.channels[2], backbone.channels[3]
        decode_head = HEADS[head](c4, head_channels, num_classes, norm_layer, style.heads)
        auxiliary_head = AuxHead(c3, aux_channels, num_classes, norm_layer, style.heads)

        # Flat layout: the parts' children are this module's children (the official keys);
        # the parts themselves are plain attributes so that they are not registered twice.
        for part in (backbone, decode_head, auxiliary_head):
            for name, child in part.named_children():
                if name in self._modules:
                    raise ValueError(f"SegmentationNet: module name {name!r} used by two parts")
                self.add_module(name, child)
        self.__dict__.update(backbone=backbone, decode_head=decode_head, auxiliary_head=auxiliary_head)

        self.arch, self.head_kind, self.variant = arch, head, variant
        self.num_classes, self.width_mult, self.norm = num_classes, width_mult, norm
        self.stem_kind: str | None = getattr(backbone, "stem_kind", None)  # `stem` is v1c's module
        self.head_channels, self.aux_channels = head_channels, aux_channels
        self.feat_channels = head_channels
        self.input_spec: InputSpec = style.input_spec

    def train(self, mode: bool = True) -> "SegmentationNet":
        super().train(mode)
        for part in (self.backbone, self.decode_head, self.auxiliary_head):
            part.training = mode
        return self

    def config(self) -> dict[str, Any]:
        """Plain values that rebuild this network: `build_model(**net.config())`."""
        return {
            "arch": self.arch, "head": self.head_kind, "variant": self.variant, "num_classes": self.num_classes,
            "width_mult": self.width_mult, "stem": self.stem_kind, "norm": self.norm,
            "head_channels": self.head_channels, "aux_channels": self.aux_channels,
        }

    def describe(self) -> str:
        """Short description for messages: `resnet18 (width 1.0, 19 classes)`, then what is not
        the SKD default (`aspp head`, `mmseg variant`, a stem other than the variant's)."""
        extra = []
        if self.head_kind != "psp":
            extra.append(f"{self.head_kind} head")
        if self.variant != "skd":
            extra.append(f"{self.variant} variant")
        if self.stem_kind != default_stem(self.arch, self.variant):
            extra.append(f"{self.stem_kind} stem")
        tail = "".join(f", {e}" for e in extra)
        return f"{self.arch} (width {self.width_mult}, {self.num_classes} classes{tail})"

    def backbone_module_names(self) -> tuple[str, ...]:
        """Names of the top-level modules holding backbone weights (the rest belongs to a head)."""
        return self.backbone.backbone_module_names()

    def forward(self, x: torch.Tensor) -> PSPNetOutput:
        l1, l2, l3, l4 = self.backbone(x)
        feat, logits = self.decode_head(l4)
        return PSPNetOutput(
            logits=logits, aux_logits=self.auxiliary_head(l3), feat=feat, layer4=l4, layer3=l3, layer2=l2, layer1=l1
        )


def build_model(**config: Any) -> SegmentationNet:
    """The network of these config values (the arguments of `SegmentationNet`: arch, head,
    variant, num_classes, width_mult, stem, norm, head_channels, aux_channels);
    `build_model(**net.config())` round-trips. An unknown key or value is an SkdError naming
    it (`--arch`, `--head`, ...)."""
    unknown = sorted(set(config) - set(CONFIG_FLAGS))
    if unknown:
        raise SkdError(f"model config: unknown keys {unknown}; known: {', '.join(CONFIG_FLAGS)}")
    model = SegmentationNet(**config)
    logger.debug("built %s", model.describe())
    return model


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored model_config with the keys older checkpoints lack filled in: head "psp",
    variant "skd", norm "bn", the variant's stem for a ResNet (None otherwise), head_channels /
    aux_channels None (the variant's rule). Unknown keys are an SkdError."""
    unknown = sorted(set(config) - set(CONFIG_FLAGS))
    if unknown:
        raise SkdError(f"model_config has unknown keys {unknown}; known: {', '.join(CONFIG_FLAGS)}")
    missing = [k for k in ("arch", "num_classes") if k not in config]
    if missing:
        raise SkdError(f"model_config {dict(config)} lacks {', '.join(missing)}; it cannot describe a network")
    out = {"width_mult": 1.0, "head": "psp", "variant": "skd", "norm": "bn", "stem": None, "head_channels": None,
           "aux_channels": None, **config}
    if out["stem"] is None:
        out["stem"] = default_stem(out["arch"], out["variant"])
    return out


def default_stem(arch: str, variant: str) -> str | None:
    """The stem a ResNet of `variant` gets without --stem (deep for skd, v1c for mmseg); None
    for backbones without a stem choice."""
    if not arch.startswith("resnet") or variant not in RESNET_STYLES:
        return None
    return str(RESNET_STYLES[variant]["stem"])


# Config keys that decide the architecture; head_channels / aux_channels follow from them
# unless a file says otherwise.
STRUCTURE_KEYS = ("arch", "head", "variant", "num_classes", "width_mult", "stem")


def config_differences(file_config: dict[str, Any], model_config: dict[str, Any]) -> list[str]:
    """Config keys whose values differ, the norm aside (weights do not depend on it). Keys an
    older file lacks count as their defaults (`complete_config`); head_channels and
    aux_channels count only where both configs give them."""
    a, b = complete_config(dict(file_config)), complete_config(dict(model_config))
    differ = [k for k in STRUCTURE_KEYS if a[k] != b[k]]
    return differ + [k for k in ("head_channels", "aux_channels") if None not in (a[k], b[k]) and a[k] != b[k]]


def describe_config(config: dict[str, Any], keys: list[str]) -> str:
    """`--arch resnet101 --head aspp` for the given keys (`model_config head_channels 512` for
    keys without a flag)."""
    parts = []
    for key in keys:
        flag = CONFIG_FLAGS.get(key)
        parts.append(f"{flag} {config.get(key)}" if flag else f"model_config {key} {config.get(key)}")
    return " ".join(parts)


def check_model_config(file_config: dict[str, Any], model_config: dict[str, Any], source: str,
                       hint: str = "pass the file's values or leave those flags out (the file describes its model)"
                       ) -> None:
    """SkdError when a checkpoint's model_config and a model's differ (the norm aside), naming
    the flags: `<source>: the file holds --arch resnet101, this run has --arch resnet18; <hint>`.
    Head and auxiliary widths that follow from a differing flag are not listed apart."""
    differ = config_differences(file_config, model_config)
    if any(k in STRUCTURE_KEYS for k in differ):
        differ = [k for k in differ if k in STRUCTURE_KEYS]
    if differ:
        full_file, full_model = complete_config(dict(file_config)), complete_config(dict(model_config))
        raise SkdError(
            f"{source}: the file holds {describe_config(full_file, differ)}, this run has "
            f"{describe_config(full_model, differ)}; {hint}"
        )
