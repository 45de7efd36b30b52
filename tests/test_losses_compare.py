"""The CWD paper's comparison losses (attention transfer, local affinity, IFVD, FitNet) against
hand-derived values and references written here from each method's paper and official code."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from skd.losses.attention import attention_map, attention_transfer_loss
from skd.losses.fitnet import FitNetConnector, fitnet_loss
from skd.losses.ifvd import downsample_labels, ifvd_loss, intra_class_similarity
from skd.losses.local_affinity import local_affinity_loss


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(b: int, h: int, w: int, num_classes: int, seed: int, ignored: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (b, h, w), generator=g)
    return y.masked_fill(torch.rand((b, h, w), generator=g) < ignored, 255)


def value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.item(), grad


# ----------------------------------------------------------------------------- attention transfer


def reference_at_paper(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: Q = vec(sum_c |A_c|^2), Q / ||Q||_2, squared difference averaged
    over positions and images (the code's reduction), written with loops over images."""
    terms = []
    for b in range(student.shape[0]):
        q_s = student[b].abs().pow(2).sum(dim=0).flatten()
        q_t = teacher[b].detach().abs().pow(2).sum(dim=0).flatten()
        q_s = q_s / q_s.pow(2).sum().sqrt()
        q_t = q_t / q_t.pow(2).sum().sqrt()
        terms.append((q_s - q_t).pow(2))
    return torch.cat(terms).mean()


def reference_at_code(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The authors' utils.py: at(x) = normalize(x.pow(2).mean(1).view(B, -1)); mean of squares."""

    def at(x: torch.Tensor) -> torch.Tensor:
        q = x.pow(2).mean(1).view(x.size(0), -1)
        return q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return (at(student) - at(teacher.detach())).pow(2).mean()


def test_at_hand_case():
    # student channels [1, 0] and [1, 2]: mean of squares (1, 2) -> (1, 2) / sqrt(5);
    # teacher [2, 0]: (4, 0) -> (1, 0). Squared differences (1 - 1/sqrt5)^2 + 4/5 over 2 positions.
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    teacher = torch.tensor([[[[2.0, 0.0]]]])
    expected = ((1 - 1 / math.sqrt(5)) ** 2 + 4 / 5) / 2
    assert attention_transfer_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1 - 1 / math.sqrt(5))


def test_at_matches_paper_and_code_references_in_value_and_gradient():
    # Different channel counts (only the H x W maps are compared); the paper's channel sum and
    # the code's channel mean give the same normalised map.
    student, teacher = randn(2, 3, 4, 5, seed=1, dtype=torch.float64), randn(2, 6, 4, 5, seed=2, dtype=torch.float64)
    value, grad = value_and_grad(lambda s: attention_transfer_loss(s, teacher), student)
    for reference in (reference_at_paper, reference_at_code):
        ref_value, ref_grad = value_and_grad(lambda s: reference(s, teacher), student)
        assert value == pytest.approx(ref_value, rel=1e-12)
        assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_attention_map_is_unit_norm_and_zero_for_a_zero_map():
    maps = attention_map(randn(3, 4, 5, 6, seed=3))
    assert maps.shape == (3, 30)
    assert torch.allclose(maps.norm(dim=1), torch.ones(3))
    # An all-zero map stays 0 (F.normalize's floor), so the loss is the teacher map's mean square.
    teacher = randn(1, 2, 3, 3, seed=4)
    loss = attention_transfer_loss(torch.zeros(1, 5, 3, 3), teacher)
    assert loss.item() == pytest.approx(1 / 9, rel=1e-6)


def test_at_gradcheck():
    teacher = randn(2, 4, 3, 3, seed=5, dtype=torch.float64)
    student = randn(2, 2, 3, 3, seed=6, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: attention_transfer_loss(s, teacher), (student,))


