"""Loading weights into PSPNet: the official SKD checkpoints, our own, and ImageNet backbones.

Every file is read with `torch.load(weights_only=True)`, so a checkpoint can never run code,
and every mismatch is reported as an SkdError naming the file and the offending keys.
Read by the training and evaluation entry points (`--teacher`, `--resume`, `--weights`,
`--pretrained`).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Any, Mapping

import torch
from torch import nn

from skd.errors import SkdError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
# The original InPlace-ABN scales by |weight| + eps instead of weight (SPEC, checkpoint layout).
OFFICIAL_ABN_EPS = 1e-5
# How many offending keys an error message lists before "and N more".
MAX_LISTED = 4


def _short_reason(exc: BaseException) -> str:
    """One-line explanation of why torch.load failed."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n\s*Check the documentation|$)", text, re.S)
        detail = " ".join((match.group(1) if match else text).split())
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
        if glob:
            return (
                f"unpickling it would call {glob.group(1)}, which weights-only loading refuses "
                "(it could run arbitrary code); re-save it as a plain state_dict of tensors"
            )
        return f"not a PyTorch checkpoint, or corrupted ({detail.split('. ')[0]})"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    first = " ".join(text.split()).split(". ")[0] or type(exc).__name__
    return f"corrupted, truncated or not a PyTorch checkpoint ({first})"


