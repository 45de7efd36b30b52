"""Tests of skd.models and skd.nn.norm: the original's layout and counts, shapes, checkpoint loading."""
from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from skd.errors import SkdError
from skd.models import (
    ARCHS,
    Discriminator,
    PSPNetOutput,
    build_model,
    build_pspnet,
    convert_official_state_dict,
    count_parameters,
    load_backbone,
    load_official,
    load_weights,
    pspnet,
)
from skd.models.discriminator import SelfAttention
from skd.models.pspnet import PSPModule
from skd.nn.norm import BatchNormAct2d, SyncBatchNormAct2d, make_norm

NORM_STATS = ("weight", "bias", "running_mean", "running_var")


# ---------------------------------------------------------------------------------------------
# The original checkpoint layout, written from docs/reproduction.md (the original's layout) without looking at the model code.
# ---------------------------------------------------------------------------------------------
def spec_layout(depth: int, num_classes: int = 19) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the original PSPNet state_dict (norms without num_batches_tracked)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, c: int) -> None:
        for stat in NORM_STATS:
            shapes[f"{prefix}.{stat}"] = (c,)

    shapes["conv1.weight"] = (64, 3, 3, 3)
    norm("bn1", 64)
    shapes["conv2.weight"] = (64, 64, 3, 3)
    norm("bn2", 64)
    shapes["conv3.weight"] = (128, 64, 3, 3)
    norm("bn3", 128)
    blocks, expansion = ((2, 2, 2, 2), 1) if depth == 18 else ((3, 4, 23, 3), 4)
    inplanes = 128
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            if expansion == 1:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                norm(f"{p}.bn1", planes)
                norm(f"{p}.bn2", planes)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                norm(f"{p}.bn1", planes)
                norm(f"{p}.bn2", planes)
                norm(f"{p}.bn3", planes * 4)
            if b == 0 and (li == 2 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                norm(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    features, layer3 = 512 * expansion, 256 * expansion
    out = features // 4
    for i in range(4):
        shapes[f"pspmodule.stages.{i}.1.weight"] = (out, features, 1, 1)
        norm(f"pspmodule.stages.{i}.2", out)
    shapes["pspmodule.bottleneck.0.weight"] = (out, features + 4 * out, 3, 3)
    norm("pspmodule.bottleneck.1", out)
    shapes["head.weight"] = (num_classes, out, 1, 1)
    shapes["head.bias"] = (num_classes,)
    shapes["dsn.0.weight"] = (out, layer3, 3, 3)
    shapes["dsn.0.bias"] = (out,)
    norm("dsn.1", out)
    shapes["dsn.3.weight"] = (num_classes, out, 1, 1)
    shapes["dsn.3.bias"] = (num_classes,)
    return shapes


# Keys of the original layout named explicitly (docs/reproduction.md, section 2).
SPEC_NAMED_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
    "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
    "pspmodule.stages.0.1.weight", "pspmodule.stages.0.2.weight", "pspmodule.bottleneck.0.weight",
    "pspmodule.bottleneck.1.bias", "head.weight", "dsn.0.weight", "dsn.0.bias",
    "dsn.1.running_mean", "dsn.3.weight",
]


def shapes_without_counters(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }


def randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every norm layer non-trivial positive weights and statistics, so eval mode is a test."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNormAct2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))


@pytest.fixture(scope="module")
def r101() -> nn.Module:
    return pspnet(depth=101, num_classes=19)


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    return pspnet(depth=18, num_classes=19).eval()


def tiny_reference(seed: int = 0, num_classes: int = 19) -> nn.Module:
    """ResNet-18 PSPNet at width 1/4 (same key names as the full one) with random norm stats."""
    torch.manual_seed(seed)
    model = pspnet(depth=18, num_classes=num_classes, width_mult=0.25).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    return model


def official_teacher_layout(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`model`'s weights as the released teacher stores them.

    Old head layout (head.0 = pspmodule, head.1 = head), a `module.` prefix, an `fc.` layer,
    no num_batches_tracked, and norm weights w' with random signs such that |w'| + 1e-5 = w.
    """
    norm_names = {name for name, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        module_name, _, leaf = key.rpartition(".")
        if module_name in norm_names and leaf == "weight":
            signs = torch.randint(0, 2, value.shape, generator=generator) * 2 - 1
            value = (value - 1e-5) * signs
        if key.startswith("pspmodule."):
            key = "head.0." + key[len("pspmodule."):]
        elif key.startswith("head."):
            key = "head.1." + key[len("head."):]
        out["module." + key] = value.clone()
    out["module.fc.weight"] = torch.randn(1000, 128, generator=generator)
    out["module.fc.bias"] = torch.randn(1000, generator=generator)
    return out


# ---------------------------------------------------------------------------------------------
# Parameter counts and layout
# ---------------------------------------------------------------------------------------------
def test_spec_layout_itself_has_the_original_r18_parameter_count():
    trainable = sum(
        math.prod(s) for k, s in spec_layout(18).items() if not k.endswith(("running_mean", "running_var"))
    )
    assert trainable == 13_068_262


def test_pspnet_r18_has_the_original_parameter_count(r18):
    assert count_parameters(r18) == 13_068_262


def test_pspnet_r101_has_the_original_parameter_count(r101):
    assert count_parameters(r101) == 70_437_350


def test_discriminator_has_the_original_trainable_parameter_count():
    assert count_parameters(Discriminator(in_channels=19)) == 3_191_721


def test_count_parameters_can_include_frozen_ones():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 6
    assert count_parameters(model, trainable_only=False) == 8


def test_r18_state_dict_has_exactly_the_official_keys_and_shapes(r18):
    assert shapes_without_counters(r18) == spec_layout(18)


def test_r101_state_dict_has_exactly_the_official_keys_and_shapes(r101):
    assert shapes_without_counters(r101) == spec_layout(101)


@pytest.mark.parametrize("depth", [18, 101])
def test_keys_named_in_spec_exist(depth, r18, r101):
    keys = (r18 if depth == 18 else r101).state_dict().keys()
    assert [k for k in SPEC_NAMED_KEYS if k not in keys] == []


def test_r101_spec_spot_checks(r101):
    sd = r101.state_dict()
    assert tuple(sd["pspmodule.stages.0.1.weight"].shape) == (512, 2048, 1, 1)
    assert tuple(sd["pspmodule.bottleneck.0.weight"].shape) == (512, 4096, 3, 3)
    assert tuple(sd["dsn.0.weight"].shape) == (512, 1024, 3, 3)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 128, 1, 1)
    assert "layer3.22.conv3.weight" in sd and "layer3.23.conv1.weight" not in sd


def test_dilated_layers_use_the_layer_dilation_in_every_block(r101):
    for name, dilation in (("layer3", 2), ("layer4", 4)):
        for block in getattr(r101, name):
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == (1, 1)


# ---------------------------------------------------------------------------------------------
# Forward shapes
# ---------------------------------------------------------------------------------------------
def test_512_crop_gives_65x65_maps_and_129x129_layer1(r18):
    with torch.no_grad():
        out = r18(torch.randn(1, 3, 512, 512))
    assert isinstance(out, PSPNetOutput)
    expected = {
        "logits": (1, 19, 65, 65),
        "aux_logits": (1, 19, 65, 65),
        "feat": (1, 128, 65, 65),
        "layer4": (1, 512, 65, 65),
        "layer3": (1, 256, 65, 65),
        "layer2": (1, 128, 65, 65),
        "layer1": (1, 64, 129, 129),
    }
    assert {k: tuple(v.shape) for k, v in out._asdict().items()} == expected


def test_97x129_input_gives_13x17_logits(r18):
    with torch.no_grad():
        out = r18(torch.randn(2, 3, 97, 129))
    assert out.logits.shape == (2, 19, 13, 17)
    assert out.aux_logits.shape == (2, 19, 13, 17)


def test_width_half_builds_and_runs_with_scaled_channels():
    model = pspnet(depth=18, num_classes=19, width_mult=0.5)
    out = model(torch.randn(2, 3, 33, 33))
    assert out.logits.shape == (2, 19, 5, 5)
    assert out.feat.shape[1] == 64 and out.layer4.shape[1] == 256 and out.layer1.shape == (2, 32, 9, 9)
    out.logits.sum().backward()
    assert model.conv1.weight.grad is not None


def test_standard_stem_has_torchvision_shapes_and_runs():
    model = pspnet(depth=18, stem="standard", width_mult=0.25)
    sd = model.state_dict()
    assert tuple(sd["conv1.weight"].shape) == (16, 3, 7, 7)
    assert "conv2.weight" not in sd and "layer1.0.downsample.0.weight" not in sd
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (32, 16, 1, 1)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 19, 8, 8)


def test_psp_module_upsamples_priors_with_align_corners():
    """The PSP module equals concatenating hand-upsampled (align_corners=True) priors."""
    torch.manual_seed(0)
    module = PSPModule(8, 2, BatchNormAct2d).eval()
    x = torch.randn(1, 8, 7, 7)
    priors = []
    for stage in module.stages:
        pooled = stage(x)
        # Independent bilinear, align_corners=True: sample at i * (in - 1) / (out - 1).
        size_in = pooled.shape[-1]
        pos = torch.arange(7, dtype=torch.float32) * (size_in - 1) / 6 if size_in > 1 else torch.zeros(7)
        lo = pos.floor().long().clamp(max=size_in - 1)
        hi = (lo + 1).clamp(max=size_in - 1)
        frac = pos - lo
        rows = pooled[:, :, lo, :] * (1 - frac)[:, None] + pooled[:, :, hi, :] * frac[:, None]
        priors.append(rows[..., lo] * (1 - frac) + rows[..., hi] * frac)
    expected = module.bottleneck(torch.cat(priors + [x], dim=1))
    torch.testing.assert_close(module(x), expected)


def test_config_rebuilds_the_same_model():
    model = build_pspnet("resnet34", num_classes=7, width_mult=0.25)
    assert model.config() == {
        "arch": "resnet34", "head": "psp", "variant": "skd", "num_classes": 7, "width_mult": 0.25, "norm": "bn",
        "stem": "deep", "head_channels": 32, "aux_channels": 32,
    }
    rebuilt = build_model(**model.config())
    assert shapes_without_counters(rebuilt) == shapes_without_counters(model)
    assert ARCHS == ("resnet18", "resnet34", "resnet50", "resnet101")


def test_unknown_arch_names_the_flag():
    with pytest.raises(SkdError, match="--arch resnet152"):
        build_pspnet("resnet152")


def test_unknown_norm_names_the_flag():
    with pytest.raises(SkdError, match="--norm groupnorm"):
        make_norm("groupnorm")


# ---------------------------------------------------------------------------------------------
# Norm layers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "activation, reference",
    [
        ("leaky_relu", lambda y: torch.where(y >= 0, y, 0.2 * y)),
        ("elu", lambda y: torch.where(y >= 0, y, 0.2 * (torch.exp(y) - 1))),
        ("relu", lambda y: y.clamp_min(0)),
        ("identity", lambda y: y),
    ],
)
def test_batchnormact_is_batch_norm_then_activation(activation, reference):
    torch.manual_seed(0)
    layer = BatchNormAct2d(3, activation=activation, slope=0.2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 3, 5, 6)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = (x - mean) / torch.sqrt(var + 1e-5) * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), reference(normed))
    n = x.numel() // 3
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var.flatten() * n / (n - 1))


def test_batchnormact_state_dict_keys_are_batchnorms():
    assert list(BatchNormAct2d(4).state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"
    ]


def test_syncbn_without_process_group_equals_batchnormact():
    torch.manual_seed(0)
    sync, plain = SyncBatchNormAct2d(3), BatchNormAct2d(3)
    with torch.no_grad():
        for layer in (sync, plain):
            layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
    x = torch.randn(4, 3, 5, 5)
    xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(4, 3, 5, 5)
    ys, yp = sync(xs), plain(xp)
    (ys * g).sum().backward()
    (yp * g).sum().backward()
    torch.testing.assert_close(ys, yp)
    torch.testing.assert_close(xs.grad, xp.grad)
    torch.testing.assert_close(sync.weight.grad, plain.weight.grad)
    assert sync.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(sync.state_dict()[key], value)


def _sync_bn_worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    """One rank of the gloo test: normalise its half of a fixed batch, save what it computed."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(0)
        x_full = 3 + 2 * torch.randn(4, 3, 5, 5, generator=gen)
        g_full = torch.randn(4, 3, 5, 5, generator=gen)
        layer = SyncBatchNormAct2d(3)
        x = x_full[2 * rank : 2 * rank + 2].clone().requires_grad_()
        y = layer(x)
        (y * g_full[2 * rank : 2 * rank + 2]).sum().backward()
        torch.save(
            {
                "y": y.detach(),
                "x_grad": x.grad,
                "w_grad": layer.weight.grad,
                "running_mean": layer.running_mean,
                "running_var": layer.running_var,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_syncbn_over_two_gloo_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_sync_bn_worker, args=(r, 2, str(tmp_path / "rdv"), str(tmp_path))) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    gen = torch.Generator().manual_seed(0)
    x_full = (3 + 2 * torch.randn(4, 3, 5, 5, generator=gen)).requires_grad_()
    g_full = torch.randn(4, 3, 5, 5, generator=gen)
    ref = BatchNormAct2d(3)
    y_ref = ref(x_full)
    (y_ref * g_full).sum().backward()

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x_full.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["w_grad"] + ranks[1]["w_grad"], ref.weight.grad, atol=1e-5, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], ref.running_mean)
        torch.testing.assert_close(r["running_var"], ref.running_var)


# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 65])
def test_discriminator_gives_one_score_per_image(size):
    assert Discriminator(19)(torch.randn(2, 19, size, size)).shape == (2, 1, 1, 1)


def test_discriminator_convs_are_spectral_normalised_except_the_last():
    disc = Discriminator(19)
    for conv in (disc.conv1[0], disc.conv2[0], disc.conv3[0], disc.conv4[0]):
        assert hasattr(conv, "parametrizations") and "weight" in conv.parametrizations
    assert not hasattr(disc.last, "parametrizations") and disc.last.padding == (0, 0)


def test_self_attention_is_identity_at_init_and_follows_sagan():
    torch.manual_seed(0)
    attn = SelfAttention(16)
    x = torch.randn(2, 16, 3, 4)
    torch.testing.assert_close(attn(x), x)

    with torch.no_grad():
        attn.gamma.fill_(0.7)
    q = torch.einsum("oc,bchw->bohw", attn.query.weight[:, :, 0, 0], x) + attn.query.bias.view(1, -1, 1, 1)
    k = torch.einsum("oc,bchw->bohw", attn.key.weight[:, :, 0, 0], x) + attn.key.bias.view(1, -1, 1, 1)
    v = torch.einsum("oc,bchw->bohw", attn.value.weight[:, :, 0, 0], x) + attn.value.bias.view(1, -1, 1, 1)
    energy = torch.einsum("bci,bcj->bij", q.flatten(2), k.flatten(2))
    weights = energy.softmax(dim=-1)
    out = torch.einsum("bcj,bij->bci", v.flatten(2), weights).view_as(x)
    torch.testing.assert_close(attn(x), 0.7 * out + x)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def test_official_teacher_layout_loads_and_computes_the_reference_output(tmp_path):
    reference = tiny_reference(seed=1)
    official = official_teacher_layout(reference, torch.Generator().manual_seed(2))
    assert (official["module.bn1.weight"] < 0).any()  # so matching outputs prove the |w| + eps
    path = tmp_path / "teacher.pth"
    torch.save(official, path)

    torch.manual_seed(3)
    model = pspnet(depth=18, width_mult=0.25)
    load_official(model, path)
    model.eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        got, want = model(x), reference(x)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.aux_logits, want.aux_logits)
    torch.testing.assert_close(model.pspmodule.stages[2][2].weight, reference.pspmodule.stages[2][2].weight)


