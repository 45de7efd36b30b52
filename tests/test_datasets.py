"""Tests of the dataset registry and the readers of VOC, ADE20K, CamVid and a user folder.

Every layout is written here, file by file, in the dataset's real names and encodings, and read
back; the expected train ids come from the rules typed below from each dataset's sources, not
from skd's tables.
"""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from skd.data import (
    ADE20K,
    CAMVID,
    CITYSCAPES,
    VOC,
    ADE20KDataset,
    CamVidDataset,
    FolderDataset,
    SegmentationDataset,
    VOCDataset,
    build_dataset,
    dataset_class,
    dataset_info,
    dataset_names,
    dataset_recipe,
    make_synthetic,
    read_classes,
)
from skd.data.synthetic import main as synthetic_main
from skd.errors import SkdError

H, W = 6, 8
# Typed from open-mmlab/mmsegmentation mmseg/datasets/voc.py (convert_to_color).
MMSEG_VOC_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
    (0, 192, 0), (128, 192, 0), (0, 64, 128)]
# Typed from alexgkendall/SegNet-Tutorial Scripts/test_segmentation_camvid.py, lines 48-62.
SEGNET_COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192)]


# -- writing files in each layout ---------------------------------------------------------------

def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed)).save(path, quality=95)
    return path


def _png_rgb(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed)).save(path)
    return path


def _grey(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode=None).save(path)
    return path


