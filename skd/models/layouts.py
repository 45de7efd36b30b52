"""Which network a state dict describes: key layouts of the official SKD and mmsegmentation files.

Pure functions over already-read state dicts (skd.models.checkpoint reads the files):
- `infer_config(sd, variant)`: the model config of a state dict in skd's flat layout
  (the official checkpoints' keys, skd.models.segnet), read from key names and shapes.
- `official_to_skd(sd)`: the released teacher's older head layout (`head.0.` = `pspmodule.`,
  `head.1.` = `head.`) renamed, `fc.` dropped.
- `mmseg_to_skd(sd, meta, path)`: an mmsegmentation EncoderDecoder state dict (`backbone.`,
  `decode_head.`, `auxiliary_head.`) renamed to skd's keys, with the config it describes; a
  network skd does not build is refused, naming what the file holds.
"""
from __future__ import annotations

import ast
import logging
import re
from typing import Any, Mapping

import torch

from skd.errors import SkdError
from skd.models.convention import MMSEG_INPUT
from skd.models.resnet import DEPTHS

logger = logging.getLogger(__name__)

Tensors = Mapping[str, torch.Tensor]

MMSEG_SUPPORTED = (
    "supported: PSPHead or ASPPHead (DeepLabV3) with one FCNHead auxiliary head (num_convs=1, "
    "concat_input=False), on ResNetV1c or ResNet (V1b) 18/34/50/101 or MobileNetV2, output stride 8 (d8)"
)


def _blocks(sd: Tensors, layer: str) -> int:
    """Number of blocks of `layer` (1 + the largest block index among the keys)."""
    indices = {int(m.group(1)) for k in sd for m in [re.match(rf"{layer}\.(\d+)\.", k)] if m}
    return 1 + max(indices) if indices else 0


def _arch_of(sd: Tensors, what: str) -> tuple[str, float, str | None]:
    """(arch, width_mult, stem) of a flat state dict's backbone."""
    if "conv1.conv.weight" in sd and "layer7.0.conv.2.conv.weight" in sd:
        return "mobilenetv2", sd["layer7.0.conv.2.conv.weight"].shape[0] / 320, None
    if "layer1.0.conv1.weight" not in sd:
        raise SkdError(f"{what}: no backbone skd knows (no layer1.0.conv1.weight nor conv1.conv.weight)")
    blocks = tuple(_blocks(sd, f"layer{i}") for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depths = [d for d, (k, b) in DEPTHS.items() if (k, b) == (kind, blocks)]
    if not depths:
        raise SkdError(
            f"{what}: a ResNet of {kind} blocks {blocks}, which is none of ResNet-{'/'.join(map(str, DEPTHS))}"
        )
    if "stem.0.weight" in sd:
        stem = "v1c"
    elif "conv2.weight" in sd:
        stem = "deep"
    elif "conv1.weight" in sd and sd["conv1.weight"].shape[-1] == 7:
        stem = "standard"
    else:
        raise SkdError(f"{what}: a ResNet without a stem skd knows (stem.0, conv1..conv3 or a 7x7 conv1)")
    return f"resnet{depths[0]}", sd["layer1.0.conv1.weight"].shape[0] / 64, stem


def infer_config(sd: Tensors, variant: str, what: str) -> dict[str, Any]:
    """Model config of a flat (skd-layout) state dict: arch and stem from the block counts and
    key names, width from the first block's channels, head from `pspmodule.` / `aspp.`, class
    count and head widths from the classifiers. `what` names the file in errors."""
    arch, width, stem = _arch_of(sd, what)
    if "pspmodule.bottleneck.0.weight" in sd:
        head = "psp"
    elif "aspp.bottleneck.0.weight" in sd:
        head = "aspp"
    else:
        raise SkdError(f"{what}: no decode head skd knows (neither pspmodule.* nor aspp.* keys)")
    for key in ("head.weight", "dsn.3.weight"):
        if key not in sd:
            raise SkdError(f"{what}: {key} is missing, so the class count and head width are unknown")
    return {
        "arch": arch, "head": head, "variant": variant, "num_classes": int(sd["head.weight"].shape[0]),
        "width_mult": width, "stem": stem, "norm": "bn",
        "head_channels": int(sd["head.weight"].shape[1]), "aux_channels": int(sd["dsn.3.weight"].shape[1]),
    }


def official_to_skd(sd: Tensors) -> dict[str, torch.Tensor]:
    """Official SKD keys -> skd's: in the released teacher's layout (no `pspmodule.` keys)
    `head.0.` becomes `pspmodule.` and `head.1.` becomes `head.`; `fc.` keys are dropped."""
    old_layout = not any(k.startswith("pspmodule.") for k in sd)
    out = {}
    for key, value in sd.items():
        if key.startswith("fc."):
            continue
        if old_layout and key.startswith("head.0."):
            key = "pspmodule." + key[len("head.0."):]
        elif old_layout and key.startswith("head.1."):
            key = "head." + key[len("head.1."):]
        out[key] = value
    return out


def is_flat_skd_layout(sd: Tensors) -> bool:
    """Whether `sd` looks like an official SKD / skd state dict (a stem and a known head)."""
    has_backbone = any(k in sd for k in ("conv1.weight", "stem.0.weight", "conv1.conv.weight"))
    has_head = any(k.startswith(("pspmodule.", "aspp.", "head.0.", "head.1.")) for k in sd)
    return has_backbone and has_head


def is_mmseg_layout(sd: Tensors) -> bool:
    return any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd)


