"""InPlace-ABN against BatchNorm + activation: outputs, running statistics, gradients, the
in-place contract, and the synchronised variant over two gloo processes.

Every numeric test runs on both implementations: the compiled extension ("ext", skipped when it
cannot be built; tests/test_ext_build.py fails in that case) and the PyTorch fallback ("torch").
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from skd import ext
from skd.errors import SkdError
from skd.nn.inplace_abn import InPlaceABN, InPlaceABNSync, inplace_abn

ACTIVATIONS = [("leaky_relu", 0.01), ("leaky_relu", 0.3), ("elu", 1.0), ("elu", 0.5), ("identity", 0.01)]
SHAPES = [(4, 3, 5, 6), (6, 3), (2, 3, 4, 2, 3)]


@pytest.fixture(params=["ext", "torch"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "ext" and not ext.available():
        pytest.skip("skd extension not built (see tests/test_ext_build.py)")
    return request.param


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
              training: bool, activation: str, slope: float, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm (F.batch_norm, as nn.BatchNorm2d runs it) then the out-of-place activation."""
    y = F.batch_norm(x, rm, rv, weight, bias, training, momentum, eps)
    if activation == "leaky_relu":
        return F.leaky_relu(y, slope)
    if activation == "elu":
        return F.elu(y, alpha=slope)
    return y


def random_affine(channels: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(channels)
    weight = (torch.rand(channels, generator=g, dtype=dtype) + 0.5) * torch.tensor([1.0, -1.0] * channels, dtype=dtype)[:channels]
    bias = torch.randn(channels, generator=g, dtype=dtype)
    return weight, bias


@pytest.mark.parametrize("activation,slope", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_running_stats_match_batchnorm_plus_activation(impl: str, activation: str, slope: float, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    channels = shape[1]
    layer = InPlaceABN(channels, activation=activation, slope=slope)
    layer.impl = impl
    weight, bias = random_affine(channels)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    rm, rv = torch.zeros(channels), torch.ones(channels)
    for step in range(3):
        x = torch.randn(shape) * (step + 1) + 3.0
        expected = reference(x, weight, bias, rm, rv, True, activation, slope)
        out = layer(x.clone())
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_mean, rm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, rv, rtol=1e-5, atol=1e-6)

    layer.eval()
    x = torch.randn((1,) + tuple(shape[1:]))  # a batch of one is fine in eval mode
    torch.testing.assert_close(layer(x.clone()), reference(x, weight, bias, rm, rv, False, activation, slope), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,slope", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (7, 4)])
def test_gradients_match_batchnorm_plus_activation(impl: str, activation: str, slope: float, training: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    channels = shape[1]
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    grad = torch.randn(shape, dtype=torch.float64)
    weight, bias = random_affine(channels, torch.float64)
    rm, rv = torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64) + 0.5

    xr, wr, br = (t.clone().requires_grad_() for t in (x, weight, bias))
    (reference(xr, wr, br, rm.clone(), rv.clone(), training, activation, slope) * grad).sum().backward()

    xa, wa, ba = (t.clone().requires_grad_() for t in (x, weight, bias))
    out = inplace_abn(xa * 1, wa, ba, rm.clone(), rv.clone(), training, 0.1, 1e-5, activation, slope, impl=impl)
    (out * grad).sum().backward()
    for got, want in ((xa.grad, xr.grad), (wa.grad, wr.grad), (ba.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation,slope", [("leaky_relu", 0.2), ("elu", 1.0), ("identity", 0.01)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(impl: str, activation: str, slope: float, training: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    weight, bias = (t.requires_grad_() for t in random_affine(2, torch.float64))
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64) * 2

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # clone: the layer overwrites its input, which must not be gradcheck's own tensor
        return inplace_abn(x.clone(), w, b, rm.clone(), rv.clone(), training, 0.1, 1e-5, activation, slope, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_output_is_the_input_storage_and_only_it_is_saved(impl: str) -> None:
    x = torch.randn(4, 3, 5, 5)
    expected = reference(x, torch.ones(3), torch.zeros(3), None, None, True, "leaky_relu", 0.01)
    out = inplace_abn(x, torch.ones(3), torch.zeros(3), None, None, True, impl=impl)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, expected)

    a = torch.randn(4, 3, 5, 5, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = inplace_abn(a * 1, torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True), None, None, True, impl=impl)
    activation_sized = [t for t in saved if t.numel() == a.numel()]
    assert len(activation_sized) == 1 and activation_sized[0].data_ptr() == y.data_ptr()


def test_reusing_an_input_that_was_saved_and_then_overwritten_raises(impl: str) -> None:
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    x = a * 2
    squared = x * x  # saves x for its backward; the layer then overwrites x
    y = inplace_abn(x, torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True), None, None, True, impl=impl)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (squared.sum() + y.sum()).backward()


def test_overwriting_the_output_in_place_raises(impl: str) -> None:
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = InPlaceABN(3, activation="identity")
    y.impl = impl
    out = y(a * 1)
    out.relu_()  # an in-place ReLU after InPlace-ABN destroys what its backward needs
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_leaf_that_requires_grad_is_rejected(impl: str) -> None:
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        inplace_abn(x, torch.ones(3), torch.zeros(3), None, None, impl=impl)


def test_one_value_per_channel_in_training_is_an_error_like_batchnorm(impl: str) -> None:
    layer = InPlaceABN(3)
    layer.impl = impl
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))
    layer.eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


def test_channels_last_input_is_overwritten_with_the_result(impl: str) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    expected = reference(x, torch.ones(3), torch.zeros(3), None, None, True, "leaky_relu", 0.01)
    out = inplace_abn(x, torch.ones(3), torch.zeros(3), None, None, True, impl=impl)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_use_float32_statistics(impl: str, dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    x = torch.randn(4, 3, 6, 6) * 3 + 2
    expected = reference(x, torch.ones(3), torch.zeros(3), None, None, True, "leaky_relu", 0.01)
    xh = x.to(dtype).requires_grad_()
    out = inplace_abn(xh * 1, torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True), None, None, True, impl=impl)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=3e-2)
    out.float().sum().backward()
    assert xh.grad is not None and xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


