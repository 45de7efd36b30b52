"""skd.models.load_model against mmsegmentation itself (skipped where mmseg is not installed).

mmsegmentation 1.2.2 + mmengine 0.10.7 + mmcv-lite 2.1.0 install with pip; mmcv-lite lacks the
compiled `mmcv.ops`, which ResNet, MobileNetV2, PSPHead, ASPPHead and FCNHead never call, so a
stand-in module takes its place before mmseg is imported. Each test builds a network from
mmseg's own Cityscapes config (norms as plain BN, random weights and statistics), saves its
state_dict in mmseg's checkpoint form with the config text in `meta`, loads it with
load_model and compares decode and auxiliary logits, parameter counts and FLOPs.
CI does not install mmseg; see docs/models.md for the command line that runs this.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import types

import pytest
import torch

from torch.utils.flop_counter import FlopCounterMode

from skd.models import count_flops, count_parameters, load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None, reason="mmsegmentation is not installed")

CONFIGS = [
    ("pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py", "resnet18", "psp", "v1c"),
    ("deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py", "resnet18", "aspp", "v1c"),
    ("pspnet/pspnet_r18b-d8_4xb2-80k_cityscapes-512x1024.py", "resnet18", "psp", "standard"),
    ("pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py", "resnet50", "psp", "v1c"),
    ("mobilenet_v2/mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024.py", "mobilenetv2", "psp", None),
    ("mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py", "mobilenetv2", "aspp", None),
]


def _stand_in_mmcv_ops() -> None:
    """A module whose every name is a class that refuses to be built or called."""
    if "mmcv.ops" in sys.modules:
        return
    ops = types.ModuleType("mmcv.ops")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is not part of mmcv-lite")

        return type(name, (), {"__init__": missing, "__call__": missing})

    ops.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["mmcv.ops"] = ops


@pytest.fixture(scope="module")
def mmseg_build():
    _stand_in_mmcv_ops()
    import mmseg
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")

    def build(name: str):
        cfg = Config.fromfile(os.path.join(root, name))
        model = cfg.model
        model.pop("pretrained", None)
        model.data_preprocessor = None
        for part in ("backbone", "decode_head", "auxiliary_head"):
            model[part].norm_cfg = dict(type="BN", requires_grad=True)
        return MODELS.build(model).eval(), cfg.pretty_text

    return build


def _randomize(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))


@pytest.mark.parametrize("config,arch,head,stem", CONFIGS)
def test_mmseg_network_and_skd_give_the_same_logits(tmp_path, mmseg_build, config, arch, head, stem):
    net, text = mmseg_build(config)
    _randomize(net, 0)
    path = tmp_path / "mmseg.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2", "cfg": text}, "state_dict": net.state_dict()}, path)
    ours = load_model(path)
    assert (ours.arch, ours.head_kind, ours.variant, ours.stem_kind) == (arch, head, "mmseg", stem)
    assert count_parameters(ours) == count_parameters(net)
    x = torch.randn(1, 3, 65, 97, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = net.extract_feat(x)
        decode, aux = net.decode_head(feats), net.auxiliary_head(feats)
        out = ours(x)
    torch.testing.assert_close(out.logits, decode, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux_logits, aux, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        feats = net.extract_feat(torch.zeros(1, 3, 128, 256))
        net.decode_head(feats), net.auxiliary_head(feats)
    assert count_flops(ours, (128, 256)) == counter.get_total_flops()
