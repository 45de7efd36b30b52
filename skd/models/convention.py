"""What a network expects of its input and how its logits are brought to the image size.

Every network carries an `InputSpec` (`net.input_spec`). The data pipeline hands out raw images
(float32 BGR in 0..255, as OpenCV reads them), and `InputSpec.normalize` turns such a batch into
the input of one network, so a teacher and a student with different conventions read the same
crop in one step. Padded pixels of a training crop arrive as NaN and come out as 0: both the
original SKD code and mmsegmentation pad after normalising, with 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from skd.data.labels import IMG_MEAN

CHANNEL_ORDERS = ("bgr", "rgb")


@dataclass(frozen=True)
class InputSpec:
    """channel_order: "bgr" or "rgb"; mean and std per channel, in that order; align_corners:
    how the network's logits are upsampled to a label or image (bilinear)."""

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align_corners: bool

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"InputSpec: channel_order {self.channel_order!r}; expected one of {CHANNEL_ORDERS}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"InputSpec: mean {self.mean} and std {self.std} need 3 values, std positive")

    def normalize(self, raw: Tensor) -> Tensor:
        """(B, 3, H, W) float raw BGR 0..255, NaN where padded -> (B, 3, H, W) network input.

        (x - mean) / std in the input's dtype, channels reordered first for "rgb". With a std of
        ones no division is done, so the SKD convention is exactly the original's float32
        `image -= IMG_MEAN`.
        """
        if raw.dim() != 4 or raw.shape[1] != 3:
            raise ValueError(f"InputSpec.normalize: expected (B, 3, H, W) raw images, got {tuple(raw.shape)}")
        x = raw.flip(1) if self.channel_order == "rgb" else raw
        x = x - torch.tensor(self.mean, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        if any(s != 1.0 for s in self.std):
            x = x / torch.tensor(self.std, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        # NaN (padding) only: an infinite input stays infinite, so the step reports it.
        return torch.nan_to_num(x, nan=0.0, posinf=float("inf"), neginf=float("-inf"))

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of `normalize` (padding aside): network input -> raw BGR 0..255, for pictures."""
        x = x * torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = x + torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.flip(1) if self.channel_order == "rgb" else x


# The original SKD networks: BGR minus the Caffe ImageNet mean, no std; align_corners=True.
SKD_INPUT = InputSpec("bgr", tuple(float(v) for v in IMG_MEAN), (1.0, 1.0, 1.0), True)
# mmsegmentation's Cityscapes configs: RGB, ImageNet mean and std in 0..255; align_corners=False.
MMSEG_INPUT = InputSpec("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)
