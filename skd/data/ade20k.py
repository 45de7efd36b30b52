"""ADE20K (the SceneParsing challenge release, ADEChallengeData2016.zip), as users extract it.

Layout:
    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png
Masks are 8-bit grey PNGs: 0 = "other objects" (not one of the 150 classes), 1..150 = the
classes. Train id = value - 1, and 0 becomes 255 (ignored): mmsegmentation's
`reduce_zero_label` (mmseg/datasets/ade.py) and CIRKD's `label - 1` (dataset/ade20k.py).
Splits: train (images/training, 20,210 images) and val (images/validation, 2,000).
"""
from pathlib import Path

import numpy as np

from skd.data.base import PairedFolderDataset
from skd.data.info import (
    DatasetInfo,
    Recipe,
    decode_table,
    encode_table,
    file_palette,
    write_palette_prediction,
)

# open-mmlab/mmsegmentation, mmseg/datasets/ade.py, METAINFO classes (file value = index + 1).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# open-mmlab/mmsegmentation, mmseg/datasets/ade.py, METAINFO palette (RGB, in class order).
ADE20K_PALETTE = np.array([
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
], dtype=np.uint8)

SPLIT_FOLDERS = {"train": "training", "val": "validation"}
_LAYOUT = "ADEChallengeData2016/ with images/{training,validation}/ and annotations/"

ADE20K = DatasetInfo(
    name="ade20k",
    title="ADE20K",
    class_names=ADE20K_CLASSES,
    palette=ADE20K_PALETTE,
    splits={"train": True, "val": True},
    train_split="train",
    val_split="val",
    test_split="val",
    decode_table=decode_table({0: 255, **{v: v - 1 for v in range(1, 151)}}),
    encode_table=encode_table({t: t + 1 for t in range(150)}, void=0),
    file_palette=file_palette({v + 1: tuple(c) for v, c in enumerate(ADE20K_PALETTE.tolist())}),
    mask_encoding="ids 1..150, 0 = other (ignored)",
    writer=write_palette_prediction,
    recipe=Recipe(
        crop=(512, 512), batch_size=16, num_steps=40000, lr=0.02,
        source="CIRKD (Yang et al., CVPR 2022): winycg/CIRKD@91d9ad4 "
               "train_scripts/train_cirkd/ade20k/deeplabv3_res18.sh (--crop-size 512 512, "
               "--batch-size 16, --lr 0.02, --max-iterations 40000)",
        note="The CWD paper's appendix (Shu et al., ICCV 2021) could not be read here, so its "
             "ADE20K figures are unconfirmed; CIRKDV2's scripts (winycg/CIRKD HEAD, "
             "scripts/train_cirkdv2/ade20k/) use 80000 iterations; mmsegmentation's PSPNet uses "
             "512x512, batch 16, 80k or 160k iterations, lr 0.01 "
             "(configs/pspnet/pspnet_r101-d8_4xb4-80k_ade20k-512x512.py)"),
    sources={
        "classes, palette": "open-mmlab/mmsegmentation, mmseg/datasets/ade.py (METAINFO)",
        "0 ignored, 1..150 -> 0..149": "open-mmlab/mmsegmentation, mmseg/datasets/ade.py "
                                       "(reduce_zero_label=True); winycg/CIRKD, "
                                       "dataset/ade20k.py (label - 1)",
    },
)


class ADE20KDataset(PairedFolderDataset):
    """ADE20K images and train-id labels (150 classes; mask value 0 ignored).

    Args:
        data_dir: ADEChallengeData2016/ (or the folder holding it).
        split: train or val.
        list_path: a list file `image<TAB>label` relative to ADEChallengeData2016/ instead of
            the folder scan.
        transform, has_labels: as in `SegmentationDataset`.

    Items: (image, label, "<stem>"), e.g. "ADE_val_00000001".
    """

    name = "ade20k"
    INFO = ADE20K
    missing_label_fix = "extract annotations/ too, or predict the split without labels"

    ROOT_MARKER = "images"
    ROOT_NESTED = ("ADEChallengeData2016",)
    LAYOUT = _LAYOUT
    IMAGE_SUFFIX = ".jpg"

    @classmethod
    def folders(cls, root: Path, split: str) -> tuple[Path, Path, str]:
        folder = SPLIT_FOLDERS[split]
        return (root / "images" / folder, root / "annotations" / folder,
                f"no images/{folder} folder; expected the ADE20K layout ({_LAYOUT})")
