"""Cityscapes on disk: find image/label pairs (folder scan or list file) and load them.

Read by the training, evaluation and prediction entry points. Two ways to name the images of a
run: scan the standard layout
    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
or read a list file in the original SKD format (`image<TAB>label` relative to the data dir), which
pins a run's exact image set; `write_list` produces one from any item list.
"""
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from skd.data.labels import IGNORE_INDEX, MAX_LABEL_ID, to_train_ids
from skd.data.transforms import EvalTransform
from skd.errors import SkdError

logger = logging.getLogger(__name__)

Item = tuple[Path, Path | None]
Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# Long problem lists are cut here so the one-line message stays readable.
MAX_REPORTED = 20
# Largest image the loader decodes: 64 Mpixel, 32 Cityscapes frames. A header that claims more is
# refused before any pixel is decoded: a PNG of zeros compresses about 1000:1, so a few hundred
# kilobytes of corrupt or hostile file would otherwise cost gigabytes (BGR, then float32).
MAX_PIXELS = 1 << 26


class DataFileError(SkdError):
    """SkdError for a data file that fails while a sample is loaded.

    A DataLoader worker re-raises an exception in the main process as
    `type(exc)("Caught <type> in DataLoader worker process N.\\nOriginal Traceback ...")`, which
    would put a worker traceback into the entry points' one-line message; built that way, this
    class keeps only the original message (the traceback's last line).
    """

    def __init__(self, message: str) -> None:
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and prefix in message:
            message = message.rsplit(prefix, 1)[1].strip()
        super().__init__(message)


def _summarize(problems: Sequence[str]) -> str:
    """Join up to MAX_REPORTED problems on one line, then say how many were left out."""
    shown = "; ".join(problems[:MAX_REPORTED])
    if len(problems) > MAX_REPORTED:
        shown += f"; ... and {len(problems) - MAX_REPORTED} more"
    return shown


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
    data_dir, list_path = Path(data_dir), Path(list_path)
    _check_data_dir(data_dir)
    try:
        lines = list_path.read_text().splitlines()
    except OSError as exc:
        raise SkdError(f"list file {list_path}: cannot be read ({exc.strerror}); check the path")

    items: list[Item] = []
    missing: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A tab separates the two paths in the original lists; fall back to whitespace.
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if len(fields) > 2:
            raise SkdError(
                f"list file {list_path} line {number}: {len(fields)} fields in {line!r}; "
                f"expected 'image<TAB>label' or 'image'"
            )
        paths = [data_dir / f for f in fields]
        missing.extend(f for f, p in zip(fields, paths) if not p.is_file())
        items.append((paths[0], paths[1] if len(paths) == 2 else None))

    if missing:
        raise SkdError(
            f"list file {list_path}: {len(missing)} listed file(s) do not exist under "
            f"--data-dir {data_dir}: {_summarize(missing)}; fix the list or the data dir"
        )
    if not items:
        raise SkdError(f"list file {list_path}: no entries; expected lines 'image<TAB>label'")
    return items