# ---------------------------------------------------------------------------------------------
# mmsegmentation
# ---------------------------------------------------------------------------------------------
def _mmseg_backbone(sd: Tensors) -> str:
    """mmseg's backbone class, as far as the keys tell."""
    if "backbone.stem.0.weight" in sd:
        return "ResNetV1d" if any(re.match(r"backbone\.layer\d\.0\.downsample\.2\.", k) for k in sd) else "ResNetV1c"
    if "backbone.conv1.conv.weight" in sd and "backbone.layer7.0.conv.0.conv.weight" in sd:
        return "MobileNetV2"
    if "backbone.conv1.weight" in sd and "backbone.layer1.0.conv1.weight" in sd:
        return "ResNet"
    names = {
        "backbone.patch_embed.": "a vision transformer (ViT/Swin/BEiT)",
        "backbone.layers.0.0.": "MixVisionTransformer (SegFormer)",
        "backbone.stages.": "a staged backbone (ConvNeXt/HRNet/...)", "backbone.stage1.": "HRNet",
    }
    for prefix, name in names.items():
        if any(k.startswith(prefix) for k in sd):
            return name
    parts = sorted({k.split(".")[1] for k in sd if k.startswith("backbone.")})
    return "a backbone with modules " + ", ".join(parts[:5])


def _mmseg_decode_head(sd: Tensors) -> str:
    has = lambda part: any(k.startswith(f"decode_head.{part}") for k in sd)  # noqa: E731
    if has("lateral_convs") or has("fpn_bottleneck"):
        return "UPerHead"
    if has("c1_bottleneck"):
        return "DepthwiseSeparableASPPHead (DeepLabV3+)"
    if has("psp_modules"):
        return "PSPHead"
    if has("aspp_modules") and has("image_pool"):
        return "ASPPHead"
    if has("linear_fuse"):
        return "SegformerHead"
    if has("object_context_block") or has("spatial_gather_module"):
        return "OCRHead"
    if has("convs"):
        return "FCNHead"
    parts = sorted({k.split(".")[1] for k in sd if k.startswith("decode_head.")})
    return "a decode head with modules " + ", ".join(parts[:5])


def _aspp_branch(match: re.Match[str]) -> str:
    """decode_head.aspp_modules.j.{conv,bn}. -> aspp.stages.(j+1).{0,1}. (stage 0 is the image pool)."""
    return f"aspp.stages.{int(match.group(1)) + 1}.{0 if match.group(2) == 'conv' else 1}."


def _mmseg_aux_head(sd: Tensors) -> str:
    """"FCNHead" when every auxiliary key is one of a one-conv FCNHead's, else what is there."""
    keys = [k for k in sd if k.startswith("auxiliary_head.")]
    if not keys:
        return "none"
    odd = [k for k in keys if _rename(k, _MMSEG_RULES["FCNHead"]) is None]
    return f"other: {odd[0]}" if odd else "FCNHead"


def _aux_words(aux: str) -> str:
    if aux == "none":
        return "no auxiliary head"
    if aux == "FCNHead":
        return "an FCNHead auxiliary head"
    return f"an auxiliary head skd does not build (key {aux.removeprefix('other: ')})"


