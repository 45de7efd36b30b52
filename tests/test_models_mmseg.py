"""mmsegmentation checkpoints through skd.models.load_model, against an independent description.

The key names, shapes and the forward below are written from mmsegmentation 1.2.2's sources
(mmseg/models/backbones/resnet.py, mobilenet_v2.py, utils/res_layer.py, utils/inverted_residual.py,
decode_heads/psp_head.py, aspp_head.py, fcn_head.py, decode_head.py; mmcv's ConvModule) and
configs/_base_/models/{pspnet,deeplabv3}_r50-d8.py and configs/mobilenet_v2/*-d8_*, with
torch.nn.functional only: no skd module is called to make the reference. Widths are scaled
down (mmseg's base_channels / widen_factor) to keep the tests fast.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from skd.errors import SkdError
from skd.models import MMSEG_INPUT, build_model, load_model, load_weights, read_model_file

Shapes = dict[str, tuple[int, ...]]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3))}
MBV2 = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def _bn(shapes: Shapes, prefix: str, c: int) -> None:
    for stat in BN:
        shapes[f"{prefix}.{stat}"] = () if stat == "num_batches_tracked" else (c,)


def _conv_module(shapes: Shapes, prefix: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
    """mmcv ConvModule with a BN norm: `conv` without bias, `bn`."""
    shapes[f"{prefix}.conv.weight"] = (cout, cin // groups, k, k)
    _bn(shapes, f"{prefix}.bn", cout)


# ---- layouts -----------------------------------------------------------------------------------
def resnet_layout(depth: int, base: int, deep_stem: bool = True) -> tuple[Shapes, int, int]:
    """mmseg ResNetV1c (deep_stem) or ResNet (V1b) keys under `backbone.`; (shapes, C3, C4)."""
    s: Shapes = {}
    if deep_stem:
        half = base // 2
        s["backbone.stem.0.weight"] = (half, 3, 3, 3)
        _bn(s, "backbone.stem.1", half)
        s["backbone.stem.3.weight"] = (half, half, 3, 3)
        _bn(s, "backbone.stem.4", half)
        s["backbone.stem.6.weight"] = (base, half, 3, 3)
        _bn(s, "backbone.stem.7", base)
    else:
        s["backbone.conv1.weight"] = (base, 3, 7, 7)
        _bn(s, "backbone.bn1", base)
    kind, blocks = RESNET_BLOCKS[depth]
    expansion = 1 if kind == "basic" else 4
    inplanes = base
    for i, n in enumerate(blocks):
        planes = base * 2**i
        for b in range(n):
            p = f"backbone.layer{i + 1}.{b}"
            if kind == "basic":
                s[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(s, f"{p}.bn1", planes)
                _bn(s, f"{p}.bn2", planes)
            else:
                s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                for j, c in ((1, planes), (2, planes), (3, planes * 4)):
                    _bn(s, f"{p}.bn{j}", c)
            if b == 0 and (i == 1 or inplanes != planes * expansion):
                s[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return s, base * 4 * expansion, base * 8 * expansion


def divisible(v: float) -> int:
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


def mobilenet_layout(widen: float) -> tuple[Shapes, int, int]:
    s: Shapes = {}
    inp = divisible(32 * widen)
    _conv_module(s, "backbone.conv1", 3, inp, 3)
    outs = []
    for i, (t, c, n) in enumerate(MBV2):
        oup = divisible(c * widen)
        for b in range(n):
            p = f"backbone.layer{i + 1}.{b}.conv"
            hidden = int(round(inp * t))
            j = 0
            if t != 1:
                _conv_module(s, f"{p}.{j}", inp, hidden, 1)
                j += 1
            _conv_module(s, f"{p}.{j}", hidden, hidden, 3, groups=hidden)
            _conv_module(s, f"{p}.{j + 1}", hidden, oup, 1)
            inp = oup
        outs.append(oup)
    return s, outs[4], outs[6]


def psp_head_layout(s: Shapes, cin: int, ch: int, k: int) -> None:
    for i in range(4):
        _conv_module(s, f"decode_head.psp_modules.{i}.1", cin, ch, 1)
    _conv_module(s, "decode_head.bottleneck", cin + 4 * ch, ch, 3)
    s["decode_head.conv_seg.weight"], s["decode_head.conv_seg.bias"] = (k, ch, 1, 1), (k,)


def aspp_head_layout(s: Shapes, cin: int, ch: int, k: int) -> None:
    _conv_module(s, "decode_head.image_pool.1", cin, ch, 1)
    for i, kernel in enumerate((1, 3, 3, 3)):
        _conv_module(s, f"decode_head.aspp_modules.{i}", cin, ch, kernel)
    _conv_module(s, "decode_head.bottleneck", 5 * ch, ch, 3)
    s["decode_head.conv_seg.weight"], s["decode_head.conv_seg.bias"] = (k, ch, 1, 1), (k,)


def fcn_aux_layout(s: Shapes, cin: int, ch: int, k: int) -> None:
    _conv_module(s, "auxiliary_head.convs.0", cin, ch, 3)
    s["auxiliary_head.conv_seg.weight"], s["auxiliary_head.conv_seg.bias"] = (k, ch, 1, 1), (k,)


def random_weights(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    """Values that keep activations of order one: convs ~ N(0, 1/fan_in), norm weights in
    [0.5, 1.5] (some negative), small biases and means, variances in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", "bias")):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sign = torch.where(torch.rand(shape, generator=g) < 0.1, -1.0, 1.0)
            sd[key] = sign * (0.5 + torch.rand(shape, generator=g))
        else:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return sd


