"""Loading networks and weights: skd's own checkpoints, the official SKD ones, mmsegmentation's.

Every file is read with `torch.load(weights_only=True)`, so a checkpoint can never run code,
and every mismatch is reported as an SkdError naming the file and the offending keys.
- `read_model_file(path)`: which network a file describes and its weights in skd's keys and
  norm convention (`ModelFile`), for the three layouts (see docs/models.md).
- `load_model(path)`: that network, built and loaded.
- `load_weights(model, path)` / `load_official(model, path)`: a file into a network built
  from flags, strictly.
ImageNet backbone files are skd.models.imagenet's.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from skd.errors import SkdError
from skd.integrity import verify
from skd.models.layouts import infer_config, is_flat_skd_layout, is_mmseg_layout, mmseg_to_skd, official_to_skd
from skd.models.segnet import SegmentationNet, build_model, check_model_config, complete_config

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
# The original InPlace-ABN scales by |weight| + eps instead of weight (docs/reproduction.md, section 2).
OFFICIAL_ABN_EPS = 1e-5
# How many offending keys an error message lists before "and N more".
MAX_LISTED = 4


# How weights-only loading says which global it refused, across torch versions.
_REFUSED = (
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),    # torch 2.6+: os, posix, subprocess...
    re.compile(r"GLOBAL (\S+) was not an allowed global by default"),       # torch 2.4+: any other global
    re.compile(r"Unsupported global: GLOBAL (\S+)"),                        # older wording
    re.compile(r"call reduce for unrecognized function (.+?)(?: which belongs to .*)?$", re.M),
    re.compile(r"Can only create new object for .* but got (.+)$", re.M),
)


def _short_reason(exc: BaseException) -> str:
    """One-line explanation of why torch.load failed."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        for pattern in _REFUSED:
            refused = pattern.search(text)
            if refused:
                name = refused.group(1).rstrip(".")
                fix = "re-save it as a plain state_dict of tensors"
                if name.startswith(("mmengine.", "mmcv.", "numpy.")):
                    fix = ("for an mmsegmentation training checkpoint keep only its weights, where mmengine is "
                           "installed: torch.save({'state_dict': torch.load(F, weights_only=False)['state_dict']}, G)")
                return (f"unpickling it would call {name}, which weights-only loading refuses "
                        f"(it could run arbitrary code); {fix}")
        match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n\s*Check the documentation|$)", text, re.S)
        detail = " ".join((match.group(1) if match else text).split())
        return f"not a PyTorch checkpoint, or corrupted ({detail.split('. ')[0]})"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    first = " ".join(text.split()).split(". ")[0] or type(exc).__name__
    return f"corrupted, truncated or not a PyTorch checkpoint ({first})"


def read_checkpoint(path: PathLike) -> Any:
    """`torch.load(path)` on the CPU, weights only, after an integrity check (skd.integrity);
    any failure becomes a one-line SkdError."""
    if not os.path.isfile(path):
        raise SkdError(f"{path}: no such file; pass the path of a .pth checkpoint")
    verify(path)  # the zip entries' CRC-32s, which torch.load does not check
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types; all mean the same to the user
        raise SkdError(f"{path}: cannot be loaded: {_short_reason(exc)}") from exc


def as_state_dict(obj: Any, path: PathLike) -> dict[str, torch.Tensor]:
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


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop `prefix` where a key has it (`module.` from (Distributed)DataParallel)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


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


MODEL_HINT = "build the model with the checkpoint's --arch, --head, --variant, --width-mult, --num-classes and --stem"


def raise_if_unfit(problems: list[str], path: PathLike, what: str, hint: str = MODEL_HINT) -> None:
    if not problems:
        return
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise SkdError(f"{path}: does not fit {what}: {listed}{more} ({hint})")