def test_convert_leaves_new_layout_heads_alone():
    reference = tiny_reference(seed=4)
    sd = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    converted = convert_official_state_dict(sd, reference)
    assert converted.keys() == reference.state_dict().keys()
    torch.testing.assert_close(converted["head.weight"], sd["head.weight"])
    torch.testing.assert_close(converted["dsn.1.weight"], sd["dsn.1.weight"].abs() + 1e-5)
    assert "pspmodule.stages.0.1.weight" in converted


def test_load_weights_recognises_an_official_file(tmp_path):
    path = tmp_path / "official.pth"
    torch.save(official_teacher_layout(tiny_reference(), torch.Generator().manual_seed(0)), path)
    assert load_weights(pspnet(18, width_mult=0.25), path)["format"] == "official"


def test_load_weights_reads_our_checkpoint_without_converting(tmp_path):
    source = tiny_reference(seed=5)
    with torch.no_grad():
        source.bn1.weight.neg_()  # a plain-convention weight may be negative; it must stay so
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"skd_format": 1, "model": source.state_dict(), "model_config": source.config(), "norm_weight": "plain",
         "step": 7},
        path,
    )
    model = pspnet(18, width_mult=0.25)
    info = load_weights(model, path)
    assert info["format"] == "skd" and info["step"] == 7 and info["model_config"] == source.config()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_weights_converts_our_checkpoint_marked_abs(tmp_path):
    source = tiny_reference(seed=8)
    sd = source.state_dict()
    stored = dict(sd, **{"dsn.1.weight": -(sd["dsn.1.weight"] - 1e-5)})
    path = tmp_path / "abs.pth"
    torch.save({"skd_format": 1, "model": stored, "norm_weight": "abs"}, path)
    model = pspnet(18, width_mult=0.25)
    load_weights(model, path)
    torch.testing.assert_close(model.dsn[1].weight, sd["dsn.1.weight"])
    torch.testing.assert_close(model.head.weight, sd["head.weight"])