# ----------------------------------------------------------------------------- local affinity


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def reference_local(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Every position, every one of its 8 neighbours that lies inside the map: the Euclidean
    distance in each network, squared difference, mean over all such (image, position,
    neighbour) triples."""
    b, _, h, w = student.shape
    teacher = teacher.detach()
    terms = []
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for dy, dx in NEIGHBOURS:
                    k, m = i + dy, j + dx
                    if 0 <= k < h and 0 <= m < w:
                        d_s = (student[n, :, i, j] - student[n, :, k, m]).pow(2).sum().sqrt()
                        d_t = (teacher[n, :, i, j] - teacher[n, :, k, m]).pow(2).sum().sqrt()
                        terms.append((d_s - d_t) ** 2)
    return torch.stack(terms).mean()


def test_local_hand_case_two_pixels():
    # Distances 3 (student) and 1 (teacher) for the pair, counted from both ends: (3 - 1)^2.
    student = torch.tensor([[[[0.0, 3.0]]]])
    teacher = torch.tensor([[[[0.0, 1.0]]]])
    assert local_affinity_loss(student, teacher).item() == pytest.approx(4.0)


def test_local_hand_case_2x2_against_a_flat_teacher():
    # Pairs of [[0, 1], [2, 3]]: right 1, 1; down 2, 2; diagonals 3 and 1. The flat teacher
    # has all distances 0: mean of (1 + 1 + 4 + 4 + 9 + 1) over the 6 pairs = 10/3.
    student = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert local_affinity_loss(student, torch.zeros(1, 4, 2, 2)).item() == pytest.approx(10 / 3, rel=1e-6)


@pytest.mark.parametrize("h,w", [(4, 5), (1, 4), (3, 1), (2, 2)])
def test_local_matches_eight_neighbour_reference_in_value_and_gradient(h, w):
    teacher = randn(2, 5, h, w, seed=7, dtype=torch.float64)
    student = randn(2, 3, h, w, seed=8, dtype=torch.float64)
    value, grad = value_and_grad(lambda s: local_affinity_loss(s, teacher), student)
    ref_value, ref_grad = value_and_grad(lambda s: reference_local(s, teacher), student)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_local_of_a_1x1_map_is_zero_with_a_zero_gradient():
    student = randn(2, 3, 1, 1, seed=9).requires_grad_(True)
    loss = local_affinity_loss(student, randn(2, 4, 1, 1, seed=10))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(student.grad == 0)


def test_local_gradient_is_finite_where_neighbours_coincide():
    # A flat student map: every distance is 0, where sqrt has no derivative; the norm's
    # subgradient 0 is used, so the gradient is finite (here exactly 0).
    student = torch.ones(1, 3, 3, 3, requires_grad=True)
    local_affinity_loss(student, randn(1, 2, 3, 3, seed=11)).backward()
    assert torch.isfinite(student.grad).all() and torch.all(student.grad == 0)


def test_local_gradcheck():
    teacher = randn(2, 4, 3, 4, seed=12, dtype=torch.float64)
    student = randn(2, 2, 3, 4, seed=13, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: local_affinity_loss(s, teacher), (student,))


# ----------------------------------------------------------------------------- IFVD


def nearest_rows(src: int, dst: int) -> list[int]:
    """PyTorch's legacy nearest interpolation: output index i reads input floor(i * src / dst)."""
    return [(i * src) // dst for i in range(dst)]


def reference_ifv_map(feat: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The official CriterionIFV for one network, with loops: per image and class the masked mean
    sum / (count + 1e-6); each pixel's cosine to its class prototype (its own feature when the
    label is not a class); cos(u, v) = u.v / (max(|u|, 1e-8) max(|v|, 1e-8))."""
    b, _, h, w = feat.shape
    rows = []
    for n in range(b):
        prototypes = {}
        for k in range(num_classes):
            mask = (label[n] == k).to(feat.dtype)
            prototypes[k] = (feat[n] * mask).sum(dim=(1, 2)) / (mask.sum() + 1e-6)
        sims = []
        for i in range(h):
            for j in range(w):
                u = feat[n, :, i, j]
                k = int(label[n, i, j])
                v = prototypes[k] if 0 <= k < num_classes else u
                norm_u = torch.clamp(u.pow(2).sum().sqrt(), min=1e-8)
                norm_v = torch.clamp(v.pow(2).sum().sqrt(), min=1e-8)
                sims.append((u * v).sum() / (norm_u * norm_v))
        rows.append(torch.stack(sims).view(h, w))
    return torch.stack(rows)


def reference_ifvd(student: torch.Tensor, teacher: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    h, w = student.shape[2:]
    rows, cols = nearest_rows(label.shape[1], h), nearest_rows(label.shape[2], w)
    small = label[:, rows][:, :, cols]
    m_s = reference_ifv_map(student, small, num_classes)
    m_t = reference_ifv_map(teacher.detach(), small, num_classes)
    return ((m_s - m_t) ** 2).mean()  # nn.MSELoss(): every pixel of the grid


def test_ifvd_hand_case():
    # Student class-0 pixels (1, 0) and (0, 1): prototype along (1, 1), cos = 1/sqrt2 each. The
    # teacher's class-0 pixels (1, 0) and (1, 0): cos 1. The ignored pixel: cos 1 in both, so
    # it adds 0 but counts: 2 (1 - 1/sqrt2)^2 over 3 pixels.
    student = torch.tensor([[[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0, 5.0]], [[0.0, 0.0, -2.0]]]])
    label = torch.tensor([[[0, 0, 255]]])
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert ifvd_loss(student, teacher, label, num_classes=19).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("src,dst", [((8, 10), (4, 5)), ((5, 7), (2, 3)), ((512, 512), (65, 65)), ((4, 4), (4, 4))])
def test_ifvd_labels_are_downsampled_nearest_as_the_official_upsample(src, dst):
    label = torch.randint(0, 256, (2, *src), generator=torch.Generator().manual_seed(14))
    rows, cols = nearest_rows(src[0], dst[0]), nearest_rows(src[1], dst[1])
    small = downsample_labels(label, dst)
    assert small.dtype == torch.int64
    assert torch.equal(small, label[:, rows][:, :, cols])
    if src == (512, 512):
        assert rows[:4] == [0, 7, 15, 23]


@pytest.mark.parametrize("label_size", [(4, 5), (8, 10), (9, 11)])
def test_ifvd_matches_official_reference_in_value_and_gradient(label_size):
    # Two images, 4 classes, some absent from an image, 255s, a label larger than the grid.
    student = randn(2, 3, 4, 5, seed=15, dtype=torch.float64)
    teacher = randn(2, 6, 4, 5, seed=16, dtype=torch.float64)
    label = labels(2, *label_size, num_classes=4, seed=17)
    label[1][label[1] == 2] = 255  # class 2 absent from the second image
    value, grad = value_and_grad(lambda s: ifvd_loss(s, teacher, label, 4), student)
    ref_value, ref_grad = value_and_grad(lambda s: reference_ifvd(s, teacher, label, 4), student)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_ifvd_prototypes_carry_gradient_as_in_the_official_code():
    # With the prototypes detached the value is the same and the gradient another.
    student = randn(1, 3, 3, 4, seed=18, dtype=torch.float64)
    teacher = randn(1, 5, 3, 4, seed=19, dtype=torch.float64)
    label = labels(1, 3, 4, num_classes=2, seed=20, ignored=0.0)

    def detached_prototypes(s: torch.Tensor) -> torch.Tensor:
        protos = [(s[0][:, label[0] == k]).detach().sum(dim=1) / ((label[0] == k).sum() + 1e-6) for k in range(2)]
        centre = torch.stack([protos[int(k)] for k in label[0].flatten()], dim=1).view_as(s[0])
        m_s = F.cosine_similarity(s[0], centre, dim=0)
        return ((m_s - intra_class_similarity(teacher, label, 2)[0]) ** 2).mean()

    value, grad = value_and_grad(lambda s: ifvd_loss(s, teacher, label, 2), student)
    det_value, det_grad = value_and_grad(detached_prototypes, student)
    assert value == pytest.approx(det_value, rel=1e-12)
    assert not torch.allclose(grad, det_grad, rtol=1e-3)


def test_ifvd_is_a_mean_over_every_pixel_and_per_image():
    student, teacher = randn(2, 3, 3, 3, seed=21), randn(2, 5, 3, 3, seed=22)
    label = labels(2, 3, 3, num_classes=3, seed=23, ignored=0.0)
    # Per-image prototypes: the batch value is the mean of the two single-image values.
    full = ifvd_loss(student, teacher, label, 3)
    singles = [ifvd_loss(student[i : i + 1], teacher[i : i + 1], label[i : i + 1], 3) for i in range(2)]
    assert full.item() == pytest.approx((singles[0] + singles[1]).item() / 2, rel=1e-5)
    # An ignored pixel drops out of the sum but not out of the count: the labelled pixels'
    # squared differences over all 2 * 3 * 3 = 18 pixels, not over the 17 labelled ones.
    ignored = label.clone()
    ignored[0, 0, 0] = 255
    labelled = ignored != 255
    m_s, m_t = intra_class_similarity(student, ignored, 3), intra_class_similarity(teacher, ignored, 3)
    expected = ((m_s - m_t)[labelled] ** 2).sum().item() / 18
    assert ifvd_loss(student, teacher, ignored, 3).item() == pytest.approx(expected, rel=1e-5)


def test_ifvd_treats_ids_outside_the_classes_like_255_and_all_ignored_as_zero():
    student, teacher = randn(1, 3, 2, 3, seed=24), randn(1, 4, 2, 3, seed=25)
    label = torch.tensor([[[0, 1, 255], [1, 3, 0]]])
    as_ignore = label.masked_fill(label == 3, 255)
    assert torch.equal(ifvd_loss(student, teacher, label, 3), ifvd_loss(student, teacher, as_ignore, 3))
    s = student.clone().requires_grad_(True)
    loss = ifvd_loss(s, teacher, torch.full((1, 2, 3), 255), 3)
    loss.backward()
    # cos(x, x) is 1 up to rounding in both networks
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and torch.isfinite(s.grad).all()


def test_ifvd_gradcheck():
    teacher = randn(2, 4, 3, 3, seed=26, dtype=torch.float64)
    student = randn(2, 3, 3, 3, seed=27, dtype=torch.float64).requires_grad_(True)
    label = labels(2, 6, 6, num_classes=3, seed=28)
    assert torch.autograd.gradcheck(lambda s: ifvd_loss(s, teacher, label, 3), (student,))


def test_ifvd_rejects_bad_labels_and_class_counts():
    s, t = randn(2, 3, 4, 4), randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"label \(2, 1, 4, 4\) must be \(B, H, W\)"):
        ifvd_loss(s, t, torch.zeros(2, 1, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="features' B = 2"):
        ifvd_loss(s, t, torch.zeros(3, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="integer type"):
        ifvd_loss(s, t, torch.zeros(2, 4, 4), 3)
    with pytest.raises(ValueError, match="num_classes=0"):
        ifvd_loss(s, t, torch.zeros(2, 4, 4, dtype=torch.long), 0)


# ----------------------------------------------------------------------------- FitNet


def test_fitnet_connector_is_a_bias_free_1x1_conv():
    connector = FitNetConnector(4, 6)
    assert connector.conv.kernel_size == (1, 1) and connector.conv.bias is None
    assert [name for name, _ in connector.named_parameters()] == ["conv.weight"]
    x = randn(2, 4, 3, 5, seed=29)
    expected = torch.einsum("oc,bchw->bohw", connector.conv.weight[:, :, 0, 0], x)
    assert torch.allclose(connector(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="in_channels=0"):
        FitNetConnector(0, 6)


def test_fitnet_hand_case():
    hint = torch.tensor([[[[1.0, 2.0]]]])
    assert fitnet_loss(hint, torch.zeros(1, 1, 1, 2)).item() == pytest.approx((1 + 4) / 2)


def test_fitnet_through_connector_matches_loop_reference_in_value_and_weight_gradient():
    feat_s, feat_t = randn(2, 3, 2, 3, seed=30, dtype=torch.float64), randn(2, 5, 2, 3, seed=31, dtype=torch.float64)
    connector = FitNetConnector(3, 5).double()
    loss = fitnet_loss(connector(feat_s), feat_t)
    loss.backward()
    weight = connector.conv.weight.detach()[:, :, 0, 0].clone().requires_grad_(True)
    total = 0.0
    for b in range(2):
        for o in range(5):
            for i in range(2):
                for j in range(3):
                    r = sum(weight[o, c] * feat_s[b, c, i, j] for c in range(3))
                    total = total + (r - feat_t[b, o, i, j]) ** 2
    expected = total / (2 * 5 * 2 * 3)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(connector.conv.weight.grad[:, :, 0, 0], weight.grad, rtol=1e-10)


def test_fitnet_gradcheck():
    teacher = randn(2, 3, 2, 2, seed=32, dtype=torch.float64)
    hint = randn(2, 3, 2, 2, seed=33, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: fitnet_loss(s, teacher), (hint,))


def test_fitnet_rejects_unconnected_channels():
    with pytest.raises(ValueError, match="fitnet_loss: student \\(1, 4, 3, 3\\) and teacher \\(1, 6, 3, 3\\)"):
        fitnet_loss(randn(1, 4, 3, 3), randn(1, 6, 3, 3))


# ----------------------------------------------------------------------------- all four


def call_at(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return attention_transfer_loss(s, t)


def call_local(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return local_affinity_loss(s, t)


def call_ifvd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ifvd_loss(s, t, labels(s.shape[0], 2 * s.shape[-2], 2 * s.shape[-1], 3, seed=34), 3)


def call_fitnet(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return fitnet_loss(s, t[:, : s.shape[1]])


LOSSES = {"at": call_at, "local": call_local, "ifvd": call_ifvd, "fitnet": call_fitnet}


@pytest.mark.parametrize("name", LOSSES)
def test_teacher_gets_no_gradient(name):
    student = randn(2, 3, 4, 4, seed=35).requires_grad_(True)
    teacher = randn(2, 5, 4, 4, seed=36).requires_grad_(True)
    LOSSES[name](student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(name, dtype):
    student, teacher = randn(2, 3, 4, 4, seed=37).to(dtype), randn(2, 5, 4, 4, seed=38).to(dtype)
    loss = LOSSES[name](student, teacher)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, LOSSES[name](student.float(), teacher.float()), rtol=1e-6, atol=1e-9)
    s = student.clone().requires_grad_(True)
    LOSSES[name](s, teacher).backward()
    assert s.grad.dtype == dtype


@pytest.mark.parametrize("name", LOSSES)
def test_autocast_does_not_lower_the_precision(name):
    student, teacher = randn(2, 3, 4, 4, seed=39), randn(2, 5, 4, 4, seed=40)
    expected = LOSSES[name](student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](student, teacher)
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", LOSSES)
def test_float64_stays_float64(name):
    student, teacher = randn(1, 3, 3, 3, seed=41, dtype=torch.float64), randn(1, 5, 3, 3, seed=42, dtype=torch.float64)
    assert LOSSES[name](student, teacher).dtype == torch.float64


@pytest.mark.parametrize(
    "name,function", [("at", "attention_transfer_loss"), ("local", "local_affinity_loss"), ("ifvd", "ifvd_loss")]
)
def test_maps_of_another_grid_are_rejected_with_the_fix(name, function):
    for student, teacher in [(randn(1, 3, 4, 4), randn(1, 5, 5, 4)), (randn(2, 3, 4, 4), randn(1, 5, 4, 4))]:
        with pytest.raises(ValueError, match=f"{function}: .*same B, H and W.*resize"):
            LOSSES[name](student, teacher)
    with pytest.raises(ValueError, match=f"{function}: student \\(3, 4, 4\\)"):
        LOSSES[name](randn(3, 4, 4), randn(3, 4, 4))