# ---- the forward, with torch.nn.functional ----------------------------------------------------------
def bn(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def conv_module(sd, p, x, act=F.relu, stride=1, padding=0, dilation=1, groups=1):
    y = bn(sd, f"{p}.bn", F.conv2d(x, sd[f"{p}.conv.weight"], None, stride, padding, dilation, groups))
    return act(y) if act is not None else y


def resnet_forward(sd, x, depth, deep_stem=True):
    """ResNetV1c/V1b with strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation."""
    b = "backbone"
    if deep_stem:
        x = F.relu(bn(sd, f"{b}.stem.1", F.conv2d(x, sd[f"{b}.stem.0.weight"], None, 2, 1)))
        x = F.relu(bn(sd, f"{b}.stem.4", F.conv2d(x, sd[f"{b}.stem.3.weight"], None, 1, 1)))
        x = F.relu(bn(sd, f"{b}.stem.7", F.conv2d(x, sd[f"{b}.stem.6.weight"], None, 1, 1)))
    else:
        x = F.relu(bn(sd, f"{b}.bn1", F.conv2d(x, sd[f"{b}.conv1.weight"], None, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    kind, blocks = RESNET_BLOCKS[depth]
    outs = []
    for i, (n, stride, dilation) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
        for j in range(n):
            p = f"{b}.layer{i + 1}.{j}"
            d = (dilation // 2 if dilation > 1 else dilation) if j == 0 else dilation
            s = stride if j == 0 else 1
            identity = x
            if f"{p}.downsample.0.weight" in sd:
                identity = bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], None, s))
            if kind == "basic":
                out = F.relu(bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], None, s, d, d)))
                out = bn(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], None, 1, 1))  # not dilated
            else:
                out = F.relu(bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
                out = F.relu(bn(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], None, s, d, d)))
                out = bn(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            x = F.relu(out + identity)
        outs.append(x)
    return outs


def mobilenet_forward(sd, x, widen):
    """strides (1, 2, 2, 1, 1, 1, 1), dilations (1, 1, 1, 2, 2, 4, 4) on each layer's FIRST block."""
    relu6 = lambda t: F.hardtanh(t, 0.0, 6.0)  # noqa: E731
    x = conv_module(sd, "backbone.conv1", x, relu6, stride=2, padding=1)
    inp, outs = divisible(32 * widen), []
    for i, ((t, c, n), stride, dilation) in enumerate(zip(MBV2, (1, 2, 2, 1, 1, 1, 1), (1, 1, 1, 2, 2, 4, 4))):
        oup = divisible(c * widen)
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}.conv"
            s, d = (stride, dilation) if j == 0 else (1, 1)
            hidden, k, y = int(round(inp * t)), 0, x
            if t != 1:
                y, k = conv_module(sd, f"{p}.0", y, relu6), 1
            y = conv_module(sd, f"{p}.{k}", y, relu6, stride=s, padding=d, dilation=d, groups=hidden)
            y = conv_module(sd, f"{p}.{k + 1}", y, None)
            x = x + y if s == 1 and inp == oup else y
            inp = oup
        outs.append(x)
    return [outs[1], outs[2], outs[4], outs[6]]