def _palette_png(path: Path, values: np.ndarray, colours: list[tuple[int, int, int]]) -> Path:
    """A palette PNG as VOC's SegmentationClass: pixel = index, palette = colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8))
    flat = [c for rgb in colours for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    im.save(path)
    return path


def _values(seed: int, choices) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(choices, np.uint8), (H, W))


def _voc_tree(root: Path) -> dict[str, np.ndarray]:
    """VOCdevkit/VOC2012 with ids a (train, with both masks), b (val), c (SBD only), d (train
    and train_aug, SegmentationClass only); returns each mask written, by file."""
    voc = root / "VOCdevkit" / "VOC2012"
    masks = {}
    for i, sample in enumerate("abcd"):
        _jpeg(voc / "JPEGImages" / f"{sample}.jpg", i)
    colours = MMSEG_VOC_COLOURS + [(0, 0, 0)] * (255 - 21) + [(224, 224, 192)]
    for i, sample in enumerate("abd"):
        masks[f"Class/{sample}"] = _values(i, [0, 1, 15, 20, 255])
        _palette_png(voc / "SegmentationClass" / f"{sample}.png", masks[f"Class/{sample}"], colours)
    for i, sample in enumerate("ac"):
        masks[f"Aug/{sample}"] = _values(10 + i, [0, 7, 12])
        _grey(voc / "SegmentationClassAug" / f"{sample}.png", masks[f"Aug/{sample}"])
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nd\n")
    (sets / "val.txt").write_text("b\n")
    (sets / "trainval.txt").write_text("a\nd\nb\n")
    (sets / "train_aug.txt").write_text("a\nc\nd\n")
    return masks


def _ade_tree(root: Path, split: str = "training", stems=("ADE_train_00000001",)) -> dict:
    ade = root / "ADEChallengeData2016"
    masks = {}
    for i, stem in enumerate(stems):
        _jpeg(ade / "images" / split / f"{stem}.jpg", i)
        masks[stem] = _values(i, [0, 1, 2, 75, 149, 150])
        _grey(ade / "annotations" / split / f"{stem}.png", masks[stem])
    return masks


def _camvid_tree(root: Path, split: str = "train", names=("0001TP_006690",)) -> dict:
    camvid = root / "CamVid"
    masks = {}
    for i, name in enumerate(names):
        _png_rgb(camvid / split / f"{name}.png", i)
        masks[name] = _values(i, list(range(12)))
        _grey(camvid / f"{split}annot" / f"{name}.png", masks[name])
    (camvid / "trainannot").mkdir(parents=True, exist_ok=True)
    return masks


def _folder_tree(root: Path, classes: str = "road 128 64 128\nsky 70 130 180\ntree 107 142 35\n",
                 names=("x", "sub/y")) -> dict:
    masks = {}
    for i, name in enumerate(names):
        _jpeg(root / "images" / f"{name}.jpg", i)
        masks[name] = _values(i, [0, 1, 2, 255])
        _grey(root / "masks" / f"{name}.png", masks[name])
    (root / "classes.txt").write_text(classes)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "train.txt").write_text("".join(f"{n}\n" for n in names))
    return masks


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _mode(path) -> str:
    with Image.open(path) as im:
        return im.mode


def _labels(dataset) -> list[np.ndarray]:
    return [dataset[i][1].numpy() for i in range(len(dataset))]


def _one_line_error(call, *needles: str) -> str:
    with pytest.raises(SkdError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# -- registry and infos -------------------------------------------------------------------------

def test_registry_lists_the_five_datasets_and_refuses_an_unknown_name():
    assert dataset_names() == ("cityscapes", "voc", "ade20k", "camvid", "folder")
    assert dataset_class("voc") is VOCDataset
    _one_line_error(lambda: dataset_class("coco"), "--dataset coco", "cityscapes, voc")
    _one_line_error(lambda: dataset_info("folder"), "--data-dir")


def test_infos_hold_the_classes_palettes_and_splits_of_their_sources():
    assert [dataset_info(n).num_classes for n in ("cityscapes", "voc", "ade20k", "camvid")] == \
        [19, 21, 150, 11]
    assert all(dataset_info(n).ignore_index == 255 for n in ("cityscapes", "voc", "ade20k", "camvid"))
    assert VOC.class_names[0] == "background" and VOC.class_names[15] == "person"
    assert VOC.class_names[-1] == "tvmonitor"
    assert VOC.palette.tolist() == [list(c) for c in MMSEG_VOC_COLOURS]
    assert VOC.file_palette[255].tolist() == [224, 224, 192]  # the VOC border colour
    assert ADE20K.class_names[:3] == ("wall", "building", "sky") and ADE20K.class_names[-1] == "flag"
    assert ADE20K.palette[0].tolist() == [120, 120, 120] and ADE20K.palette[-1].tolist() == [92, 0, 255]
    assert len(set(ADE20K.class_names)) == 150
    assert CAMVID.class_names == ("sky", "building", "pole", "road", "pavement", "tree",
                                  "signsymbol", "fence", "car", "pedestrian", "bicyclist")
    assert CAMVID.palette.tolist() == [list(c) for c in SEGNET_COLOURS]
    assert dict(VOC.splits) == {"train": True, "val": True, "trainval": True, "train_aug": True,
                                "test": False}
    assert (VOC.train_split, VOC.val_split) == ("train_aug", "val")
    assert dict(CITYSCAPES.splits) == {"train": True, "val": True, "test": False}
    _one_line_error(lambda: ADE20K.split_has_labels("validation"), "--split validation", "train, val")


def test_recipes_are_data_with_their_sources():
    assert dataset_recipe("cityscapes").crop == (512, 512)
    assert (dataset_recipe("cityscapes").batch_size, dataset_recipe("cityscapes").num_steps,
            dataset_recipe("cityscapes").lr) == (8, 40000, 0.01)
    camvid = dataset_recipe("camvid")
    assert (camvid.crop, camvid.batch_size, camvid.num_steps, camvid.lr) == ((360, 360), 16, 40000, 0.02)
    for name in ("voc", "ade20k"):
        r = dataset_recipe(name)
        assert (r.crop, r.batch_size, r.num_steps, r.lr) == ((512, 512), 16, 40000, 0.02)
        assert "winycg/CIRKD" in r.source and "CWD" in r.note
    assert dataset_recipe("folder") is None


# -- Pascal VOC ---------------------------------------------------------------------------------

def test_voc_reads_palette_indices_not_colours_and_keeps_255(tmp_path):
    masks = _voc_tree(tmp_path)
    dataset = VOCDataset(tmp_path, "train")
    assert [dataset[i][2] for i in range(2)] == ["a", "d"]
    # class index = palette index; 255 (border) stays 255 = ignore
    for label, key in zip(_labels(dataset), ("Class/a", "Class/d")):
        np.testing.assert_array_equal(label, masks[key].astype(np.int64))
    image, _, _ = dataset[0]
    assert image.shape == (3, H, W)
    # OpenCV would have expanded the palette PNG to colours: the reader must not use it
    assert cv2.imread(str(dataset.items[0][1]), cv2.IMREAD_UNCHANGED).ndim == 3


def test_voc_train_aug_takes_sbd_masks_and_falls_back_to_segmentation_class(tmp_path):
    masks = _voc_tree(tmp_path)
    dataset = VOCDataset(tmp_path, "train_aug")
    expected = [masks["Aug/a"], masks["Aug/c"], masks["Class/d"]]
    for label, mask in zip(_labels(dataset), expected):
        np.testing.assert_array_equal(label, mask)
    assert [p[1].parent.name for p in dataset.items] == [
        "SegmentationClassAug", "SegmentationClassAug", "SegmentationClass"]


def test_voc_data_dir_may_be_voc2012_vocdevkit_or_above(tmp_path):
    _voc_tree(tmp_path)
    reference = VOCDataset(tmp_path, "val").items
    for data_dir in (tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert VOCDataset(data_dir, "val").items == reference


def test_voc_accepts_mmseg_trainaug_and_deeplab_path_lists(tmp_path):
    _voc_tree(tmp_path)
    sets = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "train_aug.txt").rename(sets / "trainaug.txt")
    assert [n for _, _, n in VOCDataset(tmp_path, "train_aug")] == ["a", "c", "d"]
    deeplab = tmp_path / "deeplab_train_aug.txt"
    deeplab.write_text("/JPEGImages/c.jpg /SegmentationClassAug/c.png\n"
                       "/JPEGImages/a.jpg /SegmentationClass/a.png\n")
    dataset = VOCDataset(tmp_path, "train_aug", list_path=deeplab)
    assert [label.parent.name for _, label in dataset.items] == [
        "SegmentationClassAug", "SegmentationClass"]


def test_voc_test_split_is_images_only(tmp_path):
    _voc_tree(tmp_path)
    sets = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "test.txt").write_text("c\n")
    _one_line_error(lambda: VOCDataset(tmp_path, "test"), "have no label", "c.jpg")
    dataset = VOCDataset(tmp_path, "test", has_labels=False)
    _, label, name = dataset[0]
    assert name == "c" and (label == 255).all()


def test_voc_errors_name_the_file_and_the_value(tmp_path):
    masks = _voc_tree(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    bad = masks["Class/b"].copy()
    bad[1, 2] = 30
    _palette_png(voc / "SegmentationClass" / "b.png", bad, MMSEG_VOC_COLOURS)
    _one_line_error(lambda: VOCDataset(tmp_path, "val")[0], str(voc / "SegmentationClass" / "b.png"),
                    "[30]", "Pascal VOC")
    # a colour rendering instead of the palette PNG
    Image.fromarray(_rgb()).save(voc / "SegmentationClass" / "b.png")
    _one_line_error(lambda: VOCDataset(tmp_path, "val")[0], "b.png", "mode RGB")
    _one_line_error(VOCDataset(tmp_path, "val").check_files, "b.png", "mode RGB")
    # missing split list, with where it was looked for and the fix
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    _one_line_error(lambda: VOCDataset(tmp_path, "train_aug"), "train_aug.txt", "trainaug.txt",
                    "voc_aug.py", "--data-list")
    # listed images that are not there (a masks folder without its images)
    (voc / "JPEGImages" / "a.jpg").unlink()
    _one_line_error(lambda: VOCDataset(tmp_path, "train"), "1 listed image", "a.jpg")
    _one_line_error(lambda: VOCDataset(tmp_path / "nowhere", "train"), "--data-dir", "no such")
    _one_line_error(lambda: VOCDataset(tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets", "val"),
                    "no JPEGImages/")
    _one_line_error(lambda: VOCDataset(tmp_path, "segmentation"), "--split segmentation")


# -- ADE20K -------------------------------------------------------------------------------------

def test_ade20k_ignores_0_and_shifts_1_150_to_0_149(tmp_path):
    masks = _ade_tree(tmp_path)
    dataset = ADE20KDataset(tmp_path, "train")
    _, label, name = dataset[0]
    mask = masks["ADE_train_00000001"].astype(np.int64)
    expected = np.where(mask == 0, 255, mask - 1)  # mmseg reduce_zero_label
    np.testing.assert_array_equal(label.numpy(), expected)
    assert name == "ADE_train_00000001" and dataset.check_files() == 1
    val = _ade_tree(tmp_path, "validation", ("ADE_val_00000001", "ADE_val_00000002"))
    assert [n for _, _, n in ADE20KDataset(tmp_path / "ADEChallengeData2016", "val")] == sorted(val)


def test_ade20k_errors(tmp_path):
    masks = _ade_tree(tmp_path, stems=("ADE_train_00000001", "ADE_train_00000002"))
    ade = tmp_path / "ADEChallengeData2016"
    bad = masks["ADE_train_00000001"].copy()
    bad[0, 0] = 151
    _grey(ade / "annotations" / "training" / "ADE_train_00000001.png", bad)
    _one_line_error(lambda: ADE20KDataset(tmp_path, "train")[0], "ADE_train_00000001.png", "[151]")
    # a mask without its image
    (ade / "images" / "training" / "ADE_train_00000002.jpg").unlink()
    _grey(ade / "annotations" / "training" / "ADE_train_00000003.png", bad)
    _one_line_error(lambda: ADE20KDataset(tmp_path, "train"), "2 mask(s) have no image",
                    "ADE_train_00000002.png", "ADE_train_00000003.png")
    # a split folder that is not there
    _one_line_error(lambda: ADE20KDataset(tmp_path, "val"), "no images/validation folder", "ADE20K layout")
    # an image without its mask
    _jpeg(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    _one_line_error(lambda: ADE20KDataset(tmp_path, "val"), "have no label", "ADE_val_00000001.jpg")
    assert len(ADE20KDataset(tmp_path, "val", has_labels=False)) == 1
    # image and mask of different sizes
    _ade_tree(tmp_path, "validation", ("ADE_val_00000001",))
    _grey(ade / "annotations" / "validation" / "ADE_val_00000001.png", np.zeros((H + 1, W), np.uint8))
    _one_line_error(ADE20KDataset(tmp_path, "val").check_files, "ADE_val_00000001.jpg is 8x6",
                    "is 8x7")
    _one_line_error(lambda: ADE20KDataset(tmp_path, "val")[0], "same size")


# -- CamVid -------------------------------------------------------------------------------------

def test_camvid_void_11_is_ignored_and_0_10_are_classes(tmp_path):
    masks = _camvid_tree(tmp_path, names=("0001TP_006690", "0001TP_006720"))
    dataset = CamVidDataset(tmp_path, "train")
    for label, name in zip(_labels(dataset), sorted(masks)):
        mask = masks[name].astype(np.int64)
        np.testing.assert_array_equal(label, np.where(mask == 11, 255, mask))
    assert [n for _, _, n in dataset] == ["0001TP_006690", "0001TP_006720"]


def test_camvid_reads_segnet_and_cirkd_lists(tmp_path):
    _camvid_tree(tmp_path, names=("0001TP_006690", "0001TP_006720"))
    scanned = CamVidDataset(tmp_path, "train").items
    segnet = tmp_path / "train.txt"
    segnet.write_text("/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n"
                      "/SegNet/CamVid/train/0001TP_006720.png /SegNet/CamVid/trainannot/0001TP_006720.png\n")
    cirkd = tmp_path / "camvid_train_list.txt"
    cirkd.write_text("train/0001TP_006690.png trainannot/0001TP_006690.png\n"
                     "train/0001TP_006720.png trainannot/0001TP_006720.png\n")
    assert CamVidDataset(tmp_path, "train", list_path=segnet).items == scanned
    assert CamVidDataset(tmp_path / "CamVid", "train", list_path=cirkd).items == scanned


def test_camvid_errors(tmp_path):
    masks = _camvid_tree(tmp_path)
    camvid = tmp_path / "CamVid"
    bad = masks["0001TP_006690"].copy()
    bad[2, 2] = 12
    _grey(camvid / "trainannot" / "0001TP_006690.png", bad)
    _one_line_error(lambda: CamVidDataset(tmp_path, "train")[0], "0001TP_006690.png", "[12]",
                    "11 = void")
    _grey(camvid / "trainannot" / "0001TP_009999.png", bad)
    _one_line_error(lambda: CamVidDataset(tmp_path, "train"), "have no image", "0001TP_009999.png")
    _one_line_error(lambda: CamVidDataset(tmp_path, "val"), "no val/ folder")


def test_a_reader_without_classes_is_refused_when_defined():
    """A reader must name its classes (INFO, or its own describe); one that does neither fails
    when its class is defined, not at the first run."""
    with pytest.raises(TypeError, match="Nameless sets neither INFO nor describe"):
        type("Nameless", (SegmentationDataset,), {"name": "nameless"})

    class Described(SegmentationDataset):
        name = "described"

        @classmethod
        def describe(cls, data_dir=None):
            return ADE20K

    assert Described.describe() is ADE20K


# -- a folder of one's own ----------------------------------------------------------------------

def test_classes_file_names_colours_and_defaults(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# comment\nroad 128 64 128\n\ntraffic light 250 170 30\nsky 70 130 180\n")
    names, colours = read_classes(path)
    assert names == ("road", "traffic light", "sky")
    assert colours.tolist() == [[128, 64, 128], [250, 170, 30], [70, 130, 180]]
    path.write_text("background\ncat\ndog\n")
    assert read_classes(path) == (("background", "cat", "dog"), None)
    root = tmp_path / "data"
    _folder_tree(root, classes="background\ncat\ndog\n")
    info = dataset_info("folder", root)
    assert info.palette.tolist() == [list(c) for c in MMSEG_VOC_COLOURS[:3]]  # VOC colour map
    assert info.class_names == ("background", "cat", "dog") and info.recipe is None


@pytest.mark.parametrize("text, needle", [
    ("road 1 2 3\nsky\n", "colours given for some classes only"),
    ("road\nsky\nroad\n", "line 3: class 'road' repeats line 1"),
    ("road 1 2 300\nsky 1 2 3\n", "line 1: colour (1, 2, 300) outside 0..255"),
    ("road\n", "1 classes; expected 2 to 255"),
])
def test_classes_file_errors_name_the_file_and_line(tmp_path, text, needle):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    _one_line_error(lambda: read_classes(path), str(path), needle)


def test_folder_reads_index_masks_with_nested_names(tmp_path):
    masks = _folder_tree(tmp_path)
    dataset = FolderDataset(tmp_path, "train")
    assert [n for _, _, n in dataset] == ["x", "sub/y"]
    for label, name in zip(_labels(dataset), ("x", "sub/y")):
        np.testing.assert_array_equal(label, masks[name])
    assert dataset.info.class_names == ("road", "sky", "tree")
    assert [n for _, _, n in FolderDataset(tmp_path, "all")] == ["sub/y", "x"]
    listed = tmp_path / "mine.txt"
    listed.write_text("sub/y.jpg\n")
    assert [n for _, _, n in build_dataset("folder", tmp_path, "train", listed)] == ["sub/y"]


def test_folder_errors(tmp_path):
    masks = _folder_tree(tmp_path)
    # the classes file disagrees with the masks: value 3 with 3 classes
    bad = masks["x"].copy()
    bad[0, 1] = 3
    _grey(tmp_path / "masks" / "x.png", bad)
    _one_line_error(lambda: FolderDataset(tmp_path, "train")[0], "masks/x.png", "[3]",
                    "classes.txt", "0..2")
    # a mask without its image, an image without its mask
    _grey(tmp_path / "masks" / "z.png", bad)
    _one_line_error(lambda: FolderDataset(tmp_path, "train"), "have no image", "masks/z.png")
    (tmp_path / "masks" / "z.png").unlink()
    (tmp_path / "masks" / "sub" / "y.png").unlink()
    _one_line_error(lambda: FolderDataset(tmp_path, "train"), "have no label", "y.jpg")
    assert len(FolderDataset(tmp_path, "train", has_labels=False)) == 2
    # missing split list, names that are no image, two images of one name
    _one_line_error(lambda: FolderDataset(tmp_path, "val"), "splits/val.txt", "train, all")
    (tmp_path / "splits" / "train.txt").write_text("x\nmissing\n")
    _one_line_error(lambda: FolderDataset(tmp_path, "train", has_labels=False), "missing",
                    "no image under images/")
    _png_rgb(tmp_path / "images" / "x.png")
    _one_line_error(lambda: FolderDataset(tmp_path, "all", has_labels=False), "x.jpg and x.png")
    (tmp_path / "classes.txt").unlink()
    _one_line_error(lambda: FolderDataset(tmp_path, "all"), "no classes.txt")


# -- output encoders ----------------------------------------------------------------------------

def _decode_written(name: str, path: Path) -> np.ndarray:
    """Train ids of a written prediction, by the dataset's rule typed here."""
    values = _pixels(path).astype(np.int64)
    if name == "ade20k":
        return np.where(values == 0, 255, values - 1)
    if name == "camvid":
        return np.where(values == 11, 255, values)
    return values  # voc: indices; 255 stays 255


