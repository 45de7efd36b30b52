"""PSPNet as the SKD teacher and student are built: `pspnet`, `build_pspnet`, `PSPNet`.

The SKD networks are `SegmentationNet`s (skd.models.segnet) with head "psp" and variant "skd";
these names stay for the scripts that import them. `PSPModule` and `PSPNetOutput` live in
skd.models.heads and skd.models.segnet.
"""
from __future__ import annotations

from skd.models.heads import PYRAMID_SIZES, PSPModule
from skd.models.resnet import DEPTHS
from skd.models.segnet import PSPNetOutput, SegmentationNet, build_model

__all__ = ["ARCHS", "PSPModule", "PSPNet", "PSPNetOutput", "PYRAMID_SIZES", "build_pspnet", "pspnet"]

# The ResNet depths of SKD's PSPNet (build_model takes skd.models.segnet.ARCHS, MobileNetV2 too).
ARCHS = tuple(f"resnet{d}" for d in sorted(DEPTHS))


class PSPNet(SegmentationNet):
    """PSPNet on a dilated ResNet-`depth`, the SKD variant: (B, 3, H, W) mean-subtracted BGR
    image -> PSPNetOutput, with the official state-dict keys (`conv1.weight`, `layer1.0...`,
    `pspmodule...`, `head...`, `dsn...`)."""

    def __init__(
        self, depth: int = 18, num_classes: int = 19, width_mult: float = 1.0, norm: str = "bn", stem: str = "deep"
    ) -> None:
        super().__init__(arch=f"resnet{depth}", head="psp", variant="skd", num_classes=num_classes,
                         width_mult=width_mult, stem=stem, norm=norm)


def pspnet(
    depth: int = 18, num_classes: int = 19, width_mult: float = 1.0, norm: str = "bn", stem: str = "deep"
) -> PSPNet:
    """PSPNet on a dilated ResNet-`depth` (18, 34, 50 or 101), SKD variant."""
    return PSPNet(depth=depth, num_classes=num_classes, width_mult=width_mult, norm=norm, stem=stem)


def build_pspnet(
    arch: str, num_classes: int = 19, width_mult: float = 1.0, norm: str = "bn", stem: str | None = "deep"
) -> SegmentationNet:
    """SKD-variant PSPNet from the `--arch` name (`resnet18` ... `resnet101`, `mobilenetv2`);
    `build_model(arch=..., head="psp", variant="skd", ...)`."""
    if arch == "mobilenetv2" and stem == "deep":
        stem = None
    return build_model(arch=arch, head="psp", variant="skd", num_classes=num_classes, width_mult=width_mult,
                       norm=norm, stem=stem)