def test_load_weights_refuses_an_unknown_norm_convention(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"skd_format": 1, "model": tiny_reference().state_dict(), "norm_weight": "squared"}, path)
    with pytest.raises(SkdError, match="odd.pth: norm_weight 'squared' is unknown"):
        load_weights(pspnet(18, width_mult=0.25), path)


def test_load_weights_ignores_the_norm_type_of_the_config(tmp_path):
    source = tiny_reference(seed=9)
    config = dict(source.config(), norm="syncbn")
    path = tmp_path / "syncbn.pth"
    torch.save({"skd_format": 1, "model": source.state_dict(), "model_config": config}, path)
    model = pspnet(18, width_mult=0.25)
    load_weights(model, path)
    assert torch.equal(model.layer3[1].bn2.running_var, source.layer3[1].bn2.running_var)


def test_load_weights_refuses_a_different_model_config_naming_both(tmp_path):
    source = tiny_reference()
    path = tmp_path / "ckpt.pth"
    torch.save({"skd_format": 1, "model": source.state_dict(), "model_config": source.config()}, path)
    with pytest.raises(SkdError) as err:
        load_weights(pspnet(18, num_classes=21, width_mult=0.25), path)
    message = str(err.value)
    assert message == (
        f"{path}: the file holds --num-classes 19, this run has --num-classes 21; pass the file's values "
        "or leave those flags out (the file describes its model)"
    )


