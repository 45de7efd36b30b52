"""The one dataset interface: (image, label, name) items over (image, mask) file pairs.

Every reader (`skd.data.cityscapes`, `voc`, `ade20k`, `camvid`, `folder`) subclasses
`SegmentationDataset`: it finds its file pairs in the dataset's own layout and says how a mask
file maps to train ids (its `DatasetInfo`); loading, the size check, the transform and the
up-front `check_files` are shared here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from skd.data.files import DataFileError, Item, header, read_image, read_mask, read_pair_list, summarize
from skd.data.info import IGNORE_INDEX, DatasetInfo
from skd.errors import SkdError

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def default_transform() -> Transform:
    """The evaluation transform, imported late: transforms.py is rewritten by another change."""
    from skd.data.transforms import EvalTransform

    return EvalTransform()


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and train-id labels of one split of one dataset.

    Subclasses set `name` (the registry key) and `INFO` (their `DatasetInfo`; or override
    `describe` where the classes come from the data), find their (image, mask) pairs in
    `__init__` and hand them to `_finish`; they may override `sample_name` and `load_label`.

    Items:
        image: what `transform(image (H, W, 3) uint8 BGR, label (H, W) uint8 train ids)` returns
            for the image (default `EvalTransform`); label: (H, W) int64 train ids, 255 =
            ignore (all 255 when `has_labels` is False); name: the sample's relative name, usable
            as an output path (`sample_name`).
    """

    name: ClassVar[str]
    # The DatasetInfo of a dataset whose classes are fixed (all but the folder dataset).
    INFO: ClassVar[DatasetInfo | None] = None
    # PIL modes a mask file may have (checked by check_files before any pixel is decoded).
    label_modes: ClassVar[tuple[str, ...]] = ("L", "P")
    label_mode_words: ClassVar[str] = "8-bit single-channel or palette PNG"
    # How to fix a split whose images lack masks, for the error message.
    missing_label_fix: ClassVar[str] = "add the masks, or predict the split without labels"

    info: DatasetInfo
    items: list[Item]
    data_dir: Path
    split: str
    has_labels: bool
    transform: Transform

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A reader names its classes one way or the other; checked when the class is defined.
        own_describe = cls.describe.__func__ is not SegmentationDataset.describe.__func__
        if "name" in cls.__dict__ and cls.INFO is None and not own_describe:
            raise TypeError(f"{cls.__name__} sets neither INFO nor describe")

    @classmethod
    def describe(cls, data_dir: str | Path | None = None) -> DatasetInfo:
        """The dataset's DatasetInfo; `data_dir` matters only where the classes are read from
        the data (the folder dataset overrides this)."""
        return cls.INFO

    def _finish(self, items: list[Item], source: str, transform: Transform | None,
                has_labels: bool) -> None:
        """Store the items and refuse, naming them all (up to 20), images without a mask when
        labels are wanted."""
        self.items = items
        self.has_labels = has_labels
        self.transform = transform if transform is not None else default_transform()
        if not items:
            raise SkdError(f"{source}: no images found; check --data-dir and --split")
        if has_labels:
            unlabeled = [str(image) for image, label in items if label is None]
            if unlabeled:
                raise SkdError(
                    f"{source}: {len(unlabeled)} image(s) have no label: "
                    f"{summarize(unlabeled)}; {self.missing_label_fix}")
        logger.info("%s: %d images", source, len(items))

    def __len__(self) -> int:
        return len(self.items)

    def sample_name(self, image_path: Path) -> str:
        """Relative sample name: the image's file name without its extension."""
        return image_path.stem

    def load_label(self, label_path: Path) -> np.ndarray:
        """(H, W) uint8 train ids of one mask file (values checked against the dataset)."""
        return self.info.to_train_ids(read_mask(label_path, self.label_modes), label_path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        if self.has_labels:
            label = self.load_label(label_path)
            if label.shape != image.shape[:2]:
                raise DataFileError(
                    f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                    f"{label_path} is {label.shape[1]}x{label.shape[0]}; "
                    f"the pair must have the same size"
                )
        else:
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        image_t, label_t = self.transform(image, label)
        return image_t, label_t, self.sample_name(image_path)

    def check_files(self, limit: int | None = None) -> int:
        """Open every image (and label) header to find problems before a long run starts.

        Reads sizes and modes only (PIL, no pixel decoding), so it takes seconds for a whole
        dataset. Pixel values are checked when an item is loaded.

        Args:
            limit: check only the first `limit` items.
        Returns:
            the number of items checked.
        Raises:
            SkdError listing all problems found (up to 20): unreadable files, labels in another
            mode than the dataset's masks, image/label size mismatches.
        """
        items = self.items if limit is None else self.items[:limit]
        problems: list[str] = []
        for image_path, label_path in items:
            image_info = header(image_path)
            if isinstance(image_info, str):
                problems.append(image_info)
            if not self.has_labels:
                continue
            label_info = header(label_path)
            if isinstance(label_info, str):
                problems.append(label_info)
                continue
            label_size, label_mode = label_info
            if label_mode not in self.label_modes:
                problems.append(f"{label_path}: mode {label_mode}, expected {self.label_mode_words}")
            if not isinstance(image_info, str) and image_info[0] != label_size:
                problems.append(
                    f"{image_path} is {image_info[0][0]}x{image_info[0][1]} but {label_path} "
                    f"is {label_size[0]}x{label_size[1]}"
                )
        if problems:
            raise SkdError(
                f"--data-dir {self.data_dir}: {len(problems)} problem(s) in {len(items)} "
                f"items: {summarize(problems)}"
            )
        logger.info("checked %d items under %s: all readable", len(items), self.data_dir)
        return len(items)


class PairedFolderDataset(SegmentationDataset):
    """A reader whose split is a folder of images beside a folder of same-stem PNG masks
    (ADE20K, CamVid), or a list file of `image label` pairs.

    Subclasses set `INFO`, `ROOT_MARKER` and `ROOT_NESTED` (how `resolve_root` finds the
    dataset root), `LAYOUT` (for the errors), `IMAGE_SUFFIX`, optionally `resolve_listed`
    (a staticmethod: how a list file's field becomes a path, see `read_pair_list`), and the
    classmethod `folders(root, split)`: (image folder, mask folder, the error text when the
    image folder is missing).
    """

    INFO: ClassVar[DatasetInfo]
    ROOT_MARKER: ClassVar[str]
    ROOT_NESTED: ClassVar[tuple[str, ...]]
    LAYOUT: ClassVar[str]
    IMAGE_SUFFIX: ClassVar[str]
    resolve_listed: ClassVar[Callable[[Path, str], Path] | None] = None

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
        self.info = self.INFO
        root = resolve_root(self.data_dir, self.ROOT_MARKER, self.ROOT_NESTED, self.INFO.title, self.LAYOUT)
        if list_path is not None:
            items = read_pair_list(root, Path(list_path), self.resolve_listed)
            source = f"list file {list_path}"
        else:
            self.INFO.split_has_labels(split)
            source = f"--data-dir {self.data_dir} split {split}"
            image_dir, mask_dir, missing = self.folders(root, split)
            if not image_dir.is_dir():
                raise SkdError(f"--data-dir {self.data_dir}: {missing}")
            items = pair_folders(image_dir, mask_dir, self.IMAGE_SUFFIX, source, has_labels)
        self._finish(items, source, transform, has_labels)


def resolve_root(data_dir: Path, marker: str, nested: tuple[str, ...], title: str,
                 layout: str) -> Path:
    """The dataset root: `data_dir` itself if it holds `marker`, else the first of
    `data_dir / n` for n in `nested` that does (users point --data-dir at the extracted archive
    or at the folder holding it).

    Raises:
        SkdError naming --data-dir and the expected layout.
    """
    if not data_dir.is_dir():
        raise SkdError(f"--data-dir {data_dir}: no such folder; expected the {title} root "
                       f"({layout})")
    for candidate in (data_dir, *(data_dir / n for n in nested)):
        if (candidate / marker).is_dir():
            return candidate
    where = ", ".join(f"{n}/{marker}/" for n in nested)
    raise SkdError(f"--data-dir {data_dir}: no {marker}/ here" + (f" nor {where}" if where else "")
                   + f"; expected the {title} layout ({layout})")


def pair_folders(image_dir: Path, mask_dir: Path, image_suffix: str, source: str,
                 check_orphans: bool) -> list[Item]:
    """(image, mask or None) for every `*<image_suffix>` of `image_dir`, sorted, the mask being
    `mask_dir/<stem>.png`. With `check_orphans`, masks whose image is missing are an error
    (a masks folder without its images)."""
    images = sorted(image_dir.glob(f"*{image_suffix}"))
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    if check_orphans:
        orphans = sorted(str(p) for stem, p in masks.items()
                         if not (image_dir / f"{stem}{image_suffix}").is_file())
        if orphans:
            raise missing_images_error(source, orphans, str(image_dir))
    return [(image, masks.get(image.stem)) for image in images]


def missing_images_error(source: str, orphans: list[str], where: str) -> SkdError:
    """The error for masks whose image is missing (a masks folder without its images)."""
    return SkdError(f"{source}: {len(orphans)} mask(s) have no image in {where}: "
                    f"{summarize(orphans)}; extract the images too, or remove these masks")