@pytest.mark.parametrize("name", ["voc", "ade20k", "camvid"])
def test_palette_outputs_round_trip_in_the_dataset_encoding(tmp_path, name):
    info = dataset_info(name)
    rng = np.random.default_rng(0)
    train_ids = rng.integers(0, info.num_classes, (H, W))
    train_ids[0, :3] = 255
    (path,) = info.write_prediction(tmp_path, "sub/sample", train_ids)
    assert path == tmp_path / "labels" / "sub" / "sample.png"
    with Image.open(path) as im:
        assert im.mode == "P"
        palette = np.array(im.getpalette()[:768]).reshape(256, 3)
    np.testing.assert_array_equal(_decode_written(name, path), train_ids)
    values = _pixels(path)
    for value in np.unique(values):  # each id is drawn in its class colour
        class_id = _decode_written(name, path)[values == value][0]
        if class_id != 255:
            assert palette[value].tolist() == info.palette[class_id].tolist()
    np.testing.assert_array_equal(info.to_train_ids(info.encode(train_ids), path), train_ids)


def test_cityscapes_output_is_labelids_and_colour(tmp_path):
    train_ids = np.array([[0, 13, 18], [10, 255, 5]])
    label_path, colour_path = CITYSCAPES.write_prediction(tmp_path, "berlin/berlin_000000_000019",
                                                          train_ids)
    assert label_path == tmp_path / "labelIds" / "berlin" / "berlin_000000_000019_labelIds.png"
    assert colour_path == tmp_path / "color" / "berlin" / "berlin_000000_000019_color.png"
    assert _pixels(label_path).tolist() == [[7, 26, 33], [23, 0, 17]]
    assert _pixels(colour_path)[0, 1].tolist() == [0, 0, 142]  # car


