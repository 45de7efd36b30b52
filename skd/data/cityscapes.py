"""Cityscapes on disk: find image/label pairs (folder scan or list file) and load them.

Read by the training, evaluation and prediction entry points. Two ways to name the images of a
run: scan the standard layout
    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
or read a list file in the original SKD format (`image<TAB>label` relative to the data dir), which
pins a run's exact image set; `write_list` produces one from any item list.
"""
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from skd.data.base import SegmentationDataset, Transform
from skd.data.files import (
    MAX_PIXELS,
    MAX_REPORTED,
    DataFileError,
    Item,
    cv2_read,
    read_image,
    read_pair_list,
    write_pair_list,
)
from skd.data.info import DatasetInfo, Recipe, write_png
from skd.data.labels import (
    CLASS_NAMES,
    LABEL_ID_COLORS,
    LABEL_ID_TO_TRAIN_ID,
    MAX_LABEL_ID,
    PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    colorize,
    to_label_ids,
    to_train_ids,
)
from skd.errors import SkdError

__all__ = [
    "CITYSCAPES", "MAX_PIXELS", "MAX_REPORTED", "CityscapesDataset", "DataFileError", "Item",
    "Transform", "read_image", "read_label_ids", "read_list", "sample_name", "scan_split",
    "write_cityscapes_prediction", "write_list",
]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _check_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise SkdError(
            f"--data-dir {data_dir}: no such folder; expected the Cityscapes root holding "
            f"leftImg8bit/ and gtFine/"
        )


def scan_split(data_dir: str | Path, split: str) -> list[Item]:
    """Pair every `*_leftImg8bit.png` of a split with its `*_gtFine_labelIds.png`.

    Args:
        data_dir: the Cityscapes root (holds `leftImg8bit/` and `gtFine/`).
        split: "train", "val" or "test" (any folder name under `leftImg8bit/`).
    Returns:
        (image, label) paths sorted by city and file name; label is None where the gtFine file
        does not exist (e.g. a test split downloaded without gtFine).
    """
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    image_root = data_dir / "leftImg8bit" / split
    if not image_root.is_dir():
        raise SkdError(
            f"--data-dir {data_dir}: no leftImg8bit/{split} folder; expected the Cityscapes "
            f"layout leftImg8bit/{split}/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX}"
        )
    images = sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise SkdError(
            f"--data-dir {data_dir}: leftImg8bit/{split} holds no <city>/*{IMAGE_SUFFIX} "
            f"images; expected the Cityscapes layout"
        )
    label_root = data_dir / "gtFine" / split
    items: list[Item] = []
    for image in images:
        base = image.name[: -len(IMAGE_SUFFIX)]
        label = label_root / image.parent.name / f"{base}{LABEL_SUFFIX}"
        items.append((image, label if label.is_file() else None))
    return items


def read_list(data_dir: str | Path, list_path: str | Path) -> list[Item]:
    """Read a list file of the original SKD format.

    Each non-empty line is `image<TAB>label`, `image label` (whitespace-separated) or `image`
    alone (test split), with paths relative to `data_dir`; lines starting with '#' are comments.

    Returns:
        (data_dir / image, data_dir / label or None) in file order.
    Raises:
        SkdError naming the list file: unreadable, a malformed line, or listed files that do not
        exist (all of them, up to 20, in one message).
    """
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    return read_pair_list(data_dir, Path(list_path))


def write_list(items: Sequence[Item], data_dir: str | Path, path: str | Path) -> Path:
    """Write items as a list file that `read_list(data_dir, path)` reads back unchanged.

    Paths are written relative to `data_dir` (absolute where a file lies outside it), POSIX
    separators, `image<TAB>label` or `image` alone when the label is None.
    """
    return write_pair_list(items, Path(data_dir), Path(path))


def sample_name(image_path: Path) -> str:
    """Sample name `{city}/{stem}`: the image's folder and file name without `_leftImg8bit.png`."""
    name = image_path.name
    stem = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else image_path.stem
    return f"{image_path.parent.name}/{stem}"


