"""Pascal VOC 2012, with the SBD augmentation (train_aug, 10,582 images), as users extract it.

Layout (`VOCtrainval_11-May-2012.tar` extracts to `VOCdevkit/VOC2012/`):
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png         palette PNGs: index = class 0..20, 255 = object border
    SegmentationClassAug/<id>.png      SBD masks as 8-bit grey PNGs, same values
    ImageSets/Segmentation/{train,val,trainval,test}.txt   one <id> per line
    ImageSets/Segmentation/train_aug.txt (or mmseg's trainaug.txt)   the 10,582 training ids

`--data-dir` may name `VOC2012/`, `VOCdevkit/` or the folder holding `VOCdevkit/`, or CIRKD's
VOCAug folder (JPEGImages/, SegmentationClass/, SegmentationClassAug/ side by side).
SegmentationClassAug and the train_aug list are what DeepLab, CIRKD (dataset/voc.py,
dataset/list/voc/train_aug.txt) and mmsegmentation (tools/dataset_converters/voc_aug.py, which
writes SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt) train on.
"""
from pathlib import Path

from skd.data.base import SegmentationDataset, Transform, resolve_root
from skd.data.files import Item, read_name_list, summarize
from skd.data.info import (
    DatasetInfo,
    Recipe,
    bit_colormap,
    decode_table,
    encode_table,
    write_palette_prediction,
)
from skd.errors import SkdError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
AUG_SPLIT = "train_aug"
# List names searched for the augmented training set: DeepLab's and CIRKD's, then mmseg's.
AUG_LISTS = ("train_aug.txt", "trainaug.txt")
_COLORMAP = bit_colormap(256)
_LAYOUT = "VOCdevkit/VOC2012/ with JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"

VOC = DatasetInfo(
    name="voc",
    title="Pascal VOC 2012",
    class_names=VOC_CLASSES,
    palette=_COLORMAP[:21].copy(),
    splits={"train": True, "val": True, "trainval": True, AUG_SPLIT: True, "test": False},
    train_split=AUG_SPLIT,
    val_split="val",
    test_split="test",
    decode_table=decode_table({**{v: v for v in range(21)}, 255: 255}),
    encode_table=encode_table({t: t for t in range(21)}, void=255),
    file_palette=_COLORMAP.copy(),
    mask_encoding="class indices 0..20, 255 = border/void",
    writer=write_palette_prediction,
    recipe=Recipe(
        crop=(512, 512), batch_size=16, num_steps=40000, lr=0.02,
        source="CIRKD (Yang et al., CVPR 2022): winycg/CIRKD@91d9ad4 "
               "train_scripts/train_cirkd/voc/pspnet_res18.sh (--crop-size 512 512) with the "
               "train_cirkd.py defaults it keeps (--batch-size 16, --max-iterations 40000, "
               "--lr 0.02, lines 61-67)",
        note="The CWD paper's appendix (Shu et al., ICCV 2021) could not be read here, so its "
             "VOC figures are unconfirmed; CIRKDV2's scripts (winycg/CIRKD HEAD, "
             "scripts/train_cirkdv2/pascal_voc/) use 80000 iterations; mmsegmentation's PSPNet "
             "uses 512x512, batch 16, 20k or 40k iterations, lr 0.01 "
             "(configs/pspnet/pspnet_r101-d8_4xb4-40k_voc12aug-512x512.py)"),
    sources={
        "classes": "open-mmlab/mmsegmentation, mmseg/datasets/voc.py (CLASSES)",
        "palette": "VOCdevkit VOClabelcolormap.m (bit interleaving); first 21 colours as in "
                   "open-mmlab/mmsegmentation, mmseg/datasets/voc.py (convert_to_color)",
        "SBD list and masks": "winycg/CIRKD, dataset/voc.py and dataset/list/voc/train_aug.txt; "
                              "open-mmlab/mmsegmentation, tools/dataset_converters/voc_aug.py",
    },
)


