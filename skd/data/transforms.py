"""Joint image/label transforms: the original SKD training augmentation and the eval transform.

Called by the datasets on an OpenCV image and a train-id label. Both hand out RAW images
(float32 BGR 0..255): each network normalises its input itself (`net.input_spec`, see
skd.models.convention), so a teacher and a student with different conventions read the same
crop. Pixels the training crop pads are NaN; normalising turns them into 0, the value the
original pads with after subtracting its mean.

All randomness comes from torch's global generator: the DataLoader seeds it in every worker
from its own generator, so the data order and the augmentation of a resumed run are exactly
those of an uninterrupted one.
"""
import cv2
import numpy as np
import torch

from skd.data.labels import IGNORE_INDEX
from skd.errors import SkdError

# What a padded pixel of a training crop holds until a network normalises it (to 0).
PAD_VALUE = float("nan")


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high], both inclusive like Python's `random.randint`."""
    return int(torch.randint(low, high + 1, (1,)).item())


def _to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) float32 image and (H, W) label -> (3, H, W) float32 and (H, W) int64 tensors."""
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    label_t = torch.from_numpy(np.ascontiguousarray(label)).long()
    return image_t, label_t


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    """Both arrays must describe the same (H, W) grid."""
    if image.ndim != 3 or image.shape[2] != 3 or label.shape != image.shape[:2]:
        raise ValueError(
            f"expected image (H, W, 3) and label (H, W) of the same size, "
            f"got {image.shape} and {label.shape}"
        )


class TrainTransform:
    """Random scale, pad, random crop and random mirror.

    Order and draws are those of the original `CSDataSet` (SKD dataset/datasets.py, lines
    157-208): scale f = 0.7 + k/10 with k uniform in 0..14 (image bilinear, label nearest,
    `cv2.resize` with fx = fy = f); pad bottom/right to the crop (image: NaN here, 0 once
    normalised, as the original pads its mean-subtracted image with 0; label: 255); a random crop
    with both offsets inclusive; a horizontal flip with probability 1/2. The original subtracts
    its float32 mean here; skd does it in `InputSpec.normalize`, with the same float32
    arithmetic.

    Args:
        crop_size: (h, w) of the output.
        random_scale: draw f as above; off keeps f = 1 (and draws nothing).
        random_mirror: flip with probability 1/2; off never flips (and draws nothing).

    Call:
        image (H, W, 3) uint8 BGR, label (H, W) uint8 train ids ->
        image (3, h, w) float32 raw BGR (NaN where padded), label (h, w) int64.
    """

    def __init__(
        self,
        crop_size: tuple[int, int] = (512, 512),
        random_scale: bool = True,
        random_mirror: bool = True,
    ) -> None:
        crop_h, crop_w = (int(v) for v in crop_size)
        if crop_h < 1 or crop_w < 1:
            raise SkdError(f"--input-size {crop_h},{crop_w}: must be two positive integers (h, w)")
        self.crop_size = (crop_h, crop_w)
        self.random_scale = random_scale
        self.random_mirror = random_mirror

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label)
        if self.random_scale:
            # Same float expression as the original, so e.g. k = 1 gives 0.7999999999999999.
            f = 0.7 + _randint(0, 14) / 10.0
            image = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)

        crop_h, crop_w = self.crop_size
        img_h, img_w = label.shape
        # Offsets are drawn over the padded size, as in the original.
        h_off = _randint(0, max(img_h, crop_h) - crop_h)
        w_off = _randint(0, max(img_w, crop_w) - crop_w)

        # Padding is bottom/right only, so the real pixels of any crop form its top-left block;
        # copying that block into a pre-filled crop equals pad-then-crop without building the
        # padded (up to 2.1x scaled) float image.
        valid_h = min(img_h - h_off, crop_h)
        valid_w = min(img_w - w_off, crop_w)
        out_image = np.full((crop_h, crop_w, 3), PAD_VALUE, dtype=np.float32)
        out_label = np.full((crop_h, crop_w), IGNORE_INDEX, dtype=np.uint8)
        region = (slice(h_off, h_off + valid_h), slice(w_off, w_off + valid_w))
        out_image[:valid_h, :valid_w] = image[region]
        out_label[:valid_h, :valid_w] = label[region]

        if self.random_mirror and _randint(0, 1) == 1:
            out_image = out_image[:, ::-1]
            out_label = out_label[:, ::-1]
        return _to_tensors(out_image, out_label)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, random_scale={self.random_scale}, "
            f"random_mirror={self.random_mirror})"
        )


class EvalTransform:
    """The full image as it is (validation and test).

    Call:
        image (H, W, 3) uint8 BGR, label (H, W) uint8 train ids ->
        image (3, H, W) float32 raw BGR, label (H, W) int64.
    """

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label)
        return _to_tensors(image.astype(np.float32), label)

    def __repr__(self) -> str:
        return "EvalTransform()"
