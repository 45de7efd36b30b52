"""skd.models.load_backbone: ImageNet files of torchvision, mmseg and the original, into every backbone.

The file layouts are written out here from the publishers' code (torchvision/models/resnet.py
and mobilenetv2.py, mmseg/models/backbones/resnet.py), not from skd's modules.
"""
from __future__ import annotations


import pytest
import torch

from skd.errors import SkdError
from skd.models import build_model, load_backbone

from test_models_mmseg import MBV2, divisible, mobilenet_forward, random_weights, resnet_forward, resnet_layout

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _save(tmp_path, sd, name="imagenet.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def torchvision_mobilenet_v2_layout(widen: float = 1.0) -> dict[str, tuple[int, ...]]:
    """torchvision's MobileNetV2: features.0 = Conv2dNormActivation(3, 32, s2); features.k =
    InvertedResidual whose `conv` is [Conv2dNormActivation(expand)], Conv2dNormActivation(dw),
    Conv2d(project), BatchNorm2d; features.18 = Conv2dNormActivation(320, 1280, 1);
    classifier = (Dropout, Linear)."""
    s: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        for stat in BN:
            s[f"{prefix}.{stat}"] = () if stat == "num_batches_tracked" else (c,)

    inp = divisible(32 * widen)
    s["features.0.0.weight"] = (inp, 3, 3, 3)
    bn("features.0.1", inp)
    k = 1
    for t, c, n in MBV2:
        oup = divisible(c * widen)
        for _ in range(n):
            p, hidden, i = f"features.{k}.conv", int(round(inp * t)), 0
            if t != 1:
                s[f"{p}.0.0.weight"] = (hidden, inp, 1, 1)
                bn(f"{p}.0.1", hidden)
                i = 1
            s[f"{p}.{i}.0.weight"] = (hidden, 1, 3, 3)
            bn(f"{p}.{i}.1", hidden)
            s[f"{p}.{i + 1}.weight"] = (oup, hidden, 1, 1)
            bn(f"{p}.{i + 2}", oup)
            inp, k = oup, k + 1
    s["features.18.0.weight"] = (1280, inp, 1, 1)
    bn("features.18.1", 1280)
    s["classifier.1.weight"], s["classifier.1.bias"] = (1000, 1280), (1000,)
    return s


def torchvision_to_mmseg_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under mmseg's MobileNetV2 names (backbone.conv1.conv, backbone.layerL.j.conv.u.conv/bn),
    so test_models_mmseg's mobilenet_forward can run them: the reference for the conversion."""
    out, k = {}, 1
    out.update({f"backbone.conv1.conv.{leaf}": sd[f"features.0.0.{leaf}"] for leaf in ("weight",)})
    out.update({f"backbone.conv1.bn.{stat}": sd[f"features.0.1.{stat}"] for stat in BN})
    for layer, (t, _, n) in enumerate(MBV2, start=1):
        for j in range(n):
            src, dst = f"features.{k}.conv", f"backbone.layer{layer}.{j}.conv"
            units = [(f"{src}.0.0", f"{src}.0.1")] if t != 1 else []
            i = len(units)
            units += [(f"{src}.{i}.0", f"{src}.{i}.1"), (f"{src}.{i + 1}", f"{src}.{i + 2}")]
            for u, (conv, norm) in enumerate(units):
                out[f"{dst}.{u}.conv.weight"] = sd[f"{conv}.weight"]
                out.update({f"{dst}.{u}.bn.{stat}": sd[f"{norm}.{stat}"] for stat in BN})
            k += 1
    return out


@pytest.mark.parametrize("widen", [1.0, 0.5])
def test_torchvision_mobilenet_v2_file_initialises_the_backbone(tmp_path, widen):
    sd = random_weights(torchvision_mobilenet_v2_layout(widen), seed=0)
    net = build_model(arch="mobilenetv2", variant="mmseg", width_mult=widen, head_channels=8, aux_channels=8).eval()
    init = load_backbone(net, _save(tmp_path, sd, "mobilenet_v2-b0353104.pth"))
    assert init.layout == "torchvision" and init.norm_weight == "plain"
    assert sorted(k for k in init.skipped if not k.endswith("num_batches_tracked")) == sorted(
        k for k in sd if k.startswith(("features.18.", "classifier.")) and not k.endswith("num_batches_tracked"))
    assert init.loaded == sum(1 for k in net.backbone.state_dict() if not k.endswith("num_batches_tracked"))
    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = net.backbone(x)
        want = mobilenet_forward(torchvision_to_mmseg_names(sd), x, widen)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_mmseg_resnet_v1c_file_initialises_the_backbone_and_leaves_the_heads(tmp_path):
    shapes, _, _ = resnet_layout(18, 16)
    sd = random_weights(shapes, seed=1)
    file = {"state_dict": {k.removeprefix("backbone."): v for k, v in sd.items()}}
    file["state_dict"]["fc.weight"] = torch.zeros(1000, 128)
    net = build_model(arch="resnet18", variant="mmseg", width_mult=0.25).eval()
    heads = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("pspmodule.", "head.", "dsn."))}
    init = load_backbone(net, _save(tmp_path, file, "resnet18_v1c.pth"))
    assert init.layout == "mmseg" and init.norm_weight == "plain"
    assert "fc.weight" in init.skipped
    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for g, w in zip(net.backbone(x), resnet_forward(sd, x, 18)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for key, value in heads.items():
        assert torch.equal(net.state_dict()[key], value), key


def test_torchvision_resnet50_initialises_the_standard_stem_student(tmp_path):
    shapes, _, _ = resnet_layout(50, 8, deep_stem=False)
    sd = {k.removeprefix("backbone."): v for k, v in random_weights(shapes, seed=2).items()}
    net = build_model(arch="resnet50", stem="standard", width_mult=0.125)
    init = load_backbone(net, _save(tmp_path, sd, "resnet50-0676ba61.pth"))
    assert init.layout == "torchvision" and init.loaded == len([k for k in sd if not k.endswith("num_batches_tracked")])
    assert torch.equal(net.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])