def _official_file(tmp_path: Path, name: str = "teacher.pth") -> Path:
    path = tmp_path / name
    torch.save(official_teacher_layout(tiny_reference(), torch.Generator().manual_seed(0)), path)
    return path


def test_loading_into_a_wider_model_names_the_file_and_shapes(tmp_path):
    path = _official_file(tmp_path)
    with pytest.raises(SkdError) as err:
        load_official(pspnet(18, width_mult=0.5), path)
    message = str(err.value)
    assert message.startswith(f"{path}: does not fit resnet18 (width 0.5, 19 classes): ")
    assert "conv1.weight is (16, 3, 3, 3) in the file, (32, 3, 3, 3) in the model" in message
    assert "\n" not in message


def test_loading_into_another_depth_names_missing_keys(tmp_path):
    path = _official_file(tmp_path)
    with pytest.raises(SkdError, match=r"layer1\.2\.conv1\.weight \(16, 16, 3, 3\) is missing from the file"):
        load_official(pspnet(34, width_mult=0.25), path)


def test_loading_with_another_class_count_names_the_head_keys(tmp_path):
    path = _official_file(tmp_path)
    with pytest.raises(SkdError, match=r"head\.weight is \(19, 32, 1, 1\) in the file, \(21, 32, 1, 1\) in the model"):
        load_official(pspnet(18, num_classes=21, width_mult=0.25), path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_file_is_a_one_line_error_naming_it(tmp_path, damage):
    path = _official_file(tmp_path, "broken.pth")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(SkdError) as err:
        load_weights(pspnet(18, width_mult=0.25), path)
    assert str(err.value).startswith(f"{path}: cannot be loaded: ") and "\n" not in str(err.value)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(SkdError, match="nope.pth: no such file"):
        load_official(pspnet(18, width_mult=0.25), tmp_path / "nope.pth")


class _CreatesMarker:
    """Unpickling this calls open(marker, "w"): code execution hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _CreatesMarker(marker)}, path)
    for loader in (load_official, load_weights, load_backbone):
        with pytest.raises(SkdError) as err:
            loader(pspnet(18, width_mult=0.25), path)
        assert str(err.value).startswith(f"{path}: cannot be loaded: unpickling it would call")
        assert not marker.exists()
    # Control: the payload is real, a full unpickle does create the marker.
    handle = torch.load(path, weights_only=False)["payload"]
    handle.close()
    assert marker.exists()


def test_non_state_dict_content_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(SkdError, match="list.pth: holds a list"):
        load_official(pspnet(18, width_mult=0.25), path)


BACKBONE_MODULES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4")


def _deep_stem_imagenet_file(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The original's resnet18-imagenet.pth layout at width 1/4, a negative BN weight in bn1."""
    source = tiny_reference(seed=6)
    with torch.no_grad():
        source.bn1.weight.neg_()
    imagenet = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in BACKBONE_MODULES}
    imagenet["fc.weight"] = torch.randn(1000, 128)
    imagenet["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet, path)
    return imagenet, path


@pytest.mark.parametrize("norm_weight", ["auto", "plain"])
def test_load_backbone_of_the_original_layout_takes_its_effective_norm_weights_by_default(tmp_path, norm_weight):
    """Issue #11 point 5: the original's InPlace-ABN scaled by |w| + 1e-5; "plain" keeps w."""
    imagenet, path = _deep_stem_imagenet_file(tmp_path)
    torch.manual_seed(7)
    model = pspnet(18, width_mult=0.25)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] not in BACKBONE_MODULES}
    init = load_backbone(model, path, norm_weight=norm_weight)

    counters = [k for k in imagenet if k.endswith("num_batches_tracked")]
    assert counters and sorted(init.skipped) == sorted(["fc.weight", "fc.bias"] + counters)
    assert init.layout == "original" and init.loaded == len(imagenet) - len(init.skipped)
    assert init.norm_weight == ("abs" if norm_weight == "auto" else "plain")
    norm_weights = {f"{name}.weight" for name in (k.rpartition(".")[0] for k in imagenet if k.endswith("running_var"))}
    sd = model.state_dict()
    for key, value in imagenet.items():
        if key in init.skipped:
            continue
        want = value.abs() + 1e-5 if norm_weight == "auto" and key in norm_weights else value
        assert torch.equal(sd[key], want), key
    assert (sd["bn1.weight"] > 0).all() == (norm_weight == "auto")
    for key, value in head_before.items():
        assert torch.equal(sd[key], value), key


