"""Parameter and FLOP counts of a network (docs/models.md, scripts/count_models.py)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements of `module` (only those with requires_grad by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, size: tuple[int, int] = (512, 1024), batch: int = 1) -> int:
    """FLOPs of one eval-mode forward of `model` on a (batch, 3, *size) input, as
    `torch.utils.flop_counter.FlopCounterMode` counts them: 2 per multiply-accumulate of the
    convolutions and matrix products (norms, activations, pooling and interpolation are not
    counted). The input lives on the model's device; a model built on the "meta" device
    costs no compute. Many papers' "FLOPs" are multiply-accumulates: half this number."""
    param = next(model.parameters())
    x = torch.zeros(batch, 3, *size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