def read_voc_list(root: Path, list_path: Path) -> list[tuple[str, Path | None, Path | None]]:
    """(id, image, label) per line of a VOC list: an `<id>` alone (ImageSets, CIRKD), or two
    paths `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` relative to the VOC2012 root
    (DeepLab's train_aug.txt). Image and label are None where a line gives only the id.

    Raises:
        SkdError naming the list file and line for a line of more than two fields.
    """
    entries = []
    for number, line in enumerate(read_name_list(list_path, "VOC split list"), start=1):
        fields = line.split()
        if len(fields) > 2:
            raise SkdError(f"VOC split list {list_path} entry {number}: {len(fields)} fields in "
                           f"{line!r}; expected '<id>' or '<image> <label>'")
        if len(fields) == 1 and "/" not in fields[0]:
            entries.append((fields[0], None, None))
            continue
        paths = [root / f.lstrip("/") for f in fields]
        entries.append((paths[0].stem, paths[0], paths[1] if len(paths) == 2 else None))
    return entries


def split_list(root: Path, split: str) -> Path:
    """The ImageSets/Segmentation list of `split`; SkdError naming what was looked for."""
    folder = root / "ImageSets" / "Segmentation"
    names = AUG_LISTS if split == AUG_SPLIT else (f"{split}.txt",)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    fix = ("make it with mmsegmentation's tools/dataset_converters/voc_aug.py (it writes "
           "trainaug.txt), or pass CIRKD's dataset/list/voc/train_aug.txt with --data-list"
           if split == AUG_SPLIT else "re-extract VOCtrainval_11-May-2012.tar (VOC2012test.tar "
           "for test), or pass a list with --data-list")
    raise SkdError(f"--data-dir {root} split {split}: no split list "
                   f"{' or '.join(str(folder / n) for n in names)}; {fix}")


class VOCDataset(SegmentationDataset):
    """Pascal VOC 2012 images and train-id labels (classes 0..20, 255 ignored).

    Args:
        data_dir: VOC2012/ (or a folder holding VOC2012/ or VOCdevkit/VOC2012/).
        split: train, val, trainval, train_aug (labels from SegmentationClassAug, falling back
            to SegmentationClass for an id without an Aug mask) or test (images only).
        list_path: a list of ids (or DeepLab's image/label path pairs) instead of the split's
            ImageSets list; ids take their masks by the rule of `split`.
        transform, has_labels: as in `SegmentationDataset`.

    Items: (image, label, "<id>"), e.g. "2007_000033".
    """

    name = "voc"
    INFO = VOC
    missing_label_fix = ("extract SegmentationClass/ (SegmentationClassAug/ for train_aug), or "
                         "predict the split without labels")

    def __init__(
        self,
        data_dir: str | Path,
        split: str = AUG_SPLIT,
        list_path: str | Path | None = None,
        transform: Transform | None = None,
        has_labels: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.info = VOC
        VOC.split_has_labels(split)
        root = resolve_root(self.data_dir, "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"),
                            VOC.title, _LAYOUT)
        self.root = root
        if list_path is not None:
            list_path = Path(list_path)
            source = f"list file {list_path}"
        else:
            list_path = split_list(root, split)
            source = f"--data-dir {self.data_dir} split {split}"
        entries = read_voc_list(root, list_path)
        mask_dirs = (("SegmentationClassAug", "SegmentationClass") if split == AUG_SPLIT
                     else ("SegmentationClass",))
        items: list[Item] = []
        missing: list[str] = []
        for sample_id, image, label in entries:
            image = image or root / "JPEGImages" / f"{sample_id}.jpg"
            if not image.is_file():
                missing.append(str(image))
            if label is None:
                label = next((root / d / f"{sample_id}.png" for d in mask_dirs
                              if (root / d / f"{sample_id}.png").is_file()), None)
            elif not label.is_file():
                label = None
            items.append((image, label))
        if missing:
            raise SkdError(f"{source}: {len(missing)} listed image(s) do not exist: "
                           f"{summarize(missing)}; extract JPEGImages/ (a masks folder without "
                           f"its images) or fix the list")
        self._finish(items, source, transform, has_labels)