@pytest.mark.parametrize("dtype,alpha", [(torch.float32, 1.0), (torch.float64, 1.0), (torch.float16, 0.3), (torch.bfloat16, 1.0)])
def test_saturated_elu_gives_finite_gradients(impl: str, dtype: torch.dtype, alpha: float) -> None:
    # Far below 0, alpha * e^y is lost in the rounding of z: z = -alpha, or just below it when
    # alpha has no exact half value. Backward must not take log1p(-1) = -inf there.
    x = torch.tensor([-60.0, -40.0, -1.0, 0.25, 0.5, 2.0], dtype=torch.float64).view(6, 1)
    rm, rv = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    reference(xr, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), rm, rv, False, "elu", alpha).sum().backward()
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    xa = x.to(dtype).requires_grad_()
    out = inplace_abn(xa * 1, torch.ones(1, dtype=stat), torch.zeros(1, dtype=stat), rm.to(stat), rv.to(stat), False, 0.1, 1e-5,
                      "elu", alpha, impl=impl)
    out.double().sum().backward()
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-2, atol=1e-3)

    # Training: the recovered pre-activation of a saturated value is only a bound, but finite.
    torch.manual_seed(14)
    xa = torch.randn(8, 2, 5, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.tensor([1.0, 60.0], dtype=stat, requires_grad=True)
    bias = torch.zeros(2, dtype=stat, requires_grad=True)
    out = inplace_abn(xa * 1, weight, bias, None, None, True, 0.1, 1e-5, "elu", alpha, impl=impl)
    assert (out.double() <= -alpha).any()
    (out.double() * torch.randn(out.shape, dtype=torch.float64)).sum().backward()
    for grad in (xa.grad, weight.grad, bias.grad):
        assert torch.isfinite(grad.double()).all()


def test_invalid_options_are_rejected_with_the_fix() -> None:
    with pytest.raises(SkdError, match="ReLU is not invertible"):
        InPlaceABN(8, activation="relu")
    with pytest.raises(SkdError, match="must be > 0"):
        InPlaceABN(8, activation="leaky_relu", slope=0.0)
    with pytest.raises(ValueError, match=r"expected \(B, 8, \*\)"):
        InPlaceABN(8)(torch.randn(2, 4, 3, 3))


def test_state_dict_is_batchnorm_without_the_batch_counter() -> None:
    layer = InPlaceABN(5)
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_()
        bn.weight.uniform_()
    layer.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, the rest loads
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.weight.detach(), bn.weight.detach())