def test_folder_output_uses_the_classes_file_colours(tmp_path):
    _folder_tree(tmp_path)
    info = dataset_info("folder", tmp_path)
    (path,) = info.write_prediction(tmp_path / "out", "sub/y", np.array([[0, 1], [2, 255]]))
    with Image.open(path) as im:
        palette = im.getpalette()
        assert np.asarray(im).tolist() == [[0, 1], [2, 255]]
    assert palette[:6] == [128, 64, 128, 70, 130, 180]


def test_encoders_refuse_ids_outside_the_classes(tmp_path):
    for info in (CITYSCAPES, VOC, ADE20K, CAMVID):
        with pytest.raises(ValueError, match=rf"\[{info.num_classes}\]"):
            info.write_prediction(tmp_path, "a/b", np.array([[0, info.num_classes]]))


# -- synthetic layouts --------------------------------------------------------------------------

SYN = dict(num_train=2, num_val=1, num_test=1, height=32, width=64, seed=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: make_synthetic(root / layout, layout=layout, **SYN)
            for layout in ("cityscapes", "voc", "ade20k", "camvid", "folder")}


def test_every_layout_reads_back_through_the_registry(synthetic):
    for name, root in synthetic.items():
        info = dataset_info(name, root)
        for split in (info.train_split, info.val_split):
            dataset = build_dataset(name, root, split)
            assert dataset.check_files() == len(dataset) > 0
            for image, label, sample in dataset:
                assert image.shape == (3, 32, 64) and label.dtype == torch.int64
                values = set(label.unique().tolist())
                assert values <= set(range(info.num_classes)) | {255}, (name, sample)
        test = build_dataset(name, root, info.test_split, has_labels=False)
        assert len(test) >= 1


