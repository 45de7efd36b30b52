"""The lean autograd path of the ResNet blocks under InPlace-ABN (`skd.nn.fused`): each fused
function against the plain PyTorch ops it replaces (values, gradients, running statistics), the
whole PSPNet against its BatchNorm twin, and how much less the lean path keeps for backward.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from skd import ext
from skd.models import pspnet
from skd.models.resnet import ResLayer
from skd.nn.fused import _ABNAdd, _ReLUConv2d, abn_add_, max_pool2d_keep_input, relu_conv2d
from skd.nn.inplace_abn import InPlaceABN, InPlaceABNSync


@pytest.fixture(params=["ext", "torch"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "ext" and not ext.available():
        pytest.skip("skd extension not built (see tests/test_ext_build.py)")
    return request.param


def _grads(fn, *inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(*leaf copies) and the gradients of <out, random cotangent> w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * cot).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("stride,padding,dilation,groups,bias", [
    (1, 1, 1, 1, False), (2, 1, 1, 1, True), (1, 2, 2, 1, False), (1, 0, 1, 2, True),
])
def test_relu_conv2d_equals_conv_of_relu(stride: int, padding: int, dilation: int, groups: int, bias: bool) -> None:
    torch.manual_seed(0)
    kernel = 3 if padding else 1
    conv = nn.Conv2d(4, 6, kernel, stride, padding, dilation, groups, bias=bias).double()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    x[0, 0, 0, :3] = 0.0  # relu'(0) = 0 in both

    def run(fn) -> list[torch.Tensor]:
        conv.zero_grad()
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return [out.detach(), leaf.grad] + [p.grad.clone() for p in conv.parameters()]

    got = run(lambda t: relu_conv2d(t, conv))
    want = run(lambda t: conv(F.relu(t)))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)

    def fn(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _ReLUConv2d.apply(t, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)

    b = conv.bias.detach().clone().requires_grad_() if bias else None
    smooth = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)  # no kink of relu at 0
    inputs = (smooth, conv.weight.detach().clone().requires_grad_(), b)
    assert torch.autograd.gradcheck(fn, inputs)


def test_relu_conv2d_keeps_its_input_not_the_relu_output() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        relu_conv2d(x * 1, conv)
    activation_sized = [t for t in saved if t.shape == x.shape]
    assert len(activation_sized) == 1 and (activation_sized[0] < 0).any(), "relu(x) must not be kept, x must"


def test_relu_conv2d_under_bf16_autocast_matches_plain_autocast() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_g = _grads(lambda x: relu_conv2d(x, conv), x)
        want, want_g = _grads(lambda x: conv(F.relu(x)), x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    assert got_g[0].dtype == torch.float32
    torch.testing.assert_close(got_g[0], want_g[0])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu_residual", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (1, 2, 3, 3)])
def test_abn_add_equals_batchnorm_plus_residual(impl: str, training: bool, relu_residual: bool, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    res = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64)

    norm = InPlaceABN(shape[1], activation="identity").double().train(training)
    norm.impl = impl
    ref = nn.BatchNorm2d(shape[1]).double().train(training)
    for layer in (norm, ref):
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            layer.running_mean.fill_(0.2)
            layer.running_var.fill_(1.7)

    got, (gx, gr) = _grads(lambda x, r: abn_add_(x * 1, norm, r, relu_residual), x, res)
    want, (wx, wr) = _grads(lambda x, r: ref(x) + (F.relu(r) if relu_residual else r), x, res)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(gx, wx, **tol)
    torch.testing.assert_close(gr, wr, **tol)
    torch.testing.assert_close(norm.weight.grad, ref.weight.grad, **tol)
    torch.testing.assert_close(norm.bias.grad, ref.bias.grad, **tol)
    torch.testing.assert_close(norm.running_mean, ref.running_mean, **tol)
    torch.testing.assert_close(norm.running_var, ref.running_var, **tol)


@pytest.mark.parametrize("training", [True, False])
def test_abn_add_gradcheck_float64(impl: str, training: bool) -> None:
    g = torch.Generator().manual_seed(2)
    norm = InPlaceABN(3, activation="identity").double().train(training)
    norm.impl = impl

    def fn(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ABNAdd.apply(x * 1, w, b, r, norm.running_mean, norm.running_var, True, training,
                             norm.momentum, norm.eps, None, False, impl)

    inputs = (
        torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True),
        (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_(),
        torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True),
    )
    # Training mode updates the running statistics on every call; they do not enter the output.
    assert torch.autograd.gradcheck(fn, inputs)


def test_abn_add_refuses_a_norm_with_an_activation() -> None:
    with pytest.raises(ValueError, match="only 'identity'"):
        abn_add_(torch.randn(2, 3, 4, 4), InPlaceABN(3, activation="leaky_relu"), torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("ceil_mode", [True, False])
def test_max_pool_keep_input_equals_max_pool_including_ties(ceil_mode: bool) -> None:
    pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    x[:, :, :4, :4] = 0.5  # ties: the gradient goes to the same element either way
    got, (gx,) = _grads(lambda x: max_pool2d_keep_input(x, pool), x)
    want, (wx,) = _grads(pool, x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(gx, wx, rtol=0, atol=0)


@pytest.mark.parametrize("depth,stem", [(18, "deep"), (50, "deep"), (18, "standard")])
def test_pspnet_with_inplace_abn_equals_its_batchnorm_twin(depth: int, stem: str) -> None:
    """Same weights, float64: logits, features, every parameter gradient and running statistic."""
    torch.manual_seed(0)
    bn = pspnet(depth, 5, width_mult=0.25, norm="bn", stem=stem).double().train()
    abn = pspnet(depth, 5, width_mult=0.25, norm="inplace_abn", stem=stem).double().train()
    abn.load_state_dict(bn.state_dict(), strict=False)  # no num_batches_tracked in InPlace-ABN
    for model in (bn, abn):
        for m in model.modules():
            if isinstance(m, nn.Dropout2d):
                m.p = 0.0
    assert all(block.fusable() for layer in (abn.layer1, abn.layer2, abn.layer3, abn.layer4) for block in layer)

    x = torch.randn(2, 3, 41, 47, dtype=torch.float64)
    out_bn, out_abn = bn(x), abn(x.clone())
    for name in ("logits", "aux_logits", "feat", "layer1", "layer2", "layer3", "layer4"):
        torch.testing.assert_close(getattr(out_abn, name), getattr(out_bn, name), rtol=1e-10, atol=1e-10)
    for model, out in ((bn, out_bn), (abn, out_abn)):
        (out.logits.square().mean() + out.aux_logits.mean() + out.layer1.square().mean()).backward()
    want = dict(bn.named_parameters())
    for name, p in abn.named_parameters():
        # A bias right before a batch norm has a zero gradient up to rounding: compare absolutely.
        torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-8, atol=1e-11, msg=name)
    bn_state = bn.state_dict()
    for name, value in abn.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(value, bn_state[name], rtol=1e-10, atol=1e-12, msg=name)


def _kept_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward of model(x)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(kept.values())


@pytest.mark.parametrize("depth,width,limit", [(18, 0.5, 0.65), (50, 0.25, 0.68)])
def test_inplace_abn_keeps_at_least_a_third_less_for_backward(depth: int, width: float, limit: float) -> None:
    x = torch.randn(2, 3, 65, 65)
    kept = {}
    for norm in ("bn", "inplace_abn"):
        torch.manual_seed(0)
        kept[norm] = _kept_bytes(pspnet(depth, 19, width_mult=width, norm=norm).train(), x.clone())
    # Measured: 0.61 (R18) and 0.63 (R50); 0.57 for R101. The plain InPlace-ABN layout kept ~0.85.
    assert kept["inplace_abn"] <= limit * kept["bn"], kept


def test_a_layer_that_cannot_fuse_runs_its_blocks_in_turn() -> None:
    torch.manual_seed(0)
    model = pspnet(18, 3, width_mult=0.25, norm="inplace_abn").double()
    model.layer2[1].relu = nn.LeakyReLU(0.1)  # no longer the fusable (identity norm, ReLU) pair
    assert isinstance(model.layer2, ResLayer) and not model.layer2[1].fusable()
    x = torch.randn(1, 16, 9, 9, dtype=torch.float64).relu()
    got = model.layer2(x.clone())
    want = x.clone()
    for block in model.layer2:
        want = block(want)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---- InPlaceABNSync in the fused residual sum, over two gloo processes ----------------------

SPLIT = (3, 2)


def _sync_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(sum(SPLIT), 3, 4, 5, generator=g, dtype=torch.float64) + 0.5
    res = torch.randn(x.shape, generator=g, dtype=torch.float64)
    cot = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, res, cot


def _run_sync(norm: InPlaceABN, x: torch.Tensor, res: torch.Tensor, cot: torch.Tensor) -> dict[str, torch.Tensor]:
    x, res = x.clone().requires_grad_(), res.clone().requires_grad_()
    out = abn_add_(x * 1, norm, res, relu_residual=True)
    (out * cot).sum().backward()
    return {"out": out.detach(), "dx": x.grad, "dres": res.grad, "dw": norm.weight.grad, "rv": norm.running_var.clone()}


def _sync_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x, res, cot = _sync_case()
        part = slice(sum(SPLIT[:rank]), sum(SPLIT[: rank + 1]))
        norm = InPlaceABNSync(3, activation="identity").double()
        torch.save(_run_sync(norm, x[part], res[part], cot[part]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fused_sum_with_inplace_abn_sync_over_two_processes_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    want = _run_sync(InPlaceABN(3, activation="identity").double(), *_sync_case())
    tol = {"rtol": 1e-10, "atol": 1e-10}
    for key in ("out", "dx", "dres"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), want[key], **tol)
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], want["dw"], **tol)
    for r in ranks:
        torch.testing.assert_close(r["rv"], want["rv"], **tol)