def test_sync_without_a_process_group_is_inplace_abn(impl: str) -> None:
    torch.manual_seed(5)
    x = torch.randn(4, 3, 5, 5)
    plain, synced = InPlaceABN(3), InPlaceABNSync(3)
    plain.impl = synced.impl = impl
    torch.testing.assert_close(synced(x.clone()), plain(x.clone()))
    torch.testing.assert_close(synced.running_var, plain.running_var)


# ---- two gloo processes -------------------------------------------------------------------

SYNC_SPLIT = (3, 2)  # uneven on purpose: the statistics must weight each rank by its count


def _sync_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(SYNC_SPLIT), 4, 5, 3, generator=g, dtype=torch.float64) * 2 + 1
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    weight, bias = random_affine(4, torch.float64)
    return x, grad, weight, bias


def _run_abn(layer: InPlaceABN, x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = layer(leaf * 1)
    (out * grad).sum().backward()
    return {
        "out": out.detach(), "dx": leaf.grad, "dw": layer.weight.grad, "db": layer.bias.grad,
        "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
    }


def _sync_worker(rank: int, init_file: str, out_dir: str, impl: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x, grad, weight, bias = _sync_data()
        start = sum(SYNC_SPLIT[:rank])
        part = slice(start, start + SYNC_SPLIT[rank])
        layer = InPlaceABNSync(4, activation="leaky_relu", slope=0.1).double()
        layer.impl = impl
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        torch.save(_run_abn(layer, x[part], grad[part]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_over_two_gloo_processes_equals_inplace_abn_on_the_whole_batch(impl: str, tmp_path: Path) -> None:
    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path), impl), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    x, grad, weight, bias = _sync_data()
    single = InPlaceABN(4, activation="leaky_relu", slope=0.1).double()
    single.impl = impl
    with torch.no_grad():
        single.weight.copy_(weight)
        single.bias.copy_(bias)
    want = _run_abn(single, x, grad)

    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), want["out"], **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), want["dx"], **tol)
    # Each rank holds its share of the parameter gradients (DDP adds them up).
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], want["dw"], **tol)
    torch.testing.assert_close(ranks[0]["db"] + ranks[1]["db"], want["db"], **tol)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], want["running_mean"], **tol)
        torch.testing.assert_close(r["running_var"], want["running_var"], **tol)


# ---- CUDA ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("activation,slope", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(4, 3, 17, 33), (64, 5), (2, 70, 9, 9)])
def test_cuda_matches_batchnorm_plus_activation(impl: str, activation: str, slope: float, shape: tuple[int, ...]) -> None:
    torch.manual_seed(8)
    dev = torch.device("cuda")
    channels = shape[1]
    x = (torch.randn(shape, device=dev) * 2 + 5).double()
    grad = torch.randn(shape, device=dev, dtype=torch.float64)
    weight, bias = (t.to(dev) for t in random_affine(channels, torch.float64))
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        rm, rv = torch.zeros(channels, device=dev, dtype=dtype), torch.ones(channels, device=dev, dtype=dtype)
        xr, wr, br = (t.to(dtype).clone().requires_grad_() for t in (x, weight, bias))
        expected = reference(xr, wr, br, rm.clone(), rv.clone(), True, activation, slope)
        (expected * grad.to(dtype)).sum().backward()
        xa, wa, ba = (t.to(dtype).clone().requires_grad_() for t in (x, weight, bias))
        rma, rva = rm.clone(), rv.clone()
        out = inplace_abn(xa * 1, wa, ba, rma, rva, True, 0.1, 1e-5, activation, slope, impl=impl)
        (out * grad.to(dtype)).sum().backward()
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
        for got, want in ((xa.grad, xr.grad), (wa.grad, wr.grad), (ba.grad, br.grad)):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * 10)
        reference(x.to(dtype), weight.to(dtype), bias.to(dtype), rm, rv, True, activation, slope)
        torch.testing.assert_close(rma, rm, rtol=tol, atol=tol)
        torch.testing.assert_close(rva, rv, rtol=tol, atol=tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_forward_and_backward(impl: str, dtype: torch.dtype) -> None:
    torch.manual_seed(9)
    x = torch.randn(8, 16, 20, 20, device="cuda") * 3 + 2
    expected = reference(x, torch.ones(16, device="cuda"), torch.zeros(16, device="cuda"), None, None, True, "leaky_relu", 0.01)
    xh = x.to(dtype).requires_grad_()
    out = inplace_abn(xh * 1, torch.ones(16, device="cuda", requires_grad=True), torch.zeros(16, device="cuda", requires_grad=True), None, None, True, impl=impl)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=3e-2)
    out.float().sum().backward()
    assert xh.grad is not None and torch.isfinite(xh.grad.float()).all()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("training", [True, False])
