"""Networks of SKD: PSPNet (teacher and student), the discriminator, and weight loading."""
from torch import nn

from skd.models.checkpoint import convert_official_state_dict, load_backbone, load_official, load_weights
from skd.models.discriminator import Discriminator
from skd.models.pspnet import ARCHS, PSPNet, PSPNetOutput, build_pspnet, pspnet


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements of `module` (only those with requires_grad by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ARCHS",
    "Discriminator",
    "PSPNet",
    "PSPNetOutput",
    "build_pspnet",
    "convert_official_state_dict",
    "count_parameters",
    "load_backbone",
    "load_official",
    "load_weights",
    "pspnet",
]
