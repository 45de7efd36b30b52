"""The fused pair-wise affinity distance against the naive N x N computation in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skd import ext
from skd.errors import SkdError
from skd.nn import affinity
from skd.nn.affinity import affinity_distance

# (B, N, Cs, Ct): the paper's 3x3 nodes with the student's and teacher's widths; several tiles
# with ragged edges (CPU tiles are 128 nodes, CUDA tiles 32); one node; channels not a multiple
# of the CUDA kernel's 32-channel chunks.
SIZES = [(2, 9, 128, 512), (3, 200, 16, 24), (1, 1, 4, 4), (2, 130, 33, 7), (1, 257, 64, 64)]


@pytest.fixture(params=["ext", "torch"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "ext" and not ext.available():
        pytest.skip("skd extension not built (see tests/test_ext_build.py)")
    return request.param


def nodes(b: int, n: int, c: int, seed: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, n, c, generator=g), dim=-1).to(device)


def naive(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Both N x N graphs in float64, then the per-image sum of squared differences."""
    s, t = s.double(), t.double()
    return (t @ t.transpose(1, 2) - s @ s.transpose(1, 2)).square().sum(dim=(1, 2))


def check_against_naive(s: torch.Tensor, t: torch.Tensor, impl: str, rtol: float = 1e-5) -> None:
    s_ref, t_ref = s.double().requires_grad_(), t.double().requires_grad_()
    weights = torch.rand(s.shape[0], dtype=torch.float64, device=s.device) + 0.5
    want = naive(s_ref, t_ref)
    (want * weights).sum().backward()

    s_in, t_in = s.clone().requires_grad_(), t.clone().requires_grad_()
    got = affinity_distance(s_in, t_in, impl=impl)
    assert got.shape == (s.shape[0],) and got.dtype == s.dtype
    (got * weights.to(got.dtype)).sum().backward()
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=1e-6)
    # Gradients are sums of N terms of size ~1: compare against their own scale.
    for mine, ref in ((s_in.grad, s_ref.grad), (t_in.grad, t_ref.grad)):
        scale = ref.abs().max().clamp_min(1.0)
        torch.testing.assert_close(mine.double() / scale, ref / scale, rtol=0, atol=2e-5)


@pytest.mark.parametrize("size", SIZES)
def test_matches_naive_graphs_in_float64(impl: str, size: tuple[int, int, int, int]) -> None:
    b, n, cs, ct = size
    check_against_naive(nodes(b, n, cs, 0), nodes(b, n, ct, 1), impl)


def test_gradient_is_minus_four_sum_of_graph_difference_times_s(impl: str) -> None:
    s, t = nodes(2, 20, 8, 2).double().requires_grad_(), nodes(2, 20, 5, 3).double()
    affinity_distance(s, t, impl=impl).sum().backward()
    diff = t @ t.transpose(1, 2) - s.detach() @ s.detach().transpose(1, 2)
    torch.testing.assert_close(s.grad, -4 * diff @ s.detach(), rtol=1e-10, atol=1e-10)


def test_gradcheck_float64(impl: str) -> None:
    s = nodes(2, 7, 5, 4).double().requires_grad_()
    t = nodes(2, 7, 3, 5).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: affinity_distance(a, b, impl=impl), (s, t))


def test_detached_teacher_gets_no_gradient(impl: str) -> None:
    s, t = nodes(1, 10, 4, 6).requires_grad_(), nodes(1, 10, 6, 7)
    affinity_distance(s, t, impl=impl).sum().backward()
    assert s.grad is not None and t.grad is None


def test_fallback_goes_a_block_of_rows_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 elements per block -> rows of 1 at N = 50, B = 2: the N x N graph never exists at once.
    monkeypatch.setattr(affinity, "_BLOCK_ELEMENTS", 100)
    check_against_naive(nodes(2, 50, 6, 8), nodes(2, 50, 9, 9), "torch")


def test_half_inputs_are_computed_in_float32(impl: str) -> None:
    s, t = nodes(2, 9, 16, 10), nodes(2, 9, 16, 11)
    got = affinity_distance(s.half(), t.half(), impl=impl)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive(s.half().float(), t.half().float()), rtol=1e-5, atol=1e-6)


def test_bad_shapes_and_impl_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, N, Cs\) and \(B, N, Ct\)"):
        affinity_distance(torch.randn(2, 9, 4), torch.randn(2, 8, 4))
    with pytest.raises(SkdError, match="impl='gpu'"):
        affinity_distance(torch.randn(2, 9, 4), torch.randn(2, 9, 4), impl="gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("size", SIZES + [(2, 1000, 128, 512)])
def test_cuda_matches_naive_graphs_in_float64(impl: str, size: tuple[int, int, int, int]) -> None:
    b, n, cs, ct = size
    check_against_naive(nodes(b, n, cs, 0, "cuda"), nodes(b, n, ct, 1, "cuda"), impl, rtol=1e-4)
    s, t = nodes(b, n, cs, 0, "cuda").double(), nodes(b, n, ct, 1, "cuda").double()
    torch.testing.assert_close(affinity_distance(s, t, impl=impl), naive(s, t), rtol=1e-10, atol=1e-9)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_cuda_non_contiguous_inputs(impl: str) -> None:
    # s as the transpose of a (B, Cs, N) map, t a slice of a wider one: both are copied.
    s = nodes(2, 70, 33, 12, "cuda").transpose(1, 2).contiguous().transpose(1, 2)
    t = nodes(2, 70, 40, 13, "cuda")[:, :, :21]
    assert not s.is_contiguous() and not t.is_contiguous()
    check_against_naive(s, t, impl, rtol=1e-4)


@pytest.mark.cuda
@cuda
def test_cuda_half_and_mixed_precision_inputs(impl: str) -> None:
    s, t = nodes(2, 45, 16, 14, "cuda"), nodes(2, 45, 24, 15, "cuda")
    got = affinity_distance(s.half(), t.half(), impl=impl)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive(s.half().float(), t.half().float()), rtol=1e-5, atol=1e-6)
    got = affinity_distance(s, t.double(), impl=impl)  # float64 if either input is
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive(s, t.double()), rtol=1e-10, atol=1e-9)


@pytest.mark.cuda
@cuda
def test_cuda_gradcheck_float64(impl: str) -> None:
    s = nodes(2, 37, 5, 16, "cuda").double().requires_grad_()
    t = nodes(2, 37, 3, 17, "cuda").double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: affinity_distance(a, b, impl=impl), (s, t))


@pytest.mark.cuda
@cuda
def test_cuda_more_images_than_one_grid_dimension_holds(impl: str) -> None:
    # The CUDA kernel puts the images in gridDim.y, at most 65535.
    check_against_naive(nodes(65535 + 2, 3, 2, 18, "cuda"), nodes(65535 + 2, 3, 3, 19, "cuda"), impl, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_input_on_a_device_that_is_not_the_current_one(impl: str) -> None:
    device = f"cuda:{torch.cuda.device_count() - 1}"
    assert torch.cuda.current_device() != torch.device(device).index
    check_against_naive(nodes(2, 70, 33, 20, device), nodes(2, 70, 7, 21, device), impl, rtol=1e-4)