def test_cuda_gradcheck_float64(impl: str, training: bool) -> None:
    torch.manual_seed(10)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    weight, bias = (t.cuda().requires_grad_() for t in random_affine(2, torch.float64))
    rm, rv = torch.zeros(2, dtype=torch.float64, device="cuda"), torch.ones(2, dtype=torch.float64, device="cuda")

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return inplace_abn(x.clone(), w, b, rm.clone(), rv.clone(), training, 0.1, 1e-5, "leaky_relu", 0.2, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.cuda
@cuda
def test_cuda_extension_has_cuda_kernels() -> None:
    module = ext.load()
    if module is None:
        pytest.skip("skd extension not built")
    assert module.with_cuda, "torch has CUDA but the extension was built without its CUDA kernels"


# Sizes chosen to exercise every loop of libs/src/inplace_abn_cuda.cu (256 threads a block,
# at most 64 partial sums per channel, at most 8192 blocks for the elementwise kernels):
# one value per image and many images (the per-channel walk steps over whole images), a
# trailing size smaller than the step, more than 256 channels (two blocks for the final sums)
# with more than 8192 * 256 elements (each elementwise thread visits several), more than
# 64 * 2048 values per channel (64 partial sums, several values per thread), and tiny ones.
GRID_SHAPES = [(8192, 16), (512, 32, 3, 3), (4, 300, 48, 48), (8, 4, 130, 130), (2, 3, 7), (5, 2, 1, 1)]


def compare_with_batchnorm(device: str, shape: tuple[int, ...], dtype: torch.dtype, activation: str, slope: float,
                           training: bool, impl: str, channels_last: bool = False) -> None:
    """inplace_abn in `dtype` against BatchNorm + activation in float64 on the same (rounded)
    input: output, input / weight / bias gradients and running statistics."""
    g = torch.Generator().manual_seed(sum(shape))
    channels = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3).to(dtype).double()
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).double()
    weight, bias = random_affine(channels, torch.float64)
    rm, rv = torch.randn(channels, generator=g, dtype=torch.float64), torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    x, grad, weight, bias, rm, rv = (t.to(device) for t in (x, grad, weight, bias, rm, rv))

    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    xa = x.to(dtype).clone().requires_grad_()
    wa, ba = (t.to(stat_dtype).clone().requires_grad_() for t in (weight, bias))
    rma, rva = rm.to(stat_dtype, copy=True), rv.to(stat_dtype, copy=True)
    inp = xa * 1
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
        assert not inp.is_contiguous()
    out = inplace_abn(inp, wa, ba, rma, rva, training, 0.1, 1e-5, activation, slope, impl=impl)
    assert out.data_ptr() == inp.data_ptr() and out.dtype == dtype
    (out * grad.to(dtype)).sum().backward()

    want = reference(x, weight, bias, rm.clone(), rv.clone(), training, activation, slope)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, weight, bias))
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = reference(xr, wr, br, rm_ref, rv_ref, training, "identity", slope)
    if activation == "leaky_relu":
        # Where y is within rounding of 0 the layer's output may have either sign, and the
        # slope in backward follows that sign; the output itself is compared with `want`.
        y = torch.where(out.detach() < 0, y * slope, y)
    elif activation == "elu":
        y = F.elu(y, alpha=slope)
    (y * grad).sum().backward()

    assert out.is_contiguous(memory_format=torch.channels_last) if channels_last else out.is_contiguous()
    # Weight and bias gradients are sums of `count` terms of size ~1 and random sign.
    root = (x.numel() // channels) ** 0.5
    if dtype == torch.float64:
        tol = {"out": 1e-9, "dx": 1e-8, "sums": 1e-9 * root}
    elif dtype == torch.float32:
        tol = {"out": 1e-4, "dx": 1e-3, "sums": 1e-4 * root}
    else:  # the output rounded to 8 (bf16) or 11 (fp16) bits, and read back in backward
        tol = {"out": 3e-2, "dx": 5e-2, "sums": 5e-2 * root}
    torch.testing.assert_close(out.double(), want, rtol=tol["out"], atol=tol["out"])
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=tol["dx"], atol=tol["dx"])
    for got, ref in ((wa.grad, wr.grad), (ba.grad, br.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=tol["dx"], atol=tol["sums"])
    if training:
        stat_tol = 1e-9 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(rma.double(), rm_ref, rtol=stat_tol, atol=stat_tol)
        torch.testing.assert_close(rva.double(), rv_ref, rtol=stat_tol, atol=stat_tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("activation,slope", [("leaky_relu", 0.1), ("elu", 1.0)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", GRID_SHAPES)
def test_cuda_sizes_that_exercise_every_grid_loop(impl: str, shape: tuple[int, ...], dtype: torch.dtype, training: bool,
                                                  activation: str, slope: float) -> None:
    compare_with_batchnorm("cuda", shape, dtype, activation, slope, training, impl)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (4, 300, 48, 48), (8192, 16)])
def test_cuda_half_precision_matches_float64_reference(impl: str, shape: tuple[int, ...], dtype: torch.dtype, training: bool) -> None:
    compare_with_batchnorm("cuda", shape, dtype, "leaky_relu", 0.1, training, impl)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 8, 9, 7), (2, 300, 5, 3)])