def test_synthetic_layouts_map_the_same_scene_to_each_datasets_classes(synthetic):
    """The train scene 0 of every layout is the Cityscapes scene 0 relabelled: where the
    Cityscapes labelIds say car (26) the others say their car."""
    cs = _pixels(next(synthetic["cityscapes"].glob(
        "gtFine/train/aachen/aachen_000000_*_labelIds.png")))
    car = cs == 26
    assert car.any()
    voc = _pixels(synthetic["voc"] / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png")
    assert _mode(synthetic["voc"] / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png") == "P"
    assert set(np.unique(voc[car])) <= {7, 255} and (voc[car] == 7).any()  # 255: object borders
    assert (voc[cs == 23] == 0).all()  # sky is background
    ade = _pixels(
        synthetic["ade20k"] / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png")
    assert (ade[car] == 21).all() and (ade[cs == 23] == 3).all() and (ade[cs == 0] == 0).all()
    camvid = _pixels(synthetic["camvid"] / "CamVid/trainannot/0001TP_000000.png")
    assert (camvid[car] == 8).all() and (camvid[cs == 23] == 0).all() and (camvid[cs == 0] == 11).all()
    folder = _pixels(synthetic["folder"] / "masks/train_0000.png")
    assert (folder[car] == 6).all() and (folder[cs == 0] == 255).all()
    names, colours = read_classes(synthetic["folder"] / "classes.txt")
    assert names[6] == "vehicle" and names[7] == "street furniture" and colours is not None


def test_synthetic_voc_lists_and_sbd_masks(synthetic):
    sets = synthetic["voc"] / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    read = lambda s: (sets / f"{s}.txt").read_text().split()  # noqa: E731
    assert read("train") == ["2007_000000", "2007_000001"] and read("val") == ["2008_000000"]
    assert read("trainval") == read("train") + read("val") and read("test") == ["2009_000000"]
    assert read("train_aug") == read("train") + ["2011_000000"]  # plus num_train // 2 SBD-only
    aug = synthetic["voc"] / "VOCdevkit/VOC2012/SegmentationClassAug/2011_000000.png"
    assert _mode(aug) == "L"
    assert (synthetic["voc"] / "VOCdevkit/VOC2012/JPEGImages/2009_000000.jpg").is_file()


def test_synthetic_cityscapes_instance_ids_follow_cityscapesscripts(synthetic):
    """Stuff pixels hold their labelId, instance pixels labelId * 1000 + k (instId // 1000 is
    the labelId, as evalPixelLevelSemanticLabeling reads it), each instance one region."""
    for label_path in synthetic["cityscapes"].glob("gtFine/*/*/*_labelIds.png"):
        ids = _pixels(label_path).astype(np.int64)
        inst = _pixels(str(label_path).replace("labelIds", "instanceIds")).astype(np.int64)
        things = np.isin(ids, [24, 25, 26, 27, 28, 29, 30, 31, 32, 33])
        np.testing.assert_array_equal(inst[~things], ids[~things])
        np.testing.assert_array_equal(inst[things] // 1000, ids[things])
        for value in np.unique(inst[things]):
            count, _ = cv2.connectedComponents((inst == value).astype(np.uint8), connectivity=8)
            assert count == 2, (label_path, value)
        colour = _pixels(str(label_path).replace("labelIds", "color"))
        assert (colour[ids == 7] == (128, 64, 128)).all() and (colour[ids == 26] == (0, 0, 142)).all()


def test_make_synthetic_cli_writes_a_layout(tmp_path, capsys):
    synthetic_main(["--out", str(tmp_path / "v"), "--layout", "voc", "--num-train", "2",
                    "--num-val", "1", "--num-test", "0", "--height", "32", "--width", "32"])
    assert "voc layout" in capsys.readouterr().out
    assert len(list((tmp_path / "v").rglob("*.jpg"))) == 2 + 1 + 1
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path / "x"), "--layout", "coco"])
    assert re.search(r"invalid choice: 'coco'", capsys.readouterr().err)
