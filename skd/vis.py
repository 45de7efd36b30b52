"""Visual panels of predictions: image | ground truth | prediction | errors [| teacher].

    panel = make_panel(raw_to_rgb(raw), pred, PALETTE, gt=label, teacher=teacher_pred, overlay=True)
    save_png("runs/vis/frankfurt_000000_000294.png", panel)

Columns, left to right, each of the image's size, 4 white pixels apart, under a strip naming
them: the image; the ground truth (when given) in the dataset's palette, ignored pixels black
(Cityscapes' void colour); the prediction in the palette, or blended over the image with
`overlay`; the errors (with a ground truth): correct pixels black, wrong ones red, ignored ones
grey; the teacher's prediction (when given), drawn as the prediction. Label ids outside the
palette (255 = ignore) get the ignore colour wherever they appear.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from skd.errors import SkdError

IGNORE_COLOR = (0, 0, 0)
CORRECT_COLOR = (0, 0, 0)
WRONG_COLOR = (255, 0, 0)
ERROR_IGNORE_COLOR = (128, 128, 128)
BACKGROUND = (255, 255, 255)
GAP = 4          # pixels between columns
STRIP = 22       # height of the label strip
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize(label, palette: np.ndarray, ignore_color: tuple[int, int, int] = IGNORE_COLOR) -> np.ndarray:
    """(H, W) integer class ids -> (H, W, 3) uint8 RGB: palette[id] for 0 <= id < len(palette),
    `ignore_color` for every other id (255 = ignore among them)."""
    label = _numpy(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"colorize: expected an (H, W) integer label map, got {label.dtype} {label.shape}")
    palette = np.asarray(palette, dtype=np.uint8)
    lut = np.vstack([palette, np.array([ignore_color], dtype=np.uint8)])
    index = np.where((label >= 0) & (label < len(palette)), label, len(palette))
    return lut[index]


def raw_to_rgb(raw) -> np.ndarray:
    """A raw image as the data loaders give it, (3, H, W) float BGR 0..255 (NaN where a
    training crop padded), or an (H, W, 3) BGR array as cv2.imread reads -> (H, W, 3) uint8 RGB.
    NaN becomes 0 (black), values are rounded and clipped to 0..255."""
    x = _numpy(raw).astype(np.float32)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[2] != 3:
        x = x.transpose(1, 2, 0)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"raw_to_rgb: expected (3, H, W) or (H, W, 3), got {x.shape}")
    x = np.nan_to_num(x, nan=0.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)[..., ::-1].copy()


def error_map(pred, gt, ignore_index: int = 255) -> np.ndarray:
    """(H, W) prediction and ground truth -> (H, W, 3) uint8 RGB: CORRECT_COLOR where they agree,
    WRONG_COLOR where they differ, ERROR_IGNORE_COLOR where the ground truth is `ignore_index`."""
    pred, gt = _numpy(pred), _numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"error_map: prediction {pred.shape} and ground truth {gt.shape} differ")
    out = np.empty(gt.shape + (3,), dtype=np.uint8)
    out[:] = CORRECT_COLOR
    out[pred != gt] = WRONG_COLOR
    out[gt == ignore_index] = ERROR_IGNORE_COLOR
    return out


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * color + (1 - alpha) * image, rounded: both (H, W, 3) uint8."""
    mixed = alpha * color.astype(np.float32) + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _strip(title: str, width: int) -> np.ndarray:
    """A white (STRIP, width, 3) strip with `title` in black, shrunk (then cut) to fit."""
    strip = np.full((STRIP, width, 3), BACKGROUND, dtype=np.uint8)
    scale = 0.5
    while scale > 0.3 and cv2.getTextSize(title, FONT, scale, 1)[0][0] > width - 4:
        scale -= 0.05
    while title and cv2.getTextSize(title, FONT, scale, 1)[0][0] > width - 4:
        title = title[:-1]
    (tw, th), _ = cv2.getTextSize(title, FONT, scale, 1)
    cv2.putText(strip, title, (max(2, (width - tw) // 2), (STRIP + th) // 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def make_panel(image: np.ndarray, pred, palette: np.ndarray, gt=None, teacher=None, *, overlay: bool = False,
               alpha: float = 0.5, ignore_index: int = 255, labels: bool = True,
               scale: float = 1.0) -> np.ndarray:
    """One panel, (STRIP + h, n * w + (n - 1) * GAP, 3) uint8 RGB, n the number of columns
    (see the module docstring); without `labels` no strip. `image` (H, W, 3) uint8 RGB,
    `pred`, `gt`, `teacher` (H, W) class ids; `palette` (K, 3) uint8 RGB (Cityscapes':
    skd.data.labels.PALETTE). `scale` resizes every column (area for the image, nearest for
    label maps) to (round(H * scale), round(W * scale)) = (h, w).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"make_panel: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    size = image.shape[:2]
    maps = {"prediction": pred, "ground truth": gt, "teacher": teacher}
    for name, m in maps.items():
        if m is not None and _numpy(m).shape != size:
            raise ValueError(f"make_panel: {name} is {_numpy(m).shape}, the image {size}")

    def drawn(label) -> np.ndarray:
        color = colorize(label, palette)
        return blend(image, color, alpha) if overlay else color

    columns = [("image", image)]
    if gt is not None:
        columns.append(("ground truth", colorize(gt, palette)))
    columns.append(("prediction overlay" if overlay else "prediction", drawn(pred)))
    if gt is not None:
        columns.append(("errors (red; grey: ignored)", error_map(pred, gt, ignore_index)))
    if teacher is not None:
        columns.append(("teacher overlay" if overlay else "teacher", drawn(teacher)))

    if scale != 1.0:
        h, w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        columns = [(title, cv2.resize(tile, (w, h), interpolation=cv2.INTER_AREA if i == 0 else cv2.INTER_NEAREST))
                   for i, (title, tile) in enumerate(columns)]
    h, w = columns[0][1].shape[:2]
    n = len(columns)
    top = STRIP if labels else 0
    panel = np.full((top + h, n * w + (n - 1) * GAP, 3), BACKGROUND, dtype=np.uint8)
    for i, (title, tile) in enumerate(columns):
        x = i * (w + GAP)
        panel[top:, x:x + w] = tile
        if labels:
            panel[:STRIP, x:x + w] = _strip(title, w)
    return panel


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB array as a PNG (parent folders made). SkdError naming the
    file when it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")
    except (OSError, ValueError) as e:
        raise SkdError(f"could not write {path}: {getattr(e, 'strerror', None) or e}") from None
    return path


def write_panel(path: str | os.PathLike, raw, pred, palette: np.ndarray, gt=None, teacher=None,
                **options) -> Path:
    """raw_to_rgb + make_panel + save_png: one call per image for skd-eval / skd-test --vis."""
    return save_png(path, make_panel(raw_to_rgb(raw), pred, palette, gt=gt, teacher=teacher, **options))