def test_cuda_channels_last_input(impl: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    compare_with_batchnorm("cuda", shape, dtype, "leaky_relu", 0.1, True, impl, channels_last=True)


def check_autocast(device: str, dtype: torch.dtype, impl: str) -> None:
    """conv -> InPlace-ABN under autocast against conv -> BatchNorm2d -> leaky ReLU: the output
    has the autocast dtype, parameters, running statistics and their gradients stay float32."""
    torch.manual_seed(12)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device)
    layer, bn = InPlaceABN(8, activation="leaky_relu", slope=0.01).to(device), torch.nn.BatchNorm2d(8).to(device)
    layer.impl = impl
    x = torch.randn(4, 3, 10, 10, device=device)
    with torch.autocast(device_type=device, dtype=dtype):
        h = conv(x).detach()
        out = layer(h.clone().requires_grad_() * 1)
        want = F.leaky_relu(bn(h.clone().requires_grad_()), 0.01)
    assert h.dtype == out.dtype == dtype
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=3e-2)
    for mine, ref in ((layer.running_mean, bn.running_mean), (layer.running_var, bn.running_var)):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, ref, rtol=1e-3, atol=1e-3)
    out.float().sum().backward()
    want.float().sum().backward()
    for mine, ref in ((layer.weight.grad, bn.weight.grad), (layer.bias.grad, bn.bias.grad)):
        assert mine is not None and mine.dtype == torch.float32
        torch.testing.assert_close(mine, ref, rtol=5e-2, atol=0.5)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_keeps_float32_parameters_and_statistics(impl: str, dtype: torch.dtype) -> None:
    check_autocast("cuda", dtype, impl)