# (mmseg key pattern, skd replacement) per part; a key of a head that no rule matches means a
# structure skd does not build.
_MMSEG_RULES: dict[str, list[tuple[str, Any]]] = {
    "PSPHead": [
        (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.", r"pspmodule.stages.\1.1."),
        (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.", r"pspmodule.stages.\1.2."),
        (r"decode_head\.bottleneck\.conv\.", "pspmodule.bottleneck.0."),
        (r"decode_head\.bottleneck\.bn\.", "pspmodule.bottleneck.1."),
        (r"decode_head\.conv_seg\.", "head."),
    ],
    "ASPPHead": [
        (r"decode_head\.aspp_modules\.(\d+)\.(conv|bn)\.", _aspp_branch),
        (r"decode_head\.image_pool\.1\.conv\.", "aspp.stages.0.1."),
        (r"decode_head\.image_pool\.1\.bn\.", "aspp.stages.0.2."),
        (r"decode_head\.bottleneck\.conv\.", "aspp.bottleneck.0."),
        (r"decode_head\.bottleneck\.bn\.", "aspp.bottleneck.1."),
        (r"decode_head\.conv_seg\.", "head."),
    ],
    "FCNHead": [
        (r"auxiliary_head\.convs\.0\.conv\.", "dsn.0."),
        (r"auxiliary_head\.convs\.0\.bn\.", "dsn.1."),
        (r"auxiliary_head\.conv_seg\.", "dsn.3."),
    ],
}


def _rename(key: str, rules: list[tuple[str, Any]]) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def mmseg_to_skd(sd: Tensors, meta: Any, path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(skd state dict, model config) of an mmseg EncoderDecoder state dict; SkdError naming
    `path`, what the file holds and what is supported when skd does not build that network.

    Backbone keys lose `backbone.` (skd's ResNet and MobileNetV2 use mmseg's module names);
    head keys follow `_MMSEG_RULES`. When `meta` holds the training config (mmseg 0.x "config",
    1.x "cfg"), its strides, dilations and head settings are checked too (`check_mmseg_config`).
    """
    backbone, decode, aux = _mmseg_backbone(sd), _mmseg_decode_head(sd), _mmseg_aux_head(sd)
    supported = backbone in ("ResNetV1c", "ResNet", "MobileNetV2") and decode in ("PSPHead", "ASPPHead")
    if not supported or aux != "FCNHead":
        raise SkdError(
            f"{path}: mmsegmentation checkpoint of {decode} on {backbone} with {_aux_words(aux)}, "
            f"which skd does not build; {MMSEG_SUPPORTED}"
        )
    rules = _MMSEG_RULES[decode] + _MMSEG_RULES["FCNHead"]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key[len("backbone."):] if key.startswith("backbone.") else _rename(key, rules)
        if new is None:
            raise SkdError(
                f"{path}: mmsegmentation {decode} with a module skd does not build ({key}); {MMSEG_SUPPORTED}"
            )
        out[new] = value
    if decode == "ASPPHead":
        branches = sorted({int(k.split(".")[2]) for k in sd if k.startswith("decode_head.aspp_modules.")})
        if branches != [0, 1, 2, 3] or tuple(out["aspp.stages.1.0.weight"].shape[-2:]) != (1, 1):
            raise SkdError(
                f"{path}: mmsegmentation ASPPHead with {len(branches)} branches; skd builds the 1x1 branch and "
                "three 3x3 atrous branches (dilations (1, 12, 24, 36))"
            )
    config = infer_config(out, "mmseg", path)
    wanted_stem = {"ResNetV1c": "v1c", "ResNet": "standard", "MobileNetV2": None}[backbone]
    if config["stem"] != wanted_stem:
        raise SkdError(f"{path}: mmsegmentation {backbone} whose stem keys do not match it; {MMSEG_SUPPORTED}")
    text = _config_text(meta)
    if text is None:
        logger.info("%s: no training config in the file's meta; assuming mmseg's d8 settings", path)
    else:
        check_mmseg_config(text, backbone, decode, path)
    return out, config


# ---------------------------------------------------------------------------------------------
# mmseg's training config, stored in the checkpoint's meta as Python source
# ---------------------------------------------------------------------------------------------
def _config_text(meta: Any) -> str | None:
    if isinstance(meta, Mapping):
        for key in ("config", "cfg"):
            if isinstance(meta.get(key), str):
                return meta[key]
    return None


class _Unknown:
    """A config value that is not a literal (a variable, an expression)."""

    def __repr__(self) -> str:
        return "<expression>"


def _literal(node: ast.AST) -> Any:
    """Python literal of a config node; `dict(a=1)` calls become dicts; anything else _Unknown."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _Unknown()


def parse_mmseg_config(text: str) -> dict[str, Any]:
    """Top-level assignments of an mmseg config's source (`model = dict(...)`, ...), as literals.

    Read with `ast`, never executed."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _literal(stmt.value)
    return out


# section -> key -> the values skd builds (the first is named in errors).
_D8: dict[str, dict[str, tuple[Any, ...]]] = {
    "ResNetV1c": {"strides": ((1, 2, 1, 1),), "dilations": ((1, 1, 2, 4),), "contract_dilation": (True,),
                  "multi_grid": (None,), "style": ("pytorch",), "out_indices": ((0, 1, 2, 3),)},
    "MobileNetV2": {"strides": ((1, 2, 2, 1, 1, 1, 1),), "dilations": ((1, 1, 1, 2, 2, 4, 4),),
                    "out_indices": ((1, 2, 4, 6),)},
}
_D8["ResNet"] = _D8["ResNetV1c"]
_HEADS: dict[str, dict[str, tuple[Any, ...]]] = {
    "PSPHead": {"pool_scales": ((1, 2, 3, 6),), "align_corners": (False,), "in_index": (3, -1),
                "input_transform": (None,)},
    "ASPPHead": {"dilations": ((1, 12, 24, 36),), "align_corners": (False,), "in_index": (3, -1),
                 "input_transform": (None,)},
}
_AUX: dict[str, tuple[Any, ...]] = {
    "type": ("FCNHead",), "num_convs": (1,), "concat_input": (False,), "kernel_size": (3,), "dilation": (1,),
    "in_index": (2,), "align_corners": (False,),
}


def _check_section(found: Mapping[str, Any], allowed: Mapping[str, tuple[Any, ...]], section: str, path: str) -> None:
    for key, values in allowed.items():
        if key not in found or isinstance(found[key], _Unknown):
            continue
        if found[key] not in values:
            raise SkdError(
                f"{path}: its mmseg config has {section}.{key}={found[key]!r}, skd builds "
                f"{section}.{key}={values[0]!r} (output stride 8, mmseg's d8 configs); {MMSEG_SUPPORTED}"
            )


def check_mmseg_config(text: str, backbone: str, decode: str, path: str) -> None:
    """SkdError when the training config stored in an mmseg file sets what the weights do not
    show and skd does not build: strides or dilations other than d8 (a d16 DeepLabV3 has the
    same tensors), other ASPP rates or pool scales, align_corners=True, another input
    normalisation. Settings the text does not give literally are not checked."""
    cfg = parse_mmseg_config(text)
    model = cfg.get("model")
    if not isinstance(model, dict):
        logger.info("%s: the stored config has no literal model dict; assuming mmseg's d8 settings", path)
        return
    for section, expected in (("backbone", _D8[backbone]), ("decode_head", _HEADS[decode]),
                              ("auxiliary_head", _AUX)):
        found = model.get(section)
        if isinstance(found, dict):
            _check_section(found, expected, section, path)
    # mmseg 1.x: model.data_preprocessor; 0.x: a top-level img_norm_cfg.
    norm = model.get("data_preprocessor")
    norm = norm if isinstance(norm, dict) else cfg.get("img_norm_cfg")
    if isinstance(norm, dict):
        mean, std = norm.get("mean"), norm.get("std")
        rgb = norm.get("bgr_to_rgb", norm.get("to_rgb"))
        expected = (("mean", mean, MMSEG_INPUT.mean), ("std", std, MMSEG_INPUT.std), ("bgr_to_rgb", rgb, True))
        for name, value, want in expected:
            if value is None or isinstance(value, _Unknown):
                continue
            ok = value is want if isinstance(want, bool) else tuple(float(v) for v in value) == tuple(want)
            if not ok:
                raise SkdError(
                    f"{path}: its mmseg config normalises input with {name}={value!r}; skd's mmseg networks take "
                    f"RGB with mean {MMSEG_INPUT.mean} and std {MMSEG_INPUT.std}"
                )
