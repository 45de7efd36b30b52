"""skd.export: the deployable network, the fixed-size adaptive pooling, and each export format
round-tripped against the eager network."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skd.errors import SkdError
from skd.export import (
    DeployNet,
    FixedAdaptiveAvgPool2d,
    adaptive_bins,
    check_export,
    deploy_parameters,
    export,
    fix_adaptive_pools,
    main,
)
from skd.models import build_pspnet
from skd.models.convention import SKD_INPUT

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
NEEDS_ONNX = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript and onnxruntime not installed "
                                                      "(pip install 'skd[onnx]')")


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_pspnet("resnet18", num_classes=5, width_mult=0.125).eval()
    # non-trivial BN statistics, so a mistake in eval-mode handling shows
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_adaptive_bins_are_pytorchs_overlapping_bins():
    # 13 -> 6: start floor(13i/6), end ceil(13(i+1)/6), worked out by hand
    assert adaptive_bins(13, 6) == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]
    assert adaptive_bins(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert adaptive_bins(65, 2) == [(0, 33), (32, 65)]


POOL_CASES = [(size, out) for size in [(12, 12), (13, 17), (65, 65), (7, 5), (6, 6)]
              for out in [1, 2, 3, 6, (2, 3)] if out == (2, 3) or out <= min(size)]


@pytest.mark.parametrize("size,out", POOL_CASES)
def test_fixed_pool_matches_adaptive_avg_pool(size, out):
    pool = FixedAdaptiveAvgPool2d(out, size)
    ref = nn.AdaptiveAvgPool2d(out)
    g = torch.Generator().manual_seed(1)
    # integer values: every sum is exact whatever the order, so the results must be bit-identical
    x = torch.randint(-50, 50, (2, 3, *size), generator=g).float()
    assert torch.equal(pool(x), ref(x))
    # random float64: equal up to the order of the additions
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=g)
    torch.testing.assert_close(pool(x), ref(x), rtol=0, atol=1e-13)
    x = torch.randn(2, 3, *size, generator=g)
    torch.testing.assert_close(pool(x), ref(x), rtol=0, atol=1e-6)


def test_naive_fixed_pools_would_differ_when_not_divisible():
    # why the bins matter, on the 65x65 map of a 512 crop: avg_pool2d with kernel ceil(65/6) = 11
    # and stride floor(65/6) = 10 ends its last bin at 61, not 65; bins split at floor(i * 65/6)
    # do not overlap. Both differ from adaptive pooling, and the test above would catch either.
    x = torch.arange(65 * 65, dtype=torch.float32).view(1, 1, 65, 65) % 17
    want = F.adaptive_avg_pool2d(x, 6)
    assert not torch.allclose(F.avg_pool2d(x, kernel_size=11, stride=10), want)
    edges = [i * 65 // 6 for i in range(7)]
    split = torch.stack([torch.stack([x[0, 0, a:b, c:d].mean() for c, d in zip(edges, edges[1:])])
                         for a, b in zip(edges, edges[1:])])
    assert not torch.allclose(split, want[0, 0])
    assert torch.equal(FixedAdaptiveAvgPool2d(6, (65, 65))(x), want)


def test_fixed_pool_refuses_another_input_size():
    with pytest.raises(ValueError, match="built for"):
        FixedAdaptiveAvgPool2d(2, (8, 8))(torch.zeros(1, 1, 9, 8))


def test_fix_adaptive_pools_replaces_all_four_stages_and_keeps_values():
    net = tiny_net()
    deploy = DeployNet(net, upsample=False).eval()
    x = torch.rand(1, 3, 97, 129) * 255
    with torch.no_grad():
        want = deploy(x)
    assert fix_adaptive_pools(deploy, x) == 4
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in deploy.modules())
    sizes = [m.input_size for m in deploy.modules() if isinstance(m, FixedAdaptiveAvgPool2d)]
    assert sizes == [(13, 17)] * 4  # 97x129 -> 13x17 at 1/8 (docs/reproduction.md, section 1)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), want, rtol=0, atol=1e-5)


def test_deploy_net_is_normalised_logits_without_dsn():
    net = tiny_net()
    raw = torch.rand(2, 3, 64, 80) * 255
    with torch.no_grad():
        ref = net(raw - torch.tensor(SKD_INPUT.mean).view(1, 3, 1, 1)).logits  # the original's mean subtraction
        small = DeployNet(net, upsample=False)(raw)
        full = DeployNet(net)(raw)
    torch.testing.assert_close(small, ref)
    assert full.shape == (2, 5, 64, 80)
    torch.testing.assert_close(full, F.interpolate(ref, size=(64, 80), mode="bilinear", align_corners=True))
    dsn = sum(p.numel() for n, p in net.named_parameters() if n.startswith("dsn."))
    assert dsn > 0 and deploy_parameters(net) == sum(p.numel() for p in net.parameters()) - dsn


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("exported-program", ".pt2")])
def test_torch_formats_round_trip(tmp_path, fmt, suffix):
    deploy = DeployNet(tiny_net())
    out = tmp_path / f"net{suffix}"
    result = export(deploy, fmt, out, (64, 96))
    assert out.is_file() and result["output_shape"] == [1, 5, 64, 96]
    assert result["max_abs_diff"] <= result["bound"]
    # independent reload on another input
    x = torch.rand(1, 3, 64, 96) * 255
    if fmt == "torchscript":
        loaded = torch.jit.load(str(out))
    else:
        loaded = torch.export.load(str(out)).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), deploy(x), rtol=0, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


def test_check_export_refuses_a_wrong_export():
    deploy = DeployNet(tiny_net())
    x = torch.rand(1, 3, 32, 32) * 255
    with pytest.raises(SkdError, match="differs from the eager one"):
        check_export(deploy, lambda t: deploy(t) + 0.01, x, atol=1e-4, rtol=0)
    with pytest.raises(SkdError, match="returns"):
        check_export(deploy, lambda t: deploy(t)[:, :2], x, atol=1e-4, rtol=0)


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    import skd.export as ex
    monkeypatch.setattr(ex, "check_export", lambda *a, **k: (_ for _ in ()).throw(SkdError("differs")))
    with pytest.raises(SkdError):
        export(DeployNet(tiny_net()), "torchscript", tmp_path / "net.pt", (32, 32))
    assert list(tmp_path.iterdir()) == []


def test_legacy_onnx_exporter_refuses_adaptive_pooling_today(tmp_path):
    """The failure that FixedAdaptiveAvgPool2d works around (torch's TorchScript-based exporter)."""
    pytest.importorskip("onnx", reason="onnx not installed (pip install 'skd[onnx]')")
    model = nn.AdaptiveAvgPool2d(6).eval()
    with pytest.raises(Exception, match="output size that are not factor of input size"):
        torch.onnx.export(model, (torch.rand(1, 2, 13, 17),), str(tmp_path / "p.onnx"), dynamo=False)


@NEEDS_ONNX
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_round_trip(tmp_path, exporter):
    import onnx
    deploy = DeployNet(tiny_net())
    out = tmp_path / "net.onnx"
    result = export(deploy, "onnx", out, (97, 129), onnx_exporter=exporter)
    assert result["max_abs_diff"] <= result["bound"] and result["output_shape"] == [1, 5, 97, 129]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "GatherND" not in ops and "AveragePool" not in ops  # the pyramid pooling as slices and sums
    assert {"Slice", "ReduceSum", "Resize", "Conv"} <= ops


def test_onnx_without_packages_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    if importlib.util.find_spec("onnx") is None:
        match = "needs the onnx package"
    else:
        match = "needs the onnxscript package.*--onnx-exporter torchscript"
    with pytest.raises(SkdError, match=match):
        export(DeployNet(tiny_net()), "onnx", tmp_path / "net.onnx", (32, 32))


def save_skd_checkpoint(path, net) -> None:
    """A weights file as skd-train's best.pth / final.pth (what load_weights reads)."""
    torch.save({"skd_format": 1, "step": 1, "model": net.state_dict(), "model_config": net.config(),
                "norm_weight": "plain"}, path)


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    net = tiny_net()
    ckpt = tmp_path / "student.pth"
    save_skd_checkpoint(ckpt, net)
    out = tmp_path / "student.pt"
    assert main(["--ckpt", str(ckpt), "--num-classes", "5", "--width-mult", "0.125", "--format",
                 "torchscript", "--out", str(out), "--input-size", "48,64"]) == 0
    printed = capsys.readouterr().out
    assert "logits (1, 5, 48, 64)" in printed and "max |exported - eager|" in printed
    loaded = torch.jit.load(str(out))
    x = torch.rand(1, 3, 48, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), DeployNet(net)(x), rtol=0, atol=1e-4)
    # the file describes its network: no flags needed; a flag that contradicts it is one line, status 2
    assert main(["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "x.pt"),
                 "--input-size", "48,64"]) == 0
    capsys.readouterr()
    assert main(["--ckpt", str(ckpt), "--width-mult", "0.25", "--format", "torchscript", "--out",
                 str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err
    assert "--width-mult 0.125" in err and "--width-mult 0.25" in err and len(err.strip().splitlines()) == 1