def check_first_value_far_from_the_mean(device: str, dtype: torch.dtype, impl: str) -> None:
    """Training statistics and output when each channel's first value lies about 1000 standard
    deviations from the others (the CUDA kernels measure from that value), against float64 on
    the same rounded input. Float32 sums of (x - first) and (x - first)^2 lost about
    eps * 1000^2 of the variance there; Welford's updates and Chan's merges do not."""
    g = torch.Generator().manual_seed(14)
    shape, channels = (8, 3, 40, 40), 3  # 12800 values a channel: 7 partial results, the last one short
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3
    x[0, :, 0, 0] = 3 + 2 * 1000 * torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    x = x.to(dtype).double().to(device)  # exactly the values the layer sees
    weight, bias = (t.to(device) for t in random_affine(channels, torch.float64))
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rma = torch.zeros(channels, device=device, dtype=stat_dtype)
    rva = torch.ones(channels, device=device, dtype=stat_dtype)
    # momentum 1: the running estimates become the batch mean and the unbiased batch variance.
    out = inplace_abn(x.to(dtype), weight.to(stat_dtype), bias.to(stat_dtype), rma, rva, True, 1.0, 1e-5, "leaky_relu", 0.1,
                      impl=impl)

    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    assert (var > 2 * 4.0).all()  # the first value carries most of the variance
    want = reference(x, weight, bias, None, None, True, "leaky_relu", 0.1)
    # A CPU emulation of the CUDA kernels gave 2.3e-6 (mean, in standard deviations) and 3e-7
    # (variance, relative) here; the shifted sums they replace were 4.7e-4 off in the variance.
    if dtype == torch.float32:
        tol = {"mean": 2e-5, "var": 5e-6, "out": 1e-4}
    else:  # statistics in float32 of exactly representable values; the output rounded to 8 bits
        tol = {"mean": 5e-5, "var": 2e-5, "out": 3e-2}
    std = var.sqrt()
    mean_err = ((rma.double() - mean).abs() / std).max().item()
    var_err = ((rva.double() - var).abs() / var).max().item()
    assert mean_err <= tol["mean"], f"mean off by {mean_err:.2e} standard deviations"
    assert var_err <= tol["var"], f"variance off by {var_err:.2e} of itself"
    torch.testing.assert_close(out.double(), want, rtol=tol["out"], atol=tol["out"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_with_a_first_value_far_from_the_mean(impl: str, dtype: torch.dtype) -> None:
    check_first_value_far_from_the_mean("cpu", dtype, impl)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_statistics_with_a_first_value_far_from_the_mean(impl: str, dtype: torch.dtype) -> None:
    check_first_value_far_from_the_mean("cuda", dtype, impl)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_input_on_a_device_that_is_not_the_current_one(impl: str) -> None:
    device = f"cuda:{torch.cuda.device_count() - 1}"
    assert torch.cuda.current_device() != torch.device(device).index
    compare_with_batchnorm(device, (4, 6, 5, 5), torch.float32, "leaky_relu", 0.1, True, impl)


@pytest.mark.cuda
@pytest.mark.slow
@cuda
def test_cuda_more_than_2_31_elements(impl: str) -> None:
    """Offsets past 2^31 in every kernel: (1, 2, 2^30 + 3) in float16, 4 GiB a tensor."""
    if impl != "ext":
        pytest.skip("the PyTorch fallback computes no offsets of its own")
    if torch.cuda.get_device_properties(0).total_memory < 48 * 2**30:
        pytest.skip("needs a GPU with 48 GiB")
    torch.manual_seed(13)
    size = 2**30 + 3
    x = (torch.randn(1, 2, size, device="cuda") * 2 + 3).half()
    grad = torch.randn(1, 2, size, device="cuda").half()
    mean, var, ends = [], [], []
    for c in range(2):
        v, m = torch.var_mean(x[0, c].float(), correction=0)
        mean.append(m)
        var.append(v)
        ends.append(torch.cat([x[0, c, :4096], x[0, c, -4096:]]).float())
    mean_t, var_t = torch.stack(mean), torch.stack(var)
    invstd = torch.rsqrt(var_t + 1e-5)

    leaf = x.requires_grad_()
    weight = torch.ones(2, device="cuda", requires_grad=True)
    bias = torch.zeros(2, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(2, device="cuda"), torch.ones(2, device="cuda")
    out = inplace_abn(leaf * 1, weight, bias, rm, rv, True, 1.0, 1e-5, "identity", 0.01, impl=impl)
    torch.testing.assert_close(rm, mean_t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rv, var_t * (size / (size - 1)), rtol=1e-4, atol=1e-4)
    for c in range(2):
        got = torch.cat([out[0, c, :4096], out[0, c, -4096:]]).float()
        torch.testing.assert_close(got, (ends[c] - mean_t[c]) * invstd[c], rtol=1e-2, atol=1e-2)
    z = out.detach()
    out.backward(grad)
    del out
    for c in range(2):
        xhat = z[0, c].float()
        dy = grad[0, c].float()
        sum_dy, sum_dy_xhat = dy.sum(), (dy * xhat).sum()
        torch.testing.assert_close(bias.grad[c], sum_dy, rtol=1e-3, atol=size**0.5 * 1e-3)
        torch.testing.assert_close(weight.grad[c], sum_dy_xhat, rtol=1e-3, atol=size**0.5 * 1e-3)
        ends_dx = torch.cat([leaf.grad[0, c, :4096], leaf.grad[0, c, -4096:]]).float()
        ends_want = (torch.cat([dy[:4096], dy[-4096:]]) - sum_dy / size
                     - torch.cat([xhat[:4096], xhat[-4096:]]) * sum_dy_xhat / size) * invstd[c]
        torch.testing.assert_close(ends_dx, ends_want, rtol=1e-2, atol=1e-2)