def match_batch_counters(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
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


def abs_norm_weights(sd: Mapping[str, torch.Tensor], eps: float = OFFICIAL_ABN_EPS) -> dict[str, torch.Tensor]:
    """Every norm weight w (a `X.weight` next to `X.running_var`) as |w| + eps: the scale the
    original InPlace-ABN applied (docs/reproduction.md, section 2), as a plain weight. New dict."""
    out = dict(sd)
    for key in sd:
        if key.endswith(".running_var") and (weight := key[: -len("running_var")] + "weight") in sd:
            out[weight] = sd[weight].abs() + eps
    return out


def convert_official_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SKD state_dict -> one that `model.load_state_dict` takes, same computation.

    Strips `module.`; in the teacher's old layout (no `pspmodule.` keys) renames `head.0.` to
    `pspmodule.` and `head.1.` to `head.`; drops `fc.`; turns every norm weight w of `model`
    into |w| + 1e-5, the scale the original InPlace-ABN applied; fills in `num_batches_tracked`
    from the model. The input is not modified.
    """
    sd = official_to_skd(strip_prefix(sd))
    norms = set(norm_layer_names(model))
    converted = abs_norm_weights({k: v for k, v in sd.items() if k.rpartition(".")[0] in norms})
    return match_batch_counters({**sd, **converted}, model)


def _scalar_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ckpt.items() if v is None or isinstance(v, (bool, int, float, str))}


# ---------------------------------------------------------------------------------------------
# Which network a file describes
# ---------------------------------------------------------------------------------------------
LAYOUTS_TRIED = (
    "an skd checkpoint (a dict with skd_format and model), an mmsegmentation checkpoint "
    "(state_dict keys backbone.*, decode_head.*, auxiliary_head.*), an official SKD state_dict "
    "(conv1/layer*/pspmodule or head.0/dsn keys)"
)


@dataclass
class ModelFile:
    """What `read_model_file` found: `format` ("skd", "official" or "mmseg"); `config`, the
    model config that rebuilds the network (`build_model(**config)`, norm "bn" unless the file
    says); `state_dict` in skd's keys with plain norm weights; `metadata`, the file's scalar
    entries (skd: skd_format, step, miou, ...; mmseg: those of its meta)."""

    format: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def _skd_file(obj: Mapping[str, Any], path: PathLike) -> ModelFile:
    if "model" not in obj:
        raise SkdError(f"{path}: skd checkpoint without a 'model' entry; it was not saved by skd")
    sd = strip_prefix(as_state_dict(obj["model"], path))
    convention = obj.get("norm_weight", "plain")
    if convention == "abs":
        sd = abs_norm_weights(official_to_skd(sd))
    elif convention != "plain":
        raise SkdError(f"{path}: norm_weight {convention!r} is unknown; expected 'plain' or 'abs' (|w| + 1e-5)")
    file_config = obj.get("model_config")
    if isinstance(file_config, Mapping):
        try:
            config = complete_config(dict(file_config))
        except SkdError as exc:
            raise SkdError(f"{path}: {exc}") from None
    else:
        config = infer_config(sd, "skd" if "dsn.0.bias" in sd else "mmseg", str(path))
    return ModelFile("skd", config, sd, _scalar_metadata(obj))


def _hint_for_unknown(sd: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(("fc.", "features.", "classifier.")) for k in sd) or "stem.0.weight" in sd:
        return "; it looks like ImageNet backbone weights: give it as the student's initialisation (--restore-from)"
    return ""


def read_model_file(path: PathLike) -> ModelFile:
    """The network a checkpoint file describes, with its weights in skd's keys (`ModelFile`).

    Decided by content: a dict with `skd_format` is skd's (model_config, or the keys when it
    has none); a state dict (alone, or under `state_dict` next to `meta`) whose keys begin
    `backbone.` and `decode_head.` is mmsegmentation's; one with a stem and `pspmodule.` /
    `head.0.` / `aspp.` keys is an official SKD file (norm weights -> |w| + 1e-5). Anything
    else is an SkdError naming the layouts tried.
    """
    return _model_file(read_checkpoint(path), path)


def _model_file(obj: Any, path: PathLike) -> ModelFile:
    if isinstance(obj, Mapping) and "skd_format" in obj:
        return _skd_file(obj, path)
    sd = strip_prefix(as_state_dict(obj, path))
    if is_mmseg_layout(sd):
        meta = obj.get("meta") if isinstance(obj, Mapping) else None
        renamed, config = mmseg_to_skd(sd, meta, str(path))
        metadata = _scalar_metadata(meta) if isinstance(meta, Mapping) else {}
        return ModelFile("mmseg", config, renamed, metadata)
    if is_flat_skd_layout(sd):
        sd = abs_norm_weights(official_to_skd(sd))
        return ModelFile("official", infer_config(sd, "skd", str(path)), sd)
    first = ", ".join(list(sd)[:MAX_LISTED]) or "none"
    raise SkdError(
        f"{path}: not a segmentation checkpoint skd knows; tried {LAYOUTS_TRIED}; its keys begin {first}"
        f"{_hint_for_unknown(sd)}"
    )


def _load_state(model: nn.Module, sd: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Strictly load `sd` into `model`; SkdError naming the first keys that do not fit."""
    sd = match_batch_counters(sd, model)
    raise_if_unfit(fit_problems(sd, model.state_dict()), path, _describe(model))
    model.load_state_dict(sd, strict=True)