def read_label_ids(path: Path) -> np.ndarray:
    """(H, W) uint8 labelIds; SkdError naming the file if unreadable, larger than MAX_PIXELS,
    not 8-bit single channel, or holding values that are not Cityscapes labelIds (0..33)."""
    label = cv2_read(path, cv2.IMREAD_UNCHANGED, "a label image")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DataFileError(
            f"{path}: label has shape {label.shape} and dtype {label.dtype}; expected an 8-bit "
            f"single-channel *{LABEL_SUFFIX} (not *_color.png or *_labelTrainIds.png)"
        )
    if label.max() > MAX_LABEL_ID:
        bad = np.unique(label[label > MAX_LABEL_ID])
        raise DataFileError(
            f"{path}: label values {bad[:10].tolist()} are not Cityscapes labelIds (0..33); "
            f"use the *{LABEL_SUFFIX} files, not train ids or colours"
        )
    return label


def write_cityscapes_prediction(info: DatasetInfo, out_dir: Path, name: str,
                                train_ids: np.ndarray) -> list[Path]:
    """The benchmark's submission format for sample `{city}/{stem}`:
    `<out>/labelIds/{city}/{stem}_labelIds.png` (train ids mapped back to labelIds, what the
    server and cityscapesScripts' evaluator read; point CITYSCAPES_RESULTS at `<out>/labelIds`)
    and `<out>/color/{city}/{stem}_color.png` (the train-id palette, for looking at)."""
    info.encode(train_ids)  # range check: a value that is no train id is an error, not black
    return [write_png(out_dir / "labelIds" / f"{name}_labelIds.png", to_label_ids(train_ids)),
            write_png(out_dir / "color" / f"{name}_color.png", colorize(train_ids))]


def _decode_table() -> np.ndarray:
    table = LABEL_ID_TO_TRAIN_ID.astype(np.int16)
    table[MAX_LABEL_ID + 1:] = -1
    return table


CITYSCAPES = DatasetInfo(
    name="cityscapes",
    title="Cityscapes",
    class_names=CLASS_NAMES,
    palette=PALETTE.copy(),
    splits={"train": True, "val": True, "test": False},
    train_split="train",
    val_split="val",
    test_split="test",
    decode_table=_decode_table(),
    encode_table=TRAIN_ID_TO_LABEL_ID.copy(),
    file_palette=LABEL_ID_COLORS.copy(),
    mask_encoding="gtFine labelIds 0..33, 19 of them evaluated (cityscapesScripts)",
    writer=write_cityscapes_prediction,
    recipe=Recipe(
        crop=(512, 512), batch_size=8, num_steps=40000, lr=0.01,
        source="SKD (Liu et al., CVPR 2019 / TPAMI): the original run_train_val.sh of "
               "irfanICMLL/structure_knowledge_distillation, networks/evaluate.py lines 23-28 (docs/reproduction.md)"),
    sources={
        "classes, palette, labelIds -> train ids":
            "mcordts/cityscapesScripts, cityscapesscripts/helpers/labels.py (lines 62-98)",
    },
)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes images and train-id labels.

    Args:
        data_dir: the Cityscapes root.
        split: folder under `leftImg8bit/` to scan when no list is given.
        list_path: a list file (see `read_list`); overrides the scan.
        transform: joint transform (image (H, W, 3) uint8 BGR, label (H, W) uint8 train ids)
            -> tensors; default `EvalTransform()`.
        has_labels: False for the test split: labels are not read and come back all 255.

    Items:
        image (3, H, W) float32, label (H, W) int64 train ids (255 = ignore), name
        "{city}/{stem}" (e.g. "aachen/aachen_000000_000019").
    """

    name = "cityscapes"
    INFO = CITYSCAPES
    label_modes = ("L",)
    label_mode_words = "8-bit single channel"
    missing_label_fix = ("add the gtFine labelIds files, or use the split without labels "
                         "(test)")

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        list_path: str | Path | None = None,
        transform: Transform | None = None,
        has_labels: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.info = CITYSCAPES
        if list_path is not None:
            items = read_list(self.data_dir, list_path)
            source = f"list file {list_path}"
        else:
            items = scan_split(self.data_dir, split)
            source = f"--data-dir {self.data_dir} split {split}"
        self._finish(items, source, transform, has_labels)

    def sample_name(self, image_path: Path) -> str:
        return sample_name(image_path)

    def load_label(self, label_path: Path) -> np.ndarray:
        return to_train_ids(read_label_ids(label_path))