def read_checkpoint(path: PathLike) -> Any:
    """`torch.load(path)` on the CPU, weights only; any failure becomes a one-line SkdError."""
    if not os.path.isfile(path):
        raise SkdError(f"{path}: no such file; pass the path of a .pth checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types; all mean the same to the user
        raise SkdError(f"{path}: cannot be loaded: {_short_reason(exc)}") from exc


def _as_state_dict(obj: Any, path: PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: the file itself, or its `state_dict` entry."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise SkdError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SkdError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state_dict"
            )
    return dict(obj)


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that (Distributed)DataParallel puts before every key."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _describe(model: nn.Module) -> str:
    describe = getattr(model, "describe", None)
    return describe() if callable(describe) else type(model).__name__


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def fit_problems(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Shape mismatches, then keys missing from `sd`, then keys `expected` lacks."""
    wrong = [
        f"{k} is {_shape(v)} in the file, {_shape(expected[k])} in the model"
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = [f"{k} {_shape(v)} is missing from the file" for k, v in expected.items() if k not in sd]
    extra = [f"{k} {_shape(v)} in the file has no place in the model" for k, v in sd.items() if k not in expected]
    return wrong + missing + extra


MODEL_HINT = "build the model with the checkpoint's --arch, --width-mult, --num-classes and --stem"


def raise_if_unfit(problems: list[str], path: PathLike, what: str, hint: str = MODEL_HINT) -> None:
    if not problems:
        return
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise SkdError(f"{path}: does not fit {what}: {listed}{more} ({hint})")


def _match_batch_counters(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Make the `num_batches_tracked` counters match the model's norm layers.

    The counter is bookkeeping, not a weight: the original InPlace-ABN has none, BatchNorm has
    one, so a checkpoint from either norm loads into the other.
    """
    model_sd = model.state_dict()
    out = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in model_sd}
    for key, value in model_sd.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value.clone()
    return out


def norm_layer_names(model: nn.Module) -> list[str]:
    """Names of the modules of `model` that are norm layers (have a `running_var` buffer)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "running_var", None), torch.Tensor)
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    ]


def convert_official_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SKD state_dict -> one that `model.load_state_dict` takes, same computation.

    Strips `module.`; in the teacher's old layout (no `pspmodule.` keys) renames `head.0.` to
    `pspmodule.` and `head.1.` to `head.`; drops `fc.`; turns every norm weight w of `model`
    into |w| + 1e-5, the scale the original InPlace-ABN applied; fills in `num_batches_tracked`
    from the model. The input is not modified.
    """
    sd = _strip_module_prefix(sd)
    if not any(k.startswith("pspmodule.") for k in sd):
        renamed = {}
        for key, value in sd.items():
            if key.startswith("head.0."):
                key = "pspmodule." + key[len("head.0."):]
            elif key.startswith("head.1."):
                key = "head." + key[len("head.1."):]
            renamed[key] = value
        sd = renamed
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    for name in norm_layer_names(model):
        key = f"{name}.weight"
        if key in sd:
            sd[key] = sd[key].abs() + OFFICIAL_ABN_EPS
    return _match_batch_counters(sd, model)


def _load_official_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Convert and strictly load an official state_dict."""
    converted = convert_official_state_dict(sd, model)
    raise_if_unfit(fit_problems(converted, model.state_dict()), path, _describe(model))
    model.load_state_dict(converted, strict=True)
    logger.info("%s: loaded official checkpoint into %s (%d norm weights -> |w| + 1e-5)",
                path, _describe(model), len(norm_layer_names(model)))


def load_official(model: nn.Module, path: PathLike) -> None:
    """Load an official SKD checkpoint (teacher or student) into `model`, strictly.

    Raises SkdError naming `path` when the file cannot be read or does not fit the model.
    """
    _load_official_state_dict(model, _as_state_dict(read_checkpoint(path), path), path)


def _scalar_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ckpt.items() if v is None or isinstance(v, (bool, int, float, str))}


def load_weights(model: nn.Module, path: PathLike) -> dict[str, Any]:
    """Load our own checkpoint or an official one into `model`, strictly.

    Ours is a dict with `skd_format` and `model` (a state_dict), optionally `norm_weight`
    ("plain", the default, or "abs" for the original InPlace-ABN's |w| + 1e-5) and
    `model_config` (PSPNet.config()), which must match the model's except for the norm type,
    since the weights do not depend on it. Anything else is taken as an official state_dict
    (load_official). Returns {"format": "skd" | "official", "path": ...} plus, for ours,
    `model_config` and the checkpoint's scalar entries (skd_format, step, miou, ...).
    """
    obj = read_checkpoint(path)
    if not (isinstance(obj, Mapping) and "skd_format" in obj):
        _load_official_state_dict(model, _as_state_dict(obj, path), path)
        return {"format": "official", "path": str(path)}

    if "model" not in obj:
        raise SkdError(f"{path}: skd checkpoint without a 'model' entry; it was not saved by skd")
    file_config = obj.get("model_config")
    config = getattr(model, "config", None)
    if isinstance(file_config, Mapping) and callable(config):
        model_config = config()
        ignore = {"norm"}
        if {k: v for k, v in file_config.items() if k not in ignore} != {
            k: v for k, v in model_config.items() if k not in ignore
        }:
            raise SkdError(
                f"{path}: checkpoint model_config {dict(file_config)} differs from the model's "
                f"{model_config}; build the model with the checkpoint's --arch/--width-mult/--num-classes/--stem"
            )
    sd = _strip_module_prefix(_as_state_dict(obj["model"], path))
    convention = obj.get("norm_weight", "plain")
    if convention == "abs":
        sd = convert_official_state_dict(sd, model)
    elif convention == "plain":
        sd = _match_batch_counters(sd, model)
    else:
        raise SkdError(f"{path}: norm_weight {convention!r} is unknown; expected 'plain' or 'abs' (|w| + 1e-5)")
    raise_if_unfit(fit_problems(sd, model.state_dict()), path, _describe(model))
    model.load_state_dict(sd, strict=True)
    logger.info("%s: loaded skd checkpoint into %s", path, _describe(model))
    info: dict[str, Any] = {"format": "skd", "path": str(path)}
    info.update(_scalar_metadata(obj))
    info["model_config"] = dict(file_config) if isinstance(file_config, Mapping) else None
    return info


def load_backbone(model: nn.Module, path: PathLike) -> list[str]:
    """Load ImageNet weights into the backbone (stem and layer1..4) of `model`.

    Expects the deep-stem layout (`conv1 bn1 conv2 bn2 conv3 bn3 layer* fc`, e.g.
    resnet18-imagenet.pth) or, for stem="standard", torchvision's (`conv1 bn1 layer* fc`),
    with plain BatchNorm weights (no |w| conversion). Every backbone tensor of the model must
    be in the file with its shape; file keys outside the backbone (`fc.*`,
    `num_batches_tracked`, ...) are skipped. Returns the skipped keys.
    """
    names_fn = getattr(model, "backbone_module_names", None)
    if not callable(names_fn):
        raise SkdError(f"{path}: load_backbone needs a PSPNet / DilatedResNet, got {type(model).__name__}")
    names = set(names_fn())
    sd = _strip_module_prefix(_as_state_dict(read_checkpoint(path), path))
    expected = {
        k: v
        for k, v in model.state_dict().items()
        if k.split(".")[0] in names and not k.endswith("num_batches_tracked")
    }
    to_load = {k: v for k, v in sd.items() if k in expected}
    skipped = [k for k in sd if k not in expected]
    stem = getattr(model, "stem", "deep")
    what = f"the backbone of {_describe(model)}, {stem}-stem ImageNet layout"
    hint = "pass ImageNet weights of the same depth, width and stem, or a whole-model checkpoint"
    raise_if_unfit(fit_problems(to_load, expected), path, what, hint)
    model.load_state_dict(to_load, strict=False)
    logger.info("%s: loaded %d backbone tensors; skipped %d keys: %s",
                path, len(to_load), len(skipped), ", ".join(skipped) or "none")
    return skipped