def load_model(path: PathLike, norm: str = "bn") -> SegmentationNet:
    """The network `path` describes, with its weights, in eval mode (call .train() to train it).

    Every format of `read_model_file`: skd's training checkpoints, best.pth and final.pth, the
    official SKD teacher and student, mmsegmentation's PSPNet / DeepLabV3 checkpoints. `norm`
    is the norm layer to build with (`--norm`; the weights do not depend on it). For an mmseg
    file, `net(net.input_spec.normalize(raw))` gives mmseg's decode and auxiliary logits.
    """
    mf = read_model_file(path)
    try:
        net = build_model(**{**mf.config, "norm": norm})
    except SkdError as exc:
        raise SkdError(f"{path}: its model_config {mf.config} does not build: {exc}") from None
    _load_state(net, mf.state_dict, path)
    logger.info("%s: %s checkpoint, built %s", path, mf.format, net.describe())
    return net.eval()


def load_official(model: nn.Module, path: PathLike) -> None:
    """Load an official SKD checkpoint (teacher or student) into `model`, strictly.

    Raises SkdError naming `path` when the file cannot be read or does not fit the model.
    """
    _load_official(model, read_checkpoint(path), path)


def _load_official(model: nn.Module, obj: Any, path: PathLike) -> None:
    _load_state(model, convert_official_state_dict(as_state_dict(obj, path), model), path)
    logger.info("%s: loaded official checkpoint into %s (%d norm weights -> |w| + 1e-5)",
                path, _describe(model), len(norm_layer_names(model)))


def load_weights(model: nn.Module, path: PathLike) -> dict[str, Any]:
    """Load any file of `read_model_file` into `model`, strictly.

    An skd file's `model_config` and an mmseg file's inferred config must match the model's
    (`check_model_config`: the norm aside, since the weights do not depend on it; the message
    names the flags). An official file is checked key by key. Returns {"format", "path",
    "model_config"} plus the file's scalar entries (skd_format, step, miou, ...).
    """
    obj = read_checkpoint(path)
    is_skd = isinstance(obj, Mapping) and "skd_format" in obj
    if not is_skd and not is_mmseg_layout(strip_prefix(as_state_dict(obj, path))):
        _load_official(model, obj, path)
        return {"format": "official", "path": str(path), "model_config": None}
    mf = _model_file(obj, path)
    config = getattr(model, "config", None)
    file_has_config = mf.format == "mmseg" or isinstance(obj.get("model_config"), Mapping)
    if file_has_config and callable(config):
        check_model_config(mf.config, config(), str(path))
    _load_state(model, mf.state_dict, path)
    logger.info("%s: loaded %s checkpoint into %s", path, mf.format, _describe(model))
    info: dict[str, Any] = {"format": mf.format, "path": str(path)}
    info.update(mf.metadata)
    info["model_config"] = mf.config if file_has_config else None
    return info
