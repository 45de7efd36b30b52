"""Losses of skd.losses against hand-computed values and naive references written here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from skd.losses import (
    Connector,
    channel_wise_loss,
    choose_impl,
    cross_entropy_2d,
    discriminator_loss,
    dist_loss,
    generator_loss,
    gradient_penalty,
    kd_loss,
    pair_wise_loss,
    pixel_wise_loss,
    task_loss,
)
from skd.losses.pair_wise import node_kernel, pool_nodes


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- task loss


def test_cross_entropy_2d_averages_over_labelled_pixels_only():
    logits = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]]]])  # (1, 2, 1, 3)
    label = torch.tensor([[[0, 255, 1]]])
    # pixel 0: -log(1 / (1 + e)); pixel 2: -log(1 / (1 + e^2)); pixel 1 ignored
    expected = (math.log(1 + math.e) + math.log(1 + math.e**2)) / 2
    assert cross_entropy_2d(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_2d_upsamples_with_align_corners():
    # Class-1 logit ramps 0 -> 2 across 2 columns; align_corners=True puts 0, 1, 2 on 3 columns.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, :, 1] = 2.0
    label = torch.zeros(1, 3, 3, dtype=torch.long)
    expected = sum(math.log(1 + math.exp(v)) for v in (0.0, 1.0, 2.0)) / 3
    assert cross_entropy_2d(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_task_loss_adds_aux_with_weight_and_allows_no_aux():
    logits, aux = randn(2, 5, 4, 4, seed=1), randn(2, 5, 4, 4, seed=2)
    label = torch.randint(0, 5, (2, 8, 8), generator=torch.Generator().manual_seed(3))
    label[0, :2] = 255
    main = cross_entropy_2d(logits, label)
    assert torch.allclose(task_loss(logits, None, label), main)
    expected = main + 0.4 * cross_entropy_2d(aux, label)
    assert torch.allclose(task_loss(logits, aux, label), expected)
    assert torch.allclose(task_loss(logits, aux, label, aux_weight=1.0), main + cross_entropy_2d(aux, label))


def test_task_loss_is_zero_and_differentiable_when_every_pixel_is_ignored():
    logits = randn(1, 3, 2, 2).requires_grad_(True)
    loss = task_loss(logits, None, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def _ohem_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 pixels, 2 classes, label 0 everywhere but one ignored pixel; true-class probs p known."""
    p = torch.tensor([0.95, 0.9, 0.8, 0.75, 0.6, 0.5, 0.3, 0.2])
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).view(1, 2, 1, 8)
    label = torch.zeros(1, 1, 8, dtype=torch.long)
    label[0, 0, 1] = 255  # the 0.9 pixel
    return logits, label, p


def test_ohem_keeps_pixels_below_threshold_when_enough_are_hard():
    logits, label, p = _ohem_case()
    loss = task_loss(logits, None, label, ohem_thresh=0.7, ohem_min_kept=2)
    # p <= 0.7: 0.6, 0.5, 0.3, 0.2
    assert loss.item() == pytest.approx(-torch.log(p[4:]).mean().item(), rel=1e-5)


def test_ohem_keeps_at_least_min_kept_hardest_pixels():
    logits, label, p = _ohem_case()
    loss = task_loss(logits, None, label, ohem_thresh=0.4, ohem_min_kept=5)
    # only 0.3 and 0.2 are below 0.4; the 5 hardest labelled pixels are 0.75 .. 0.2
    assert loss.item() == pytest.approx(-torch.log(p[3:]).mean().item(), rel=1e-5)


def test_ohem_keeps_every_labelled_pixel_when_min_kept_exceeds_them():
    logits, label, _ = _ohem_case()
    loss = task_loss(logits, None, label, ohem_thresh=0.1, ohem_min_kept=7)
    assert torch.allclose(loss, cross_entropy_2d(logits, label))