def up(t, size):
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def psp_forward(sd, x):
    priors = [up(conv_module(sd, f"decode_head.psp_modules.{i}.1", F.adaptive_avg_pool2d(x, s)), x.shape[-2:])
              for i, s in enumerate((1, 2, 3, 6))]
    feat = conv_module(sd, "decode_head.bottleneck", torch.cat([x] + priors, 1), padding=1)
    return F.conv2d(feat, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def aspp_forward(sd, x):
    parts = [up(conv_module(sd, "decode_head.image_pool.1", F.adaptive_avg_pool2d(x, 1)), x.shape[-2:])]
    parts.append(conv_module(sd, "decode_head.aspp_modules.0", x))
    for i, rate in enumerate((12, 24, 36), start=1):
        parts.append(conv_module(sd, f"decode_head.aspp_modules.{i}", x, padding=rate, dilation=rate))
    feat = conv_module(sd, "decode_head.bottleneck", torch.cat(parts, 1), padding=1)
    return F.conv2d(feat, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def fcn_aux_forward(sd, x):
    y = conv_module(sd, "auxiliary_head.convs.0", x, padding=1)
    return F.conv2d(y, sd["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.bias"])


# ---- cases -----------------------------------------------------------------------------------------
def mmseg_case(backbone: str, head: str, num_classes: int = 7, seed: int = 0):
    """(state dict, reference forward) of an mmseg EncoderDecoder."""
    if backbone.startswith("mobilenetv2"):
        widen = float(backbone.split("@")[1])
        shapes, c3, c4 = mobilenet_layout(widen)
        decode_ch, aux_ch = 512 // 8, 256 // 8  # mmseg's 512 / 256, narrowed for speed
        features = lambda sd, x: mobilenet_forward(sd, x, widen)  # noqa: E731
    else:
        depth, stem = int(backbone.split("-")[0][1:]), backbone.split("-")[1]
        shapes, c3, c4 = resnet_layout(depth, 16, deep_stem=stem == "v1c")
        decode_ch, aux_ch = c4 // 4, c3 // 4
        features = lambda sd, x: resnet_forward(sd, x, depth, deep_stem=stem == "v1c")  # noqa: E731
    (psp_head_layout if head == "psp" else aspp_head_layout)(shapes, c4, decode_ch, num_classes)
    fcn_aux_layout(shapes, c3, aux_ch, num_classes)
    sd = random_weights(shapes, seed)
    decode = psp_forward if head == "psp" else aspp_forward

    def reference(x):
        feats = features(sd, x)
        return decode(sd, feats[3]), fcn_aux_forward(sd, feats[2])

    return sd, reference


CASES = [("r18-v1c", "psp"), ("r18-v1c", "aspp"), ("r50-v1c", "psp"), ("r50-v1c", "aspp"), ("r18-standard", "psp"),
         ("mobilenetv2@1.0", "psp"), ("mobilenetv2@1.0", "aspp"), ("mobilenetv2@0.5", "aspp")]


@pytest.mark.parametrize("backbone,head", CASES)
def test_mmseg_checkpoint_loads_and_gives_mmseg_logits(tmp_path, backbone, head):
    sd, reference = mmseg_case(backbone, head)
    path = tmp_path / "mmseg.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2", "iter": 80000}, "state_dict": sd}, path)
    net = load_model(path)
    assert net.variant == "mmseg" and net.head_kind == head and net.num_classes == 7 and not net.training
    assert net.input_spec == MMSEG_INPUT
    x = torch.randn(2, 3, 41, 33, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x)
        want_logits, want_aux = reference(x)
    torch.testing.assert_close(out.logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux_logits, want_aux, rtol=1e-5, atol=1e-5)


def test_mmseg_network_reads_raw_bgr_through_its_input_spec(tmp_path):
    """raw BGR 0..255 -> input_spec.normalize -> logits = mmseg's on its own normalised RGB."""
    sd, reference = mmseg_case("r18-v1c", "psp", num_classes=4)
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": sd}, path)
    net = load_model(path)
    raw = 255 * torch.rand(1, 3, 33, 49, generator=torch.Generator().manual_seed(2))
    rgb = raw[:, [2, 1, 0]]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        got = net(net.input_spec.normalize(raw)).logits
        want = reference((rgb - mean) / std)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert net.input_spec.align_corners is False


def test_mmseg_file_config_and_metadata(tmp_path):
    sd, _ = mmseg_case("mobilenetv2@0.5", "psp", num_classes=11)
    path = tmp_path / "mbv2.pth"
    torch.save({"meta": {"mmseg_version": "0.11.0", "CLASSES": ("a", "b")}, "state_dict": sd}, path)
    mf = read_model_file(path)
    assert mf.format == "mmseg" and mf.metadata == {"mmseg_version": "0.11.0"}
    assert mf.config == {"arch": "mobilenetv2", "head": "psp", "variant": "mmseg", "num_classes": 11, "width_mult": 0.5,
                         "stem": None, "norm": "bn", "head_channels": 64, "aux_channels": 32}
    assert build_model(**mf.config).config() == mf.config


