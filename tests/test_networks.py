"""The networks of skd.models.segnet: every backbone x head x variant, their dilations, heads,
flags, norm safety (InPlace-ABN) and the SKD-style ASPP head against a hand-written forward."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skd.models.segnet as segnet
from skd.errors import SkdError
from skd.models import MMSEG_INPUT, SKD_INPUT, PSPNetOutput, SegOutput, build_model, count_parameters, pspnet
from skd.models.heads import ASPPModule
from skd.nn.norm import BatchNormAct2d

from test_models import randomize_norms

ARCHS = ("resnet18", "resnet50", "mobilenetv2")
SMALL = {"resnet18": 0.25, "resnet50": 0.125, "mobilenetv2": 0.5}


@pytest.mark.parametrize("arch,head,variant", list(itertools.product(ARCHS, ("psp", "aspp"), ("skd", "mmseg"))))
def test_every_network_builds_runs_and_describes_itself(arch, head, variant):
    net = build_model(arch=arch, head=head, variant=variant, num_classes=5, width_mult=SMALL[arch]).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert isinstance(out, PSPNetOutput) and SegOutput is PSPNetOutput
    stride8 = 9 if net.stem_kind == "deep" else 8  # the deep stem's ceil-mode pool rounds up
    assert out.logits.shape == out.aux_logits.shape == (1, 5, stride8, stride8)
    assert out.feat.shape == (1, net.feat_channels, stride8, stride8)
    c1, c2, c3, c4 = net.backbone.channels
    assert [o.shape[1] for o in (out.layer1, out.layer2, out.layer3, out.layer4)] == [c1, c2, c3, c4]
    assert out.layer1.shape[-1] == 2 * stride8 - (1 if net.stem_kind == "deep" else 0)
    assert net.input_spec == (SKD_INPUT if variant == "skd" else MMSEG_INPUT)
    assert net.num_classes == 5
    rebuilt = build_model(**net.config())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert set(net.config()) == set(segnet.CONFIG_FLAGS)


def test_backbone_module_names_cover_exactly_the_backbone_keys():
    for config in (dict(arch="resnet18"), dict(arch="resnet18", variant="mmseg"), dict(arch="mobilenetv2")):
        net = build_model(**config, width_mult=0.25)
        names = set(net.backbone_module_names())
        top = {k.split(".")[0] for k in net.state_dict()}
        assert top - names == {"pspmodule", "head", "dsn"}
        assert set(net.backbone.state_dict()) == {k for k in net.state_dict() if k.split(".")[0] in names}


def test_default_head_widths_follow_each_variant():
    """SKD: c4/4 for both heads (R18: 128, 128); mmseg: c4/4 and c3/4 (R18: 128, 64; R50: 512, 256),
    MobileNetV2 512 and 256 (its configs keep the R101 heads)."""
    cases = {("resnet18", "skd"): (128, 128), ("resnet18", "mmseg"): (128, 64), ("resnet50", "mmseg"): (512, 256),
             ("mobilenetv2", "mmseg"): (512, 256), ("mobilenetv2", "skd"): (80, 80)}
    for (arch, variant), want in cases.items():
        with torch.device("meta"):
            net = build_model(arch=arch, variant=variant)
        assert (net.head_channels, net.aux_channels) == want, (arch, variant)


def _dilations(layer: nn.Module) -> list[tuple[int, int]]:
    return [(block.conv1.dilation[0], block.conv2.dilation[0]) for block in layer]


def test_resnet_dilations_of_the_skd_and_mmseg_variants():
    skd = build_model(arch="resnet18", width_mult=0.25)
    assert _dilations(skd.layer3) == [(2, 2), (2, 2)] and _dilations(skd.layer4) == [(4, 4), (4, 4)]
    mm = build_model(arch="resnet18", variant="mmseg", width_mult=0.25)
    # contract_dilation: first block half; BasicBlock conv2 never dilated (mmseg resnet.py).
    assert _dilations(mm.layer3) == [(1, 1), (2, 1)] and _dilations(mm.layer4) == [(2, 1), (4, 1)]
    mm50 = build_model(arch="resnet50", variant="mmseg", width_mult=0.125)
    assert [b.conv2.dilation[0] for b in mm50.layer3] == [1] + [2] * 5
    assert [b.conv2.padding[0] for b in mm50.layer4] == [2, 4, 4]
    assert mm.stem[0].stride == (2, 2) and mm.maxpool.ceil_mode is False and skd.maxpool.ceil_mode is True


def test_mobilenet_dilations_of_the_two_variants():
    def depthwise(net):
        return [[(blk.conv[-2].conv.stride[0], blk.conv[-2].conv.dilation[0]) for blk in getattr(net, f"layer{i}")]
                for i in range(1, 8)]

    mm = build_model(arch="mobilenetv2", variant="mmseg")
    # mmseg: strides (1, 2, 2, 1, 1, 1, 1), dilations (1, 1, 1, 2, 2, 4, 4) on the first block only.
    assert depthwise(mm) == [[(1, 1)], [(2, 1), (1, 1)], [(2, 1), (1, 1), (1, 1)], [(1, 2), (1, 1), (1, 1), (1, 1)],
                             [(1, 2), (1, 1), (1, 1)], [(1, 4), (1, 1), (1, 1)], [(1, 4)]]
    skd = build_model(arch="mobilenetv2", variant="skd")
    # CIRKD's _nostride_dilate: features 7-13 at 2 (7, whose stride was removed, at 1), 14-17 at 4 (14 at 2).
    assert depthwise(skd) == [[(1, 1)], [(2, 1), (1, 1)], [(2, 1), (1, 1), (1, 1)], [(1, 1), (1, 2), (1, 2), (1, 2)],
                              [(1, 2), (1, 2), (1, 2)], [(1, 2), (1, 4), (1, 4)], [(1, 4)]]
    assert mm.backbone.channels == (24, 32, 96, 320)
    assert build_model(arch="mobilenetv2", width_mult=0.5).backbone.channels == (16, 16, 48, 160)


@pytest.mark.parametrize("config,message", [
    (dict(arch="vgg16"), "--arch vgg16: unknown; use one of resnet18, resnet34, resnet50, resnet101, mobilenetv2"),
    (dict(head="fcn"), "--head fcn: unknown; use one of psp, aspp"),
    (dict(variant="cirkd"), "--variant cirkd: unknown; use one of skd, mmseg"),
    (dict(arch="mobilenetv2", stem="deep"), "--stem deep: MobileNetV2 has one stem"),
    (dict(stem="v1d"), "--stem v1d: unknown stem"),
    (dict(width_mult=0.0), "--width-mult 0.0: must be a positive number"),
    (dict(arch="mobilenetv2", width_mult=-1.0), "--width-mult -1.0: must be a positive number"),
    (dict(num_classes=0), "--num-classes 0: must be at least 1"),
    (dict(head_channels=0), "model config head_channels 0: must be a positive integer"),
    (dict(norm="gn"), "--norm gn: unknown norm layer"),
])
def test_bad_values_name_their_flag(config, message):
    with pytest.raises(SkdError) as err:
        build_model(**config)
    assert str(err.value).startswith(message)


def test_dropout_sits_between_each_bottleneck_and_its_classifier():
    """With p = 1 every classifier sees zeros in training: logits are its bias."""
    for config in (dict(head="aspp"), dict(variant="mmseg"), dict(arch="mobilenetv2", variant="mmseg", head="aspp")):
        net = build_model(**config, num_classes=3, width_mult=0.25).train()
        for m in net.modules():
            if isinstance(m, nn.Dropout2d):
                m.p = 1.0
        out = net(torch.randn(2, 3, 33, 33))
        assert torch.equal(out.logits, net.head.bias.view(1, 3, 1, 1).expand_as(out.logits))
        assert torch.equal(out.aux_logits, net.dsn[-1].bias.view(1, 3, 1, 1).expand_as(out.aux_logits))
        assert torch.equal(out.feat, torch.zeros_like(out.feat))


def test_skd_style_aspp_is_the_hand_written_atrous_pyramid():
    torch.manual_seed(0)
    module = ASPPModule(6, 4, BatchNormAct2d).eval()
    for m in module.modules():
        if isinstance(m, BatchNormAct2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 6, 13, 11)

    def bn_lrelu(norm, y):
        y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, 1e-5)
        return F.leaky_relu(y, 0.01)

    s = module.stages
    pooled = bn_lrelu(s[0][2], F.conv2d(x.mean(dim=(2, 3), keepdim=True), s[0][1].weight))
    parts = [pooled.expand(-1, -1, 13, 11)]  # bilinear from 1x1 is a broadcast
    parts.append(bn_lrelu(s[1][1], F.conv2d(x, s[1][0].weight)))
    for stage, rate in zip(s[2:], (12, 24, 36)):
        parts.append(bn_lrelu(stage[1], F.conv2d(x, stage[0].weight, padding=rate, dilation=rate)))
    b = module.bottleneck
    want = bn_lrelu(b[1], F.conv2d(torch.cat(parts, 1), b[0].weight, padding=1))
    torch.testing.assert_close(module(x), want)


def test_skd_aspp_network_parameter_count_is_the_hand_count():
    """SKD ResNet-18 (13,068,262 with the PSP head) with the ASPP head in its place."""
    c4, c3, ch, k = 512, 256, 128, 19
    bn = 2 * ch
    psp = 4 * (c4 * ch + bn) + (c4 + 4 * ch) * 9 * ch + bn + ch * k + k
    aspp = (c4 * ch + bn) + (c4 * ch + bn) + 3 * (c4 * 9 * ch + bn) + 5 * ch * 9 * ch + bn + ch * k + k
    assert count_parameters(build_model(arch="resnet18", head="aspp")) == 13_068_262 - psp + aspp
    # mmseg's aux head drops the 3x3 bias and halves its width on ResNet-18 (64 channels).
    mm_psp = count_parameters(build_model(arch="resnet18", variant="mmseg"))
    skd_stem = 64 * 27 + 64 * 64 * 9 + 128 * 64 * 9 + 2 * (64 + 64 + 128)
    v1c_stem = 32 * 27 + 32 * 32 * 9 + 64 * 32 * 9 + 2 * (32 + 32 + 64)
    layer1_in = (64 * 128 * 9 - 64 * 64 * 9) + (64 * 128 + 128)  # the deep stem's 128 channels: wider conv + downsample
    dsn, fcn = (c3 * 9 * ch + ch + bn + ch * k + k), (c3 * 9 * 64 + 128 + 64 * k + k)
    assert mm_psp == 13_068_262 - skd_stem + v1c_stem - layer1_in - dsn + fcn


# ---- norm safety: InPlace-ABN keeps its output and overwrites its input (moved here from
# test_models.py, which checked the SKD PSPNets alone) ---------------------------------------------
# The SKD PSPNets (R18, R50) and each new backbone, head and variant.
NETS = [dict(arch="resnet18"), dict(arch="resnet50"), dict(arch="resnet18", variant="mmseg", head="aspp"), dict(arch="resnet50", variant="mmseg"),
        dict(arch="mobilenetv2", variant="mmseg"), dict(arch="mobilenetv2", head="aspp"), dict(arch="resnet18", head="aspp")]


@pytest.mark.parametrize("config", NETS)
def test_norm_outputs_are_never_modified_in_place(monkeypatch, config):
    records: list[tuple[torch.Tensor, int]] = []

    class RecordingNorm(BatchNormAct2d):
        def forward(self, x):
            y = super().forward(x)
            records.append((y, y._version))
            return y

    monkeypatch.setattr(segnet, "make_norm", lambda name: RecordingNorm)
    net = build_model(**config, width_mult=0.125, num_classes=3)
    out = net(torch.randn(2, 3, 33, 33))
    (out.logits.sum() + out.aux_logits.sum()).backward()
    assert records and all(y._version == version for y, version in records)


@pytest.mark.parametrize("config", NETS)
def test_norm_inputs_are_used_by_nothing_else(monkeypatch, config):
    class PoisoningNorm(BatchNormAct2d):
        def forward(self, x):
            y = super().forward(x)
            x.fill_(float("nan"))
            return y

    monkeypatch.setattr(segnet, "make_norm", lambda name: PoisoningNorm)
    net = build_model(**config, width_mult=0.125, num_classes=3).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 33, 33))
    assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("config", [dict(arch="resnet18", variant="mmseg", head="aspp"), dict(arch="mobilenetv2", variant="mmseg")])
def test_inplace_abn_network_equals_its_batchnorm_twin(config):
    torch.manual_seed(0)
    bn = build_model(**config, width_mult=0.25, num_classes=3, head_channels=16, aux_channels=8).double().train()
    abn = build_model(**config, width_mult=0.25, num_classes=3, head_channels=16, aux_channels=8,
                      norm="inplace_abn").double().train()
    abn.load_state_dict(bn.state_dict(), strict=False)
    for model in (bn, abn):
        for m in model.modules():
            if isinstance(m, nn.Dropout2d):
                m.p = 0.0
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    out_bn, out_abn = bn(x), abn(x.clone())
    for name in out_bn._fields:
        torch.testing.assert_close(getattr(out_abn, name), getattr(out_bn, name), rtol=1e-10, atol=1e-10)
    for out in (out_bn, out_abn):
        (out.logits.square().mean() + out.aux_logits.mean()).backward()
    want = dict(bn.named_parameters())
    for name, p in abn.named_parameters():
        torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-8, atol=1e-11, msg=name)


def test_skd_networks_keep_the_construction_order_of_the_original_pspnet():
    """Same seed, same weights as before the refactor: backbone, pspmodule, head, dsn in that order."""
    torch.manual_seed(0)
    a = pspnet(18, width_mult=0.25)
    torch.manual_seed(0)
    b = build_model(arch="resnet18", width_mult=0.25)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    randomize_norms(a, torch.Generator().manual_seed(0))


def test_parts_are_the_networks_own_modules_through_copies_and_casts():
    import copy

    net = build_model(arch="resnet18", variant="mmseg", width_mult=0.25).eval()
    twin = copy.deepcopy(net).double()
    assert twin.backbone.layer1 is twin.layer1 and twin.decode_head.pspmodule is twin.pspmodule
    assert twin.auxiliary_head.dsn is twin.dsn and twin.layer1 is not net.layer1
    assert twin.backbone.stem[0].weight.dtype == torch.float64
    twin.train()
    assert twin.backbone.training and twin.decode_head.training and twin.layer4.training
    x = torch.randn(1, 3, 33, 33, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x).logits, net.double()(x).logits, rtol=0, atol=0)


@pytest.mark.slow  # inductor compiles C++ for every graph (InPlace-ABN breaks it into ~40)
@pytest.mark.parametrize("config", [dict(head="aspp"), dict(head="aspp", variant="mmseg")])
def test_compiled_inplace_abn_network_matches_eager(config):
    """torch.compile through the graph breaks of InPlace-ABN, pooled priors included (a lone 1x1
    upsampling graph once hit an inductor CPU codegen assertion in its backward)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build_model(arch="resnet18", num_classes=5, width_mult=0.125, norm="inplace_abn", **config).train()
    for m in eager.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    import copy

    compiled = copy.deepcopy(eager)
    forward = torch.compile(compiled.forward)
    x = torch.randn(2, 3, 33, 33) * 50
    with inductor_config.patch(fallback_random=True):
        got = forward(x.clone())
        (got.logits.sum() + got.aux_logits.sum()).backward()
    want = eager(x.clone())
    (want.logits.sum() + want.aux_logits.sum()).backward()
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    grads = dict(eager.named_parameters())
    overall = max(p.grad.abs().max().item() for p in eager.parameters())
    for name, p in compiled.named_parameters():
        # Float32 reordering noise, relative to each gradient's scale; the DSN's 3x3 bias sits
        # right before a norm, so its gradient is rounding noise: compared to the overall scale.
        scale = overall if name == "dsn.0.bias" else grads[name].grad.abs().max().item()
        assert (p.grad - grads[name].grad).abs().max().item() <= 2e-3 * scale + 1e-7, name