def test_ohem_applies_to_main_logits_only():
    logits, label, p = _ohem_case()
    aux = torch.zeros_like(logits)
    loss = task_loss(logits, aux, label, ohem_thresh=0.7, ohem_min_kept=2)
    expected = -torch.log(p[4:]).mean() + 0.4 * math.log(2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- pixel-wise


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(dim=1)
    return -(p * p.log()).sum()


def test_pixel_wise_of_identical_logits_is_entropy_sum_over_hw():
    logits = randn(3, 4, 2, 5)
    assert torch.allclose(pixel_wise_loss(logits, logits), _entropy(logits) / 10)


def test_pixel_wise_hand_case_uniform_teacher_one_pixel():
    student = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # p_S = (1/4, 3/4)
    teacher = torch.zeros(1, 2, 1, 1)  # p_T = (1/2, 1/2)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert pixel_wise_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_pixel_wise_sums_over_batch_and_divides_by_hw_with_temperature():
    student, teacher, t = randn(2, 3, 2, 3, seed=1), randn(2, 3, 2, 3, seed=2), 2.0
    total = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(3):
                p_t = torch.softmax(teacher[b, :, i, j] / t, dim=0)
                total += -(p_t * torch.log_softmax(student[b, :, i, j] / t, dim=0)).sum().item()
    expected = total / (2 * 3) * t**2
    assert pixel_wise_loss(student, teacher, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_pixel_wise_rejects_different_spatial_sizes():
    with pytest.raises(ValueError, match="same size"):
        pixel_wise_loss(randn(1, 3, 4, 4), randn(1, 3, 5, 5))


def test_pixel_wise_gives_no_gradient_to_teacher():
    teacher = randn(1, 3, 2, 2).requires_grad_(True)
    pixel_wise_loss(randn(1, 3, 2, 2, seed=1).requires_grad_(True), teacher).backward()
    assert teacher.grad is None


def test_pixel_wise_gradcheck():
    teacher = randn(2, 3, 2, 2, seed=1, dtype=torch.float64)
    student = randn(2, 3, 2, 2, seed=2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: pixel_wise_loss(s, teacher, temperature=1.5), (student,))


# ----------------------------------------------------------------------------- pair-wise


def reference_pair_wise(
    student: torch.Tensor, teacher: torch.Tensor, kh: int, kw: int, pool: str = "max", detach_norm: bool = True
) -> torch.Tensor:
    """The pair-wise loss with explicit windows (ceil mode = partial windows at the border) and
    broadcast dot products instead of matrix products."""

    def nodes(feat: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[2:]
        out = []
        for i in range(0, h, kh):
            for j in range(0, w, kw):
                window = feat[:, :, i : i + kh, j : j + kw]
                out.append(window.amax(dim=(2, 3)) if pool == "max" else window.mean(dim=(2, 3)))
        x = torch.stack(out, dim=1)  # (B, N, C)
        norm = x.pow(2).sum(dim=2, keepdim=True).sqrt()
        return x / ((norm.detach() if detach_norm else norm) + 1e-8)

    s, t = nodes(student), nodes(teacher.detach())
    sim_s = (s[:, :, None, :] * s[:, None, :, :]).sum(-1)
    sim_t = (t[:, :, None, :] * t[:, None, :, :]).sum(-1)
    n = s.shape[1]
    return ((sim_t - sim_s) ** 2).sum() / n**2 / student.shape[0]


def impls() -> list[str]:
    return ["naive", "gram"]


def test_pair_wise_original_granularity_gives_nine_nodes_on_65x65():
    assert node_kernel(65, 65, pool_scale=0.5) == (32, 32)
    assert pool_nodes(randn(1, 2, 65, 65), (32, 32)).shape == (1, 9, 2)


GRANULARITIES = [
    # (h, w, pool_scale, node_size, pool, kernel)
    (65, 65, 0.5, None, "max", (32, 32)),  # the original: 3x3 nodes with partial last windows
    (8, 8, 0.125, None, "max", (1, 1)),  # one node per pixel
    (9, 7, 0.5, 2, "max", (2, 2)),  # node_size wins over pool_scale; ceil mode
    (9, 7, 0.5, 2, "avg", (2, 2)),
]


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("h,w,pool_scale,node_size,pool,kernel", GRANULARITIES)
def test_pair_wise_matches_reference_value_and_gradient(impl, h, w, pool_scale, node_size, pool, kernel):
    assert node_kernel(h, w, pool_scale, node_size) == kernel
    teacher = randn(2, 6, h, w, seed=1)  # teacher and student channel counts differ
    student = randn(2, 4, h, w, seed=2, dtype=torch.float64)
    ref_student = student.clone().requires_grad_(True)
    expected = reference_pair_wise(ref_student, teacher.double(), *kernel, pool=pool)
    expected.backward()
    student32 = student.float().requires_grad_(True)
    loss = pair_wise_loss(student32, teacher, pool_scale, node_size, pool, impl)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(student32.grad.double(), ref_student.grad, rtol=1e-4, atol=1e-9)


def test_pair_wise_impls_agree_in_float64():
    teacher = randn(2, 5, 9, 9, seed=3, dtype=torch.float64)
    grads, values = [], []
    for impl in impls():
        student = randn(2, 3, 9, 9, seed=4, dtype=torch.float64).requires_grad_(True)
        loss = pair_wise_loss(student, teacher, node_size=1, impl=impl)
        loss.backward()
        values.append(loss)
        grads.append(student.grad)
    assert loss.dtype == torch.float64
    assert torch.allclose(values[0], values[1], rtol=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-15)


def test_pair_wise_gram_is_exact_when_student_is_close_to_teacher():
    # The three Gram terms are ~N^2 and cancel down to ~1e-8 N^2: float32 sums would keep none
    # of the difference, float64 accumulation keeps it.
    teacher = randn(2, 32, 16, 16, seed=5)
    student = (teacher + 1e-4 * randn(2, 32, 16, 16, seed=6)).requires_grad_(True)
    expected = reference_pair_wise(student.double(), teacher.double(), 1, 1)
    loss = pair_wise_loss(student, teacher, node_size=1, impl="gram")
    assert 0 < expected.item() < 1e-6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    ref_student = student.detach().double().requires_grad_(True)
    reference_pair_wise(ref_student, teacher.double(), 1, 1).backward()
    loss.backward()
    assert torch.allclose(student.grad.double(), ref_student.grad, rtol=1e-3, atol=1e-12)


def test_pair_wise_norm_is_detached_as_in_the_original():
    teacher = randn(1, 5, 6, 6, seed=7, dtype=torch.float64)
    student = randn(1, 3, 6, 6, seed=8, dtype=torch.float64)
    s_detached = student.clone().requires_grad_(True)
    s_attached = student.clone().requires_grad_(True)
    v_detached = reference_pair_wise(s_detached, teacher, 2, 2, detach_norm=True)
    v_attached = reference_pair_wise(s_attached, teacher, 2, 2, detach_norm=False)
    v_detached.backward()
    v_attached.backward()
    assert torch.allclose(v_detached, v_attached)  # the same value ...
    assert not torch.allclose(s_detached.grad, s_attached.grad, rtol=1e-3)  # ... another gradient
    for impl in impls():
        s = student.clone().requires_grad_(True)
        pair_wise_loss(s, teacher, node_size=2, impl=impl).backward()
        assert torch.allclose(s.grad, s_detached.grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("impl", impls())
def test_pair_wise_gradcheck(impl):
    # gradcheck differentiates the norm that the loss holds constant. Feeding unit vectors
    # (normalised here with the norm attached) makes every perturbation tangent to the sphere,
    # where the norm does not move to first order, so the two derivatives agree.
    teacher = randn(2, 4, 3, 3, seed=9, dtype=torch.float64)
    x = randn(2, 3, 3, 3, seed=10, dtype=torch.float64).requires_grad_(True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return pair_wise_loss(x / x.norm(dim=1, keepdim=True), teacher, node_size=1, impl=impl)

    assert torch.autograd.gradcheck(loss, (x,))


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("node_size", [1, 2])
def test_pair_wise_gives_the_map_its_own_layout_of_gradient_call_after_call(impl, node_size):
    # A node-major gradient would make max_pool2d's backward (and the layers below) slow.
    student, teacher = randn(2, 3, 6, 6, seed=30).requires_grad_(True), randn(2, 5, 6, 6, seed=31)
    pair_wise_loss(student, teacher, node_size=node_size, impl=impl).backward()
    first = student.grad.clone()
    assert student.grad.is_contiguous()
    student.grad = None
    pair_wise_loss(student, teacher, node_size=node_size, impl=impl).backward()
    assert torch.equal(student.grad, first)


@pytest.mark.parametrize("impl", impls())
def test_pair_wise_ignores_autocast_and_computes_in_float32(impl):
    teacher = randn(2, 16, 8, 8, seed=12)
    student = randn(2, 8, 8, 8, seed=11).requires_grad_(True)
    expected = pair_wise_loss(student, teacher, node_size=1, impl=impl)
    (expected_grad,) = torch.autograd.grad(expected, student)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pair_wise_loss(student, teacher, node_size=1, impl=impl)
    (grad,) = torch.autograd.grad(loss, student)  # outside autocast, as PyTorch recommends
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected, rtol=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-10)
    half = pair_wise_loss(student.bfloat16(), teacher.bfloat16(), node_size=1, impl=impl)
    assert half.dtype == torch.float32
    upcast = pair_wise_loss(student.bfloat16().float(), teacher.bfloat16().float(), node_size=1, impl=impl)
    assert torch.allclose(half, upcast)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_pair_wise_rejects_pool_scale_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="--pool-scale"):
        pair_wise_loss(randn(1, 2, 4, 4), randn(1, 2, 4, 4), pool_scale=bad)


def test_pair_wise_rejects_mismatched_maps_and_unknown_options():
    with pytest.raises(ValueError, match="same B, H and W"):
        pair_wise_loss(randn(1, 2, 4, 4), randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match="impl"):
        pair_wise_loss(randn(1, 2, 4, 4), randn(1, 2, 4, 4), impl="fast")
    with pytest.raises(ValueError, match="pool"):
        pair_wise_loss(randn(1, 2, 4, 4), randn(1, 2, 4, 4), pool="min")


def test_pair_wise_auto_uses_naive_for_few_nodes_and_gram_at_full_resolution():
    for device in ("cpu", "cuda"):
        assert choose_impl(9, 128, 512, torch.device(device)) == "naive"
        assert choose_impl(4096, 128, 512, torch.device(device)) == "gram"
        assert choose_impl(4096, 512, 512, torch.device(device)) == "gram"


def test_pair_wise_ext_without_the_extension_runs_its_pytorch_twin(monkeypatch):
    from skd import ext
    monkeypatch.setattr(ext, "load", lambda: None)  # as where the extension cannot be built
    student, teacher = randn(1, 3, 4, 4, seed=13), randn(1, 5, 4, 4, seed=14)
    assert ext.kernels_for(student, "auto", "affinity_distance") is None
    assert torch.allclose(pair_wise_loss(student, teacher, node_size=1, impl="ext"),
                          pair_wise_loss(student, teacher, node_size=1, impl="gram"), rtol=1e-6)


def test_pair_wise_ext_matches_reference():
    pytest.importorskip("skd.nn.affinity")
    teacher = randn(2, 6, 9, 7, seed=15)
    student = randn(2, 4, 9, 7, seed=16, dtype=torch.float64)
    ref_student = student.clone().requires_grad_(True)
    expected = reference_pair_wise(ref_student, teacher.double(), 2, 2)
    expected.backward()
    student32 = student.float().requires_grad_(True)
    loss = pair_wise_loss(student32, teacher, node_size=2, impl="ext")
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(student32.grad.double(), ref_student.grad, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------- holistic


def test_generator_loss_is_minus_mean_of_d_student():
    assert generator_loss(torch.tensor([1.0, 2.0, 6.0]).view(3, 1, 1, 1)).item() == pytest.approx(-3.0)


def test_discriminator_loss_wgan_and_hinge_on_known_numbers():
    d_teacher = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    d_student = torch.tensor([0.5, -1.5]).view(2, 1, 1, 1)
    assert discriminator_loss(d_teacher, d_student, "wgan-gp").item() == pytest.approx(-0.5 - 2.0)
    # teacher: relu(0) + relu(-2) = 0; student: relu(1.5) + relu(-0.5) = 1.5 -> mean 0.75
    assert discriminator_loss(d_teacher, d_student, "hinge").item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="kind"):
        discriminator_loss(d_teacher, d_student, "lsgan")


def test_gradient_penalty_of_linear_critic_is_closed_form():
    w = randn(2, 3, 4, 4, seed=17)[0:1]  # D(x) = <w, x>: gradient w for every sample and alpha
    real, fake = randn(3, 3, 4, 4, seed=18), randn(3, 3, 4, 4, seed=19)
    penalty = gradient_penalty(lambda x: (x * w).sum(dim=(1, 2, 3)), real, fake)
    assert penalty.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_uses_one_alpha_per_sample_on_the_interpolate():
    real, fake = randn(4, 2, 3, 3, seed=20), randn(4, 2, 3, 3, seed=21)
    # D(x) = ||x||^2 / 2 per sample: the gradient is the interpolate itself.
    penalty = gradient_penalty(
        lambda x: 0.5 * x.pow(2).sum(dim=(1, 2, 3)), real, fake, generator=torch.Generator().manual_seed(5)
    )
    alpha = torch.rand((4, 1, 1, 1), generator=torch.Generator().manual_seed(5))
    interp = alpha * real + (1 - alpha) * fake
    expected = ((interp.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_penalty_trains_the_critic_only():
    conv = torch.nn.Conv2d(2, 1, 3)
    real = randn(2, 2, 5, 5, seed=22).requires_grad_(True)
    fake = randn(2, 2, 5, 5, seed=23).requires_grad_(True)
    gradient_penalty(lambda x: torch.tanh(conv(x)).sum(dim=(1, 2, 3)), real, fake).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert real.grad is None and fake.grad is None


def test_gradient_penalty_gradcheck_through_a_tiny_conv_critic():
    real = randn(2, 2, 5, 5, seed=24, dtype=torch.float64)
    fake = randn(2, 2, 5, 5, seed=25, dtype=torch.float64)
    w1 = (0.5 * randn(3, 2, 3, 3, seed=26, dtype=torch.float64)).requires_grad_(True)
    w2 = (0.5 * randn(1, 3, 3, 3, seed=27, dtype=torch.float64)).requires_grad_(True)

    def penalty(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        def critic(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(torch.tanh(F.conv2d(x, w1)), w2)

        return gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(penalty, (w1, w2))


# ----------------------------------------------------------------------------- CWD


def test_cwd_hand_case_uniform_teacher():
    tau = 2.0
    teacher = torch.zeros(1, 1, 1, 2)  # spatial p_T = (1/2, 1/2)
    student = torch.tensor([0.0, 2 * math.log(3.0)]).view(1, 1, 1, 2)  # p_S = (1/4, 3/4) at tau 2
    expected = tau**2 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert channel_wise_loss(student, teacher, tau=tau).item() == pytest.approx(expected, rel=1e-6)


def test_cwd_of_1x1_maps_is_zero():
    assert channel_wise_loss(randn(2, 3, 1, 1, seed=1), randn(2, 3, 1, 1, seed=2)).item() == 0.0


def test_cwd_matches_loop_over_images_and_channels():
    student, teacher, tau = randn(2, 3, 3, 4, seed=3), randn(2, 3, 3, 4, seed=4), 3.0
    total = 0.0
    for b in range(2):
        for c in range(3):
            p_t = torch.softmax(teacher[b, c].flatten() / tau, 0)
            log_p_s = torch.log_softmax(student[b, c].flatten() / tau, 0)
            total += (p_t * (p_t.log() - log_p_s)).sum().item()
    expected = total * tau**2 / (2 * 3)
    assert channel_wise_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-5)


def test_cwd_gradcheck():
    teacher = randn(2, 2, 2, 3, seed=5, dtype=torch.float64)
    student = randn(2, 2, 2, 3, seed=6, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: channel_wise_loss(s, teacher, tau=2.0), (student,))


def test_connector_is_torchdistillers_conv_norm_leaky_relu_then_relu():
    connector = Connector(4, 6)
    assert connector.conv.kernel_size == (1, 1) and connector.conv.bias is None
    assert isinstance(connector.norm, torch.nn.BatchNorm2d)
    assert (connector.norm.activation, connector.norm.slope) == ("leaky_relu", 0.01)
    x = randn(2, 4, 3, 5)
    # Training mode: batch statistics over (B, H, W), written out here.
    z = F.conv2d(x, connector.conv.weight)
    mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (z - mean) / torch.sqrt(var + 1e-5)
    expected = torch.relu(F.leaky_relu(y, 0.01))
    assert torch.allclose(connector(x), expected, atol=1e-5)
    assert torch.equal(expected, torch.relu(y))  # relu after leaky ReLU is just relu


# ----------------------------------------------------------------------------- DIST


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    sa = math.sqrt(sum((x - ma) ** 2 for x in a))
    sb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (sa * sb + 1e-8)


def test_dist_matches_pearson_loops_over_pixels_and_classes():
    student, teacher, tau, beta, gamma = randn(2, 4, 2, 3, seed=7), randn(2, 4, 2, 3, seed=8), 2.0, 0.7, 1.3
    p_s = torch.softmax(student.double() / tau, 1).permute(0, 2, 3, 1).reshape(-1, 4).tolist()
    p_t = torch.softmax(teacher.double() / tau, 1).permute(0, 2, 3, 1).reshape(-1, 4).tolist()
    inter = 1 - sum(_pearson(a, b) for a, b in zip(p_s, p_t)) / len(p_s)
    columns_s, columns_t = list(zip(*p_s)), list(zip(*p_t))
    intra = 1 - sum(_pearson(list(a), list(b)) for a, b in zip(columns_s, columns_t)) / 4
    expected = tau**2 * (beta * inter + gamma * intra)
    assert dist_loss(student, teacher, beta, gamma, tau).item() == pytest.approx(expected, rel=1e-5)


def test_dist_of_swapped_two_class_distributions_is_two_per_term():
    # Student p = (a, 1-a), teacher (1-a, a): every Pearson correlation is -1.
    x = torch.tensor([0.5, -1.0, 2.0, 0.1]).view(1, 1, 2, 2)
    student = torch.cat([torch.zeros_like(x), x], dim=1)
    teacher = torch.cat([torch.zeros_like(x), -x], dim=1)
    assert dist_loss(student, teacher, beta=0.5, gamma=2.0).item() == pytest.approx(0.5 * 2 + 2.0 * 2, rel=1e-6)


def test_dist_of_identical_logits_is_zero():
    logits = randn(2, 5, 3, 3, seed=9)
    assert dist_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)


def test_dist_gradcheck():
    teacher = randn(2, 3, 2, 2, seed=10, dtype=torch.float64)
    student = randn(2, 3, 2, 2, seed=11, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: dist_loss(s, teacher, 1.0, 2.0, 1.5), (student,))


# ----------------------------------------------------------------------------- KD


def test_kd_hand_case_uniform_teacher_with_temperature():
    student = torch.tensor([0.0, 2 * math.log(3.0)]).view(1, 2, 1, 1)  # p_S = (1/4, 3/4) at t = 2
    teacher = torch.zeros(1, 2, 1, 1)
    expected = 4 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_averages_kl_over_pixels_and_batch():
    student, teacher, t = randn(2, 3, 2, 2, seed=12), randn(2, 3, 2, 2, seed=13), 4.0
    total = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                p_t = torch.softmax(teacher[b, :, i, j] / t, 0)
                total += (p_t * (p_t.log() - torch.log_softmax(student[b, :, i, j] / t, 0))).sum().item()
    assert kd_loss(student, teacher, t).item() == pytest.approx(total / 8 * t**2, rel=1e-5)
    assert kd_loss(student, student).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradcheck():
    teacher = randn(2, 3, 2, 2, seed=14, dtype=torch.float64)
    student = randn(2, 3, 2, 2, seed=15, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 3.0), (student,))


def test_pair_wise_gram_chunks_give_the_same_value_and_gradient(monkeypatch):
    from skd.losses import pair_wise

    teacher = randn(2, 5, 9, 9, seed=7, dtype=torch.float64)
    results = []
    for chunk_values in (None, 2 * 8 * 7):  # whole map; chunks of 7 nodes (81 = 11 x 7 + 4)
        if chunk_values is not None:
            monkeypatch.setitem(pair_wise._CHUNK_VALUES, "cpu", chunk_values)
            monkeypatch.setitem(pair_wise._ONE_CHUNK_VALUES, "cpu", 0)
            assert pair_wise._chunk_nodes(torch.device("cpu"), 2, 8, 81) == 7
        student = randn(2, 3, 9, 9, seed=8, dtype=torch.float64).requires_grad_(True)
        loss = pair_wise_loss(student, teacher, node_size=1, impl="gram")
        loss.backward()
        results.append((loss.detach(), student.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-13)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-12, atol=1e-16)


def test_pair_wise_gram_chunk_rule():
    from skd.losses.pair_wise import _chunk_nodes

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # The full-resolution benchmark: batch 8, N = 4096, Cs = Ct = 128 (2^23 values together):
    # chunks of 2^21 / (8 x 256) = 1024 nodes on the CPU, the whole map at once on CUDA.
    assert _chunk_nodes(cpu, 8, 256, 4096) == 1024
    assert _chunk_nodes(cuda, 8, 256, 4096) == 4096
    # Cs = Ct = 512: 2^25 values, chunks of 2^22 / (8 x 1024) = 512 nodes on CUDA.
    assert _chunk_nodes(cuda, 8, 1024, 4096) == 512
    assert _chunk_nodes(cpu, 8, 1024, 4096) == 256
    assert _chunk_nodes(cpu, 1, 4, 9) == 9  # small maps are one chunk
    assert _chunk_nodes(torch.device("meta"), 8, 256, 4096) == 4096  # other devices as CUDA