def test_a_file_that_does_not_fill_the_backbone_is_refused_naming_the_first_keys(tmp_path):
    shapes, _, _ = resnet_layout(18, 16)
    sd = {k.removeprefix("backbone."): v for k, v in random_weights(shapes, seed=1).items()}
    del sd["layer4.1.conv2.weight"]
    net = build_model(arch="resnet18", variant="mmseg", width_mult=0.25)
    with pytest.raises(SkdError) as err:
        load_backbone(net, _save(tmp_path, sd))
    message = str(err.value)
    assert "does not fit the backbone of resnet18 (width 0.25, 19 classes, mmseg variant) (mmseg ImageNet layout)" in message
    assert "layer4.1.conv2.weight (128, 128, 3, 3) is missing from the file" in message


def test_a_backbone_file_of_another_stem_is_refused_with_the_shapes(tmp_path):
    shapes, _, _ = resnet_layout(18, 16)
    sd = {k.removeprefix("backbone."): v for k, v in random_weights(shapes, seed=1).items()}
    with pytest.raises(SkdError, match=r"stem\.0\.weight \(8, 3, 3, 3\) in the file has no place|conv1\.weight .* is missing"):
        load_backbone(build_model(arch="resnet18", width_mult=0.25), _save(tmp_path, sd))


def test_a_torchvision_resnet_into_mobilenet_is_refused(tmp_path):
    shapes, _, _ = resnet_layout(18, 16, deep_stem=False)
    sd = {k.removeprefix("backbone."): v for k, v in random_weights(shapes, seed=1).items()}
    with pytest.raises(SkdError, match=r"does not fit the backbone of mobilenetv2 .*conv1\.conv\.weight"):
        load_backbone(build_model(arch="mobilenetv2", width_mult=0.5), _save(tmp_path, sd))


def test_norm_weight_abs_can_be_asked_for_any_layout_and_unknown_conventions_are_refused(tmp_path):
    shapes, _, _ = resnet_layout(18, 16)
    sd = {k.removeprefix("backbone."): v for k, v in random_weights(shapes, seed=1).items()}
    key = next(k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 1 and (v < 0).any())
    path = _save(tmp_path, sd)
    net = build_model(arch="resnet18", variant="mmseg", width_mult=0.25)
    assert load_backbone(net, path, norm_weight="abs").norm_weight == "abs"
    torch.testing.assert_close(net.backbone.state_dict()[key], sd[key].abs() + 1e-5, rtol=0, atol=0)
    with pytest.raises(SkdError, match="norm_weight 'square'"):
        load_backbone(net, path, norm_weight="square")


def test_load_backbone_needs_an_skd_network(tmp_path):
    path = _save(tmp_path, {"weight": torch.zeros(1)})
    with pytest.raises(SkdError, match="load_backbone needs an skd network or backbone, got Linear"):
        load_backbone(torch.nn.Linear(1, 1), path)
