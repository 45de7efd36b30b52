"""Datasets (Cityscapes, Pascal VOC + SBD, ADE20K, CamVid, a folder of one's own) behind one
interface and one registry, label definitions, joint transforms and a synthetic generator."""
from skd.data.ade20k import ADE20K, ADE20KDataset
from skd.data.base import SegmentationDataset
from skd.data.camvid import CAMVID, CamVidDataset
from skd.data.cityscapes import (
    CITYSCAPES,
    CityscapesDataset,
    read_image,
    read_label_ids,
    read_list,
    sample_name,
    scan_split,
    write_list,
)
from skd.data.folder import FolderDataset, read_classes
from skd.data.info import DatasetInfo, Recipe
from skd.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    IMG_MEAN,
    IMG_MEAN_F64,
    LABEL_ID_TO_TRAIN_ID,
    MAX_LABEL_ID,
    NUM_CLASSES,
    PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    colorize,
    to_label_ids,
    to_train_ids,
)
from skd.data.registry import (
    DATASETS,
    build_dataset,
    dataset_class,
    dataset_info,
    dataset_names,
    dataset_recipe,
)
from skd.data.transforms import EvalTransform, TrainTransform
from skd.data.voc import VOC, VOCDataset


def __getattr__(name: str):
    # The synthetic generator loads lazily, so `python -m skd.data.synthetic` runs it as
    # __main__ without importing it a second time (runpy's "found in sys.modules" warning).
    if name in ("make_synthetic", "render_scene"):
        from skd.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'skd.data' has no attribute {name!r}")

__all__ = [
    "ADE20K",
    "CAMVID",
    "CITYSCAPES",
    "CLASS_NAMES",
    "DATASETS",
    "VOC",
    "ADE20KDataset",
    "CamVidDataset",
    "DatasetInfo",
    "FolderDataset",
    "Recipe",
    "SegmentationDataset",
    "VOCDataset",
    "build_dataset",
    "dataset_class",
    "dataset_info",
    "dataset_names",
    "dataset_recipe",
    "read_classes",
    "IGNORE_INDEX",
    "IMG_MEAN",
    "IMG_MEAN_F64",
    "LABEL_ID_TO_TRAIN_ID",
    "MAX_LABEL_ID",
    "NUM_CLASSES",
    "PALETTE",
    "TRAIN_ID_TO_LABEL_ID",
    "CityscapesDataset",
    "EvalTransform",
    "TrainTransform",
    "colorize",
    "make_synthetic",
    "read_image",
    "read_label_ids",
    "read_list",
    "render_scene",
    "sample_name",
    "scan_split",
    "to_label_ids",
    "to_train_ids",
    "write_list",
]
