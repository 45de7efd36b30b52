"""ImageNet initialisation of a network's backbone (`--restore-from` with a backbone file).

Layouts, recognised by key names (each backbone's `imagenet_layout`):
- "original": the deep-stem ResNets the original SKD code starts from (resnet18-imagenet.pth,
  resnet101-imagenet.pth: conv1..conv3, bn1..bn3, layer*, fc);
- "torchvision": torchvision's resnet*.pth (7x7 conv1, bn1, layer*, fc) and
  mobilenet_v2-b0353104.pth (features.*, classifier.*);
- "mmseg": mmseg's resnet18_v1c / resnet50_v1c / resnet101_v1c (stem.*, layer*.*) and mmcls's
  mobilenet_v2, possibly under `state_dict` and with a `backbone.` prefix.

Norm weights: the original loaded resnet*-imagenet.pth into its InPlace-ABN, whose kernel
scales by |weight| + 1e-5 (irfanICMLL/structure_knowledge_distillation utils/utils.py lines
93-106, `load_S_model`), so a negative BN weight of that file acted as its absolute value. By
default ("auto") a file in the original's layout gets that effective weight, |w| + 1e-5, as a
plain weight; every other layout is taken as it is (plain BN weights). See docs/models.md.

Unlike the original, which updated only the keys the file had (`{k: v ... if k in new_params}`,
silently keeping random weights elsewhere), every backbone tensor must come from the file.
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

from torch import nn

from skd.errors import SkdError
from skd.models.checkpoint import (
    abs_norm_weights,
    as_state_dict,
    fit_problems,
    match_batch_counters,
    raise_if_unfit,
    read_checkpoint,
    strip_prefix,
)

logger = logging.getLogger(__name__)

NORM_WEIGHTS = ("auto", "abs", "plain")
BACKBONE_HINT = (
    "pass ImageNet weights of the same backbone, depth, width and stem (deep: the original's "
    "resnet*-imagenet.pth; standard: torchvision's resnet*.pth; v1c: mmseg's resnet*_v1c; "
    "mobilenetv2: torchvision's mobilenet_v2), or a whole-model checkpoint"
)


class BackboneInit(NamedTuple):
    """What `load_backbone` did: the file's layout, how many backbone tensors it loaded
    (parameters and running statistics), the file keys it skipped, the norm-weight
    convention applied ("abs" = |w| + 1e-5, "plain")."""

    layout: str
    loaded: int
    skipped: list[str]
    norm_weight: str


def _backbone_of(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    if not callable(getattr(backbone, "imagenet_layout", None)):
        raise SkdError(f"{path}: load_backbone needs an skd network or backbone, got {type(model).__name__}")
    return backbone


def load_backbone(model: nn.Module, path: str | os.PathLike, norm_weight: str = "auto") -> BackboneInit:
    """Load ImageNet weights into the backbone of `model` (an skd network or a backbone).

    Every backbone tensor of the model must be in the file with its shape, or SkdError names
    the first keys missing or of another shape; file keys outside the backbone (`fc.*`,
    `classifier.*`, `num_batches_tracked`, ...) are skipped. `norm_weight`: "auto" (|w| + 1e-5
    for the original's layout, plain otherwise), "abs" or "plain". The heads are untouched.
    """
    if norm_weight not in NORM_WEIGHTS:
        raise SkdError(f"norm_weight {norm_weight!r}: use one of {', '.join(NORM_WEIGHTS)}")
    backbone = _backbone_of(model, path)
    layout, sd = backbone.imagenet_layout(strip_prefix(as_state_dict(read_checkpoint(path), path)))
    expected = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    to_load = {k: v for k, v in sd.items() if k in expected}
    skipped = [k for k in sd if k not in expected]
    describe = getattr(model, "describe", None)
    what = f"the backbone of {describe() if callable(describe) else type(model).__name__} ({layout} ImageNet layout)"
    raise_if_unfit(fit_problems(to_load, expected), path, what, BACKBONE_HINT)
    convention = ("abs" if layout == "original" else "plain") if norm_weight == "auto" else norm_weight
    if convention == "abs":
        to_load = abs_norm_weights(to_load)
    backbone.load_state_dict(match_batch_counters(to_load, backbone), strict=True)
    logger.info(
        "%s: %s ImageNet layout, loaded %d backbone tensors (norm weights %s); skipped %d keys: %s",
        path, layout, len(to_load), "as |w| + 1e-5, the original's InPlace-ABN" if convention == "abs" else "plain",
        len(skipped), ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else "") if skipped else "none",
    )
    return BackboneInit(layout, len(to_load), skipped, convention)
