"""Intra-class feature variation distillation (IFVD, Wang et al., ECCV 2020).

Matches the authors' `CriterionIFV`, YukangWang/IFVD utils/criterion.py lines 127-155 (the same
code is in irfanICMLL/TorchDistiller SemSeg-distill/utils/criterion.py lines 127-155, and in
winycg/CIRKD losses/ifvd.py lines 14-35), computed with one matrix product instead of the loop
over classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import autocast_off, check_same_grid, upcast

# The official `(mask * feat).sum / (mask.sum + 1e-6)` (criterion.py lines 144-145).
PROTOTYPE_EPS = 1e-6
# nn.CosineSimilarity's default eps (criterion.py line 148).
COSINE_EPS = 1e-8


def downsample_labels(label: Tensor, size: tuple[int, int]) -> Tensor:
    """`label` (B, H, W) integer class ids -> (B, h, w) by nearest-neighbour interpolation.

    As the official `nn.Upsample(size_f, mode='nearest')` on the float labels
    (criterion.py line 137): PyTorch's legacy "nearest", source row floor(i * H / h) (likewise
    for columns), so a 512x512 label on a 65x65 feature reads rows 0, 7, 15, ... The ignore
    value 255 is carried like any other id (exact in float32).
    """
    if tuple(label.shape[-2:]) == tuple(size):
        return label.long()
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()


def intra_class_similarity(feat: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """The IFV map: each pixel's cosine similarity to its image's prototype of its class.

        proto[b, k] = sum_{p: y[b,p]=k} x[b, :, p] / (#{p: y[b,p]=k} + 1e-6)
        m[b, p]     = cos(x[b, :, p], proto[b, y[b,p]])     if 0 <= y[b,p] < num_classes
                    = cos(x[b, :, p], x[b, :, p])           otherwise (1, or 0 for a zero vector)

    with cos(u, v) = u.v / (max(||u||, 1e-8) max(||v||, 1e-8)). `feat` (B, C, h, w), `label`
    (B, h, w) already at the feature size. Prototypes are per image and keep their gradient
    (the official code does not detach them). A label outside [0, num_classes) (the ignore
    value 255 among them) keeps the pixel's own feature as its "prototype", as the official
    loop over range(num_classes) leaves it. Returns (B, h, w).
    """
    b, c, h, w = feat.shape
    x = feat.flatten(2)  # (B, C, P)
    y = label.reshape(b, h * w)
    labelled = (y >= 0) & (y < num_classes)
    bins = torch.where(labelled, y, num_classes)  # the unlabelled pixels go to one extra bin
    one_hot = F.one_hot(bins, num_classes + 1).to(x.dtype)  # (B, P, K + 1)
    sums = torch.bmm(x, one_hot)  # (B, C, K + 1)
    counts = one_hot.sum(dim=1, keepdim=True)  # (B, 1, K + 1)
    prototypes = sums / (counts + PROTOTYPE_EPS)
    centre = prototypes.gather(2, bins[:, None, :].expand(b, c, h * w))  # (B, C, P)
    centre = torch.where(labelled[:, None, :], centre, x)
    return F.cosine_similarity(x, centre, dim=1, eps=COSINE_EPS).view(b, h, w)


def ifvd_loss(student_feat: Tensor, teacher_feat: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """IFVD: mean squared difference of the student's and the teacher's IFV maps.

        y    = `downsample_labels`(label, (h, w))                (nearest, from (H, W))
        loss = 1 / (B * h * w) * sum_{b,p} (m^S[b, p] - m^T[b, p])^2,  m = `intra_class_similarity`

    `student_feat` (B, Cs, h, w), `teacher_feat` (B, Ct, h, w): features of the same grid (the
    official code reads the PSP bottleneck output, `PSPNetOutput.feat`); channel counts may
    differ (each network's map is computed in its own feature space). `label` (B, H, W) integer
    class ids with 255 (or any id outside [0, num_classes)) ignored; `num_classes` K >= 1.

    Reduction: nn.MSELoss() (criterion.py lines 153-154), a mean over EVERY pixel of the
    feature grid: an ignored pixel's two similarities are both 1 (0 - 0 unless one network's
    feature there is the zero vector), so it adds nothing to the sum but counts in B*h*w.
    Prototypes are per image, so the value is a batch mean and exact under DDP gradient
    averaging (equal per-rank batches). The teacher is detached (the official
    `feat_T.detach()` on line 135 is a no-op; its teacher runs under no_grad). Autocast is off
    inside; half/bfloat16 features are computed in float32 (float64 stays float64).
    Returns a scalar.

    The official weight is lambda_ifv = 200 (YukangWang/IFVD options.py line 102, beside
    lambda_kd 10 and adversarial 0.001); CIRKD's script uses 20 (scripts/train_kd/train_ifvd.sh).
    """
    check_same_grid(student_feat, teacher_feat, "ifvd_loss")
    if num_classes < 1:
        raise ValueError(f"ifvd_loss: num_classes={num_classes} must be >= 1")
    if label.dim() != 3 or label.shape[0] != student_feat.shape[0]:
        raise ValueError(
            f"ifvd_loss: label {tuple(label.shape)} must be (B, H, W) with the features' "
            f"B = {student_feat.shape[0]}"
        )
    if label.dtype.is_floating_point or label.dtype == torch.bool:
        raise ValueError(f"ifvd_loss: label dtype {label.dtype} must be an integer type (class ids)")
    with autocast_off(student_feat):
        y = downsample_labels(label, tuple(student_feat.shape[2:]))
        m_s = intra_class_similarity(upcast(student_feat), y, num_classes)
        m_t = intra_class_similarity(upcast(teacher_feat.detach()), y, num_classes)
        return (m_s - m_t).square().mean()
