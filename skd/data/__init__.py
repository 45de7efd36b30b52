"""Cityscapes data: label definitions, joint transforms, the dataset and a synthetic generator."""
from skd.data.cityscapes import (
    CityscapesDataset,
    read_image,
    read_label_ids,
    read_list,
    sample_name,
    scan_split,
    write_list,
)
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
from skd.data.transforms import EvalTransform, TrainTransform


def __getattr__(name: str):
    # The synthetic generator loads lazily, so `python -m skd.data.synthetic` runs it as
    # __main__ without importing it a second time (runpy's "found in sys.modules" warning).
    if name in ("make_synthetic", "render_scene"):
        from skd.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'skd.data' has no attribute {name!r}")

__all__ = [
    "CLASS_NAMES",
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