def test_load_weights_of_an_mmseg_file_names_the_flags_that_differ(tmp_path):
    sd, _ = mmseg_case("r18-v1c", "aspp")
    path = tmp_path / "deeplab.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(SkdError) as err:
        load_weights(build_model(arch="resnet18", head="psp", variant="mmseg", num_classes=7, width_mult=0.25), path)
    assert str(err.value).startswith(f"{path}: the file holds --head aspp, this run has --head psp; ")
    model = build_model(arch="resnet18", head="aspp", variant="mmseg", num_classes=7, width_mult=0.25)
    assert load_weights(model, path)["format"] == "mmseg"


# ---- what skd does not build -------------------------------------------------------------------------
def _save(tmp_path, sd, meta=None):
    path = tmp_path / "other.pth"
    torch.save({"meta": meta or {}, "state_dict": sd}, path)
    return path


def test_uperhead_checkpoint_is_refused_naming_what_it_holds(tmp_path):
    shapes, c3, c4 = resnet_layout(18, 8)
    shapes["decode_head.lateral_convs.0.conv.weight"] = (16, 8, 1, 1)
    shapes["decode_head.fpn_bottleneck.conv.weight"] = (16, 64, 3, 3)
    shapes["decode_head.psp_modules.0.1.conv.weight"] = (16, c4, 1, 1)
    fcn_aux_layout(shapes, c3, 8, 5)
    path = _save(tmp_path, random_weights(shapes, 0))
    with pytest.raises(SkdError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: mmsegmentation checkpoint of UPerHead on ResNetV1c with an FCNHead")
    assert "supported: PSPHead or ASPPHead" in message and "\n" not in message


def test_segformer_checkpoint_is_refused_naming_its_backbone_and_head(tmp_path):
    sd = {"backbone.layers.0.0.projection.weight": torch.zeros(4, 3, 7, 7),
          "decode_head.linear_fuse.conv.weight": torch.zeros(4, 16, 1, 1)}
    path = _save(tmp_path, sd)
    with pytest.raises(SkdError, match=r"checkpoint of SegformerHead on MixVisionTransformer \(SegFormer\) with no auxiliary head"):
        load_model(path)


def test_resnet_v1d_is_refused(tmp_path):
    sd, _ = mmseg_case("r18-v1c", "psp")
    sd = {k.replace("layer2.0.downsample.1.", "layer2.0.downsample.2.").replace("layer2.0.downsample.0.", "layer2.0.downsample.1."): v
          for k, v in sd.items()}
    with pytest.raises(SkdError, match="PSPHead on ResNetV1d"):
        load_model(_save(tmp_path, sd))


def test_fcn_auxiliary_head_with_two_convs_is_refused(tmp_path):
    sd, _ = mmseg_case("r18-v1c", "psp")
    sd["auxiliary_head.convs.1.conv.weight"] = torch.zeros(16, 16, 3, 3)
    with pytest.raises(SkdError, match=r"an auxiliary head skd does not build \(key auxiliary_head\.convs\.1\.conv\.weight\)"):
        load_model(_save(tmp_path, sd))


MMSEG_D16_CONFIG = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                  contract_dilation=True, norm_cfg=norm_cfg, multi_grid=(1, 2, 4)),
    decode_head=dict(type='ASPPHead', dilations=(1, 6, 12, 18), align_corners=False, norm_cfg=norm_cfg),
    auxiliary_head=dict(type='FCNHead', num_convs=1, concat_input=False))
"""


@pytest.mark.parametrize("meta_key", ["config", "cfg"])
def test_a_d16_deeplab_is_refused_from_its_stored_config(tmp_path, meta_key):
    """Same tensors as d8; only the training config in meta tells the strides apart."""
    sd, _ = mmseg_case("r18-v1c", "aspp")
    path = _save(tmp_path, sd, {meta_key: MMSEG_D16_CONFIG})
    with pytest.raises(SkdError, match=r"its mmseg config has backbone\.strides=\(1, 2, 2, 1\), skd builds "
                                       r"backbone\.strides=\(1, 2, 1, 1\)"):
        load_model(path)


def test_a_d8_config_in_meta_is_accepted_and_other_normalisation_refused(tmp_path):
    sd, _ = mmseg_case("r18-v1c", "aspp")
    d8 = (MMSEG_D16_CONFIG.replace("strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)", "strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)")
          .replace(", multi_grid=(1, 2, 4)", "").replace("(1, 6, 12, 18)", "(1, 12, 24, 36)"))
    load_model(_save(tmp_path, sd, {"config": d8}))
    other = d8 + "img_norm_cfg = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)\n"
    with pytest.raises(SkdError, match=r"normalises input with mean=\(127\.5, 127\.5, 127\.5\)"):
        load_model(_save(tmp_path, sd, {"config": other}))