def write_list(items: Sequence[Item], data_dir: str | Path, path: str | Path) -> Path:
    """Write items as a list file that `read_list(data_dir, path)` reads back unchanged.

    Paths are written relative to `data_dir` (absolute where a file lies outside it), POSIX
    separators, `image<TAB>label` or `image` alone when the label is None.
    """
    data_dir, path = Path(data_dir), Path(path)

    def rel(p: Path) -> str:
        try:
            return p.relative_to(data_dir).as_posix()
        except ValueError:
            return Path(os.path.abspath(p)).as_posix()

    lines = []
    for image, label in items:
        lines.append(rel(image) if label is None else f"{rel(image)}\t{rel(label)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def sample_name(image_path: Path) -> str:
    """Sample name `{city}/{stem}`: the image's folder and file name without `_leftImg8bit.png`."""
    name = image_path.name
    stem = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else image_path.stem
    return f"{image_path.parent.name}/{stem}"


def _imread(path: Path, flags: int, what: str) -> np.ndarray:
    """cv2.imread after the header check of `_header`; SkdError naming the file if either fails."""
    header = _header(path)
    if isinstance(header, str):
        raise DataFileError(f"{header}; re-extract it or remove it from the list")
    try:
        array = cv2.imread(str(path), flags)
    except cv2.error:  # OpenCV asserts on some headers instead of returning None
        array = None
    if array is None:
        raise DataFileError(f"{path}: cannot be read as {what} (missing or corrupt); "
                            f"re-extract it or remove it from the list")
    return array


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as the original read it (any PNG colour type or bit depth becomes
    8-bit BGR); SkdError naming the file if unreadable or larger than MAX_PIXELS."""
    return _imread(path, cv2.IMREAD_COLOR, "an image")


def read_label_ids(path: Path) -> np.ndarray:
    """(H, W) uint8 labelIds; SkdError naming the file if unreadable, larger than MAX_PIXELS,
    not 8-bit single channel, or holding values that are not Cityscapes labelIds (0..33)."""
    label = _imread(path, cv2.IMREAD_UNCHANGED, "a label image")
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


class CityscapesDataset(torch.utils.data.Dataset):
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
        self.has_labels = has_labels
        self.transform = transform if transform is not None else EvalTransform()
        if list_path is not None:
            self.items = read_list(self.data_dir, list_path)
            source = f"list file {list_path}"
        else:
            self.items = scan_split(self.data_dir, split)
            source = f"--data-dir {self.data_dir} split {split}"
        if has_labels:
            unlabeled = [str(image) for image, label in self.items if label is None]
            if unlabeled:
                raise SkdError(
                    f"{source}: {len(unlabeled)} image(s) have no label: "
                    f"{_summarize(unlabeled)}; add the gtFine labelIds files, or use the "
                    f"split without labels (test)"
                )
        logger.info("%s: %d images", source, len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        if self.has_labels:
            label_ids = read_label_ids(label_path)
            if label_ids.shape != image.shape[:2]:
                raise DataFileError(
                    f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                    f"{label_path} is {label_ids.shape[1]}x{label_ids.shape[0]}; "
                    f"the pair must have the same size"
                )
            label = to_train_ids(label_ids)
        else:
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        image_t, label_t = self.transform(image, label)
        return image_t, label_t, sample_name(image_path)

    def check_files(self, limit: int | None = None) -> int:
        """Open every image (and label) header to find problems before a long run starts.

        Reads sizes and modes only (PIL, no pixel decoding), so it takes seconds for the
        whole of Cityscapes. Pixel values are checked when an item is loaded.

        Args:
            limit: check only the first `limit` items.
        Returns:
            the number of items checked.
        Raises:
            SkdError listing all problems found (up to 20): unreadable files, labels that are
            not 8-bit single channel, image/label size mismatches.
        """
        items = self.items if limit is None else self.items[:limit]
        problems: list[str] = []
        for image_path, label_path in items:
            image_info = _header(image_path)
            if isinstance(image_info, str):
                problems.append(image_info)
            if not self.has_labels:
                continue
            label_info = _header(label_path)
            if isinstance(label_info, str):
                problems.append(label_info)
                continue
            label_size, label_mode = label_info
            if label_mode != "L":
                problems.append(f"{label_path}: mode {label_mode}, expected 8-bit single channel")
            if not isinstance(image_info, str) and image_info[0] != label_size:
                problems.append(
                    f"{image_path} is {image_info[0][0]}x{image_info[0][1]} but {label_path} "
                    f"is {label_size[0]}x{label_size[1]}"
                )
        if problems:
            raise SkdError(
                f"--data-dir {self.data_dir}: {len(problems)} problem(s) in {len(items)} "
                f"items: {_summarize(problems)}"
            )
        logger.info("checked %d items under %s: all readable", len(items), self.data_dir)
        return len(items)


def _header(path: Path) -> tuple[tuple[int, int], str] | str:
    """((width, height), PIL mode) from the file header (no pixel decoded), or a problem
    description: missing, unreadable, or claiming more than MAX_PIXELS pixels."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 Mpixel and refuses from 179 Mpixel; MAX_PIXELS decides here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, mode = im.size, im.mode
    except FileNotFoundError:
        return f"{path}: does not exist"
    except Image.DecompressionBombError:
        return (f"{path}: header claims more than the {MAX_PIXELS} pixels the loader decodes; "
                f"the file is corrupt or not a Cityscapes frame")
    except Exception as exc:  # PIL's format plugins raise many types on a corrupt header
        return f"{path}: not a readable image ({type(exc).__name__})"
    if size[0] * size[1] > MAX_PIXELS:
        return (f"{path}: header claims {size[0]}x{size[1]}, more than the {MAX_PIXELS} pixels "
                f"the loader decodes; the file is corrupt or not a Cityscapes frame")
    return size, mode
