"""Task loss of the student: cross-entropy on the main and auxiliary (DSN) logits, optional OHEM."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _upsample_to(logits: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _masked_mean_ce(logits: Tensor, label: Tensor, ignore_index: int) -> Tensor:
    # Sum / count rather than reduction="mean": an all-ignored crop gives 0 (with a graph) instead
    # of the NaN that 0/0 would put into the optimiser.
    total = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
    count = (label != ignore_index).sum().clamp(min=1)
    return total / count


def cross_entropy_2d(logits: Tensor, label: Tensor, ignore_index: int = 255, align_corners: bool = True) -> Tensor:
    """Mean cross-entropy over the labelled pixels, logits upsampled to the label.

    `logits`: (B, C, h, w), upsampled bilinearly to `label`'s (H, W) (align_corners=True is the
    original's; mmseg's networks use False);
    `label`: (B, H, W) integer class ids, `ignore_index` excluded. Returns a scalar:
    sum over labelled pixels of -log softmax(logits)[label] / number of labelled pixels
    (0 when no pixel is labelled).
    """
    logits = _upsample_to(logits, label.shape[-2:], align_corners)
    return _masked_mean_ce(logits, label.long(), ignore_index)


def ohem_cross_entropy_2d(
    logits: Tensor,
    label: Tensor,
    thresh: float = 0.7,
    min_kept: int = 100000,
    ignore_index: int = 255,
    align_corners: bool = True,
) -> Tensor:
    """Online hard example mining cross-entropy (the original `OhemCrossEntropy2d`).

    `logits` (B, C, h, w) are upsampled to `label` (B, H, W). With p the softmax probability of
    each labelled pixel's true class, the kept pixels are those with p <= threshold, where
    threshold = max(thresh, k-th smallest p) with k = min_kept (so at least min_kept pixels are
    kept, the hardest first), and every labelled pixel when min_kept >= the labelled count.
    Returns the mean cross-entropy over the kept pixels.

    The original estimated the k-th smallest p on a 1/8 zoom of the probabilities (with
    min_kept // 64) to save time in NumPy; here it is found exactly at full resolution on the
    device, so "at least min_kept" holds exactly. The mining itself carries no gradient.
    """
    if not 0.0 < thresh <= 1.0:
        raise ValueError(f"ohem_cross_entropy_2d: thresh={thresh} must be in (0, 1]")
    if min_kept < 0:
        raise ValueError(f"ohem_cross_entropy_2d: min_kept={min_kept} must be >= 0")
    logits = _upsample_to(logits, label.shape[-2:], align_corners)
    label = label.long()
    with torch.no_grad():
        valid = label != ignore_index
        prob = F.softmax(logits.detach().float(), dim=1)
        true_prob = prob.gather(1, label.where(valid, 0).unsqueeze(1)).squeeze(1)
        valid_prob = true_prob[valid]
        if min_kept >= valid_prob.numel():
            kept = valid
        else:
            threshold = torch.tensor(thresh, device=true_prob.device)
            if min_kept > 0:
                threshold = torch.maximum(threshold, torch.kthvalue(valid_prob, min_kept).values)
            kept = valid & (true_prob <= threshold)
        mined = label.where(kept, ignore_index)
    return _masked_mean_ce(logits, mined, ignore_index)


def task_loss(
    logits: Tensor,
    aux_logits: Tensor | None,
    label: Tensor,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
    ohem_thresh: float | None = None,
    ohem_min_kept: int = 100000,
    align_corners: bool = True,
) -> Tensor:
    """Student task loss: CE(logits) + aux_weight * CE(aux_logits).

    `logits`, `aux_logits`: (B, C, h, w) (the DSN head's `aux_logits` may be None: no aux term);
    `label`: (B, H, W). Both are upsampled bilinearly (`align_corners`, the network's convention:
    True for the original's) to the label size and
    averaged over labelled pixels (`cross_entropy_2d`). With `ohem_thresh` set, the main logits
    use `ohem_cross_entropy_2d(thresh=ohem_thresh, min_kept=ohem_min_kept)` and the aux logits
    stay plain cross-entropy, as in the original `CriterionOhemDSN`. Returns a scalar.
    """
    if ohem_thresh is None:
        loss = cross_entropy_2d(logits, label, ignore_index, align_corners)
    else:
        loss = ohem_cross_entropy_2d(logits, label, ohem_thresh, ohem_min_kept, ignore_index, align_corners)
    if aux_logits is not None:
        loss = loss + aux_weight * cross_entropy_2d(aux_logits, label, ignore_index, align_corners)
    return loss
