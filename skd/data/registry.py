"""The list of datasets skd reads: `--dataset NAME` picks one of `DATASETS`.

A new dataset is one file (a `SegmentationDataset` subclass with its `DatasetInfo`) and one line
in `DATASETS`. Entry points build everything from here:

    info = dataset_info(args.dataset, args.data_dir)          # classes, palette, splits, recipe
    train = build_dataset(args.dataset, args.data_dir, info.train_split, args.data_list,
                          transform=TrainTransform(...))
    val = build_dataset(args.dataset, args.data_dir, info.val_split, transform=EvalTransform())
    ...
    info.write_prediction(out_dir, name, train_ids)           # skd-test, in the dataset's encoding
"""
from __future__ import annotations

from pathlib import Path

from skd.data.ade20k import ADE20KDataset
from skd.data.base import SegmentationDataset, Transform
from skd.data.camvid import CamVidDataset
from skd.data.cityscapes import CityscapesDataset
from skd.data.folder import FolderDataset
from skd.data.info import DatasetInfo, Recipe
from skd.data.voc import VOCDataset
from skd.errors import SkdError

DATASETS: dict[str, type[SegmentationDataset]] = {
    CityscapesDataset.name: CityscapesDataset,
    VOCDataset.name: VOCDataset,
    ADE20KDataset.name: ADE20KDataset,
    CamVidDataset.name: CamVidDataset,
    FolderDataset.name: FolderDataset,
}


def dataset_names() -> tuple[str, ...]:
    """The `--dataset` choices, in registry order."""
    return tuple(DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The reader registered as `name`; SkdError naming --dataset for an unknown one."""
    try:
        return DATASETS[name]
    except KeyError:
        raise SkdError(f"--dataset {name}: unknown; choose one of {', '.join(DATASETS)}") from None


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """The DatasetInfo of dataset `name` (classes, palette, splits, encodings, recipe).

    `data_dir` is needed only by "folder", whose classes come from `<data_dir>/classes.txt`.
    """
    return dataset_class(name).describe(data_dir)


def dataset_recipe(name: str) -> Recipe | None:
    """The published training defaults of `name`; None where the literature gives none (the
    folder dataset). Needs no data, so --help can show them."""
    info = dataset_class(name).INFO
    return info.recipe if info is not None else None


def build_dataset(
    name: str,
    data_dir: str | Path,
    split: str,
    list_path: str | Path | None = None,
    transform: Transform | None = None,
    has_labels: bool = True,
) -> SegmentationDataset:
    """One split of dataset `name` read from `data_dir` in the dataset's own layout.

    Args:
        name: a key of DATASETS (`--dataset`).
        data_dir: the dataset root as downloaded (`--data-dir`).
        split: one of `dataset_info(name, data_dir).splits` (`--split`).
        list_path: a list file in the dataset's list format instead of the split's own
            (`--data-list`; see each reader's docstring).
        transform: `transform(image (H, W, 3) uint8 BGR, label (H, W) uint8 train ids)`.
        has_labels: False to read images only (prediction): labels come back all 255.
    Returns:
        a SegmentationDataset whose items are (image, label (H, W) int64, name) and whose
        `.info` is the dataset's DatasetInfo.
    """
    return dataset_class(name)(data_dir, split, list_path, transform, has_labels)