def torchvision_resnet18_layout() -> dict[str, torch.Tensor]:
    """torchvision's resnet18 state_dict layout (standard 7x7 stem), random values."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    for stat in NORM_STATS:
        shapes[f"bn1.{stat}"] = (64,)
    inplanes = 64
    for li, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{li}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            for bn in ("bn1", "bn2"):
                for stat in NORM_STATS:
                    shapes[f"{p}.{bn}.{stat}"] = (planes,)
            if b == 0 and li > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                for stat in NORM_STATS:
                    shapes[f"{p}.downsample.1.{stat}"] = (planes,)
            inplanes = planes
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    gen = torch.Generator().manual_seed(0)
    return {k: torch.rand(s, generator=gen) for k, s in shapes.items()}


def test_load_backbone_takes_torchvision_layout_for_the_standard_stem(tmp_path):
    path = tmp_path / "resnet18-torchvision.pth"
    weights = torchvision_resnet18_layout()
    torch.save(weights, path)
    model = pspnet(18, stem="standard")
    init = load_backbone(model, path)
    assert init.layout == "torchvision" and init.norm_weight == "plain" and sorted(init.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], weights["layer4.1.conv2.weight"])

    with pytest.raises(SkdError, match=r"conv1\.weight is \(64, 3, 7, 7\) in the file, \(64, 3, 3, 3\) in the model"):
        load_backbone(pspnet(18), path)
