"""Tests of skd.data: label mapping, augmentation, dataset reading and errors, synthetic data."""
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from skd.data import (
    IMG_MEAN,
    PALETTE,
    CityscapesDataset,
    EvalTransform,
    TrainTransform,
    colorize,
    make_synthetic,
    read_list,
    scan_split,
    to_label_ids,
    to_train_ids,
    write_list,
)
from skd.data.synthetic import main as synthetic_main
from skd.errors import SkdError
from skd.models.convention import SKD_INPUT

# Typed from the original (networks/evaluate.py lines 23-28), independently of skd/data/labels.py.
SPEC_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
SPEC_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])
SPLIT_COUNTS = {"train": 4, "val": 2, "test": 2}
SYN_H, SYN_W = 64, 128


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "cityscapes"
    return make_synthetic(root, SPLIT_COUNTS["train"], SPLIT_COUNTS["val"],
                          SPLIT_COUNTS["test"], height=SYN_H, width=SYN_W, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write_pair(root: Path, split: str, base: str, image: np.ndarray,
                label: np.ndarray | None) -> tuple[Path, Path | None]:
    """Write one Cityscapes-named pair (image BGR for cv2, labelIds) under root."""
    city = base.split("_")[0]
    image_path = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_path), image)
    if label is None:
        return image_path, None
    label_path = root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png"
    label_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(label_path), label)
    return image_path, label_path


def _small_dataset(root: Path, n: int = 3, size: tuple[int, int] = (8, 12)) -> list:
    rng = np.random.default_rng(1)
    return [
        _write_pair(root, "train", f"aachen_{i:06d}_000019",
                    rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                    rng.choice(np.array([0, 7, 8, 11, 26], np.uint8), size))
        for i in range(n)
    ]


def _encode(label: np.ndarray) -> np.ndarray:
    """A BGR uint8 image whose colour at each pixel says the train id there (ids 0..18).

    The codes lie on a parabola, so no blend of two codes (bilinear resizing) is a third one.
    """
    t = label.astype(np.int64)
    return np.stack([t * 12 + 10, (t * t * 7) // 10, 240 - t * 5], -1).astype(np.uint8)


def _decode_colour(image_chw: torch.Tensor) -> np.ndarray:
    """Transform output (3, H, W) raw float BGR back to (H, W, 3) integers (padding: -1)."""
    bgr = np.nan_to_num(image_chw.numpy().transpose(1, 2, 0), nan=-1.0)
    return np.rint(bgr).astype(np.int64)


# -- labels -------------------------------------------------------------------------------------

def test_label_lut_maps_spec_ids_and_sends_every_other_id_to_ignore():
    ids = np.arange(256, dtype=np.uint8)
    expected = np.array([SPEC_LABEL_TO_TRAIN.get(i, 255) for i in range(256)], np.uint8)
    np.testing.assert_array_equal(to_train_ids(ids), expected)
    for ignored in [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 200, 255]:
        assert to_train_ids(np.array([ignored], np.uint8))[0] == 255
    # Wider integer arrays (e.g. -1 = license plate) map too.
    np.testing.assert_array_equal(to_train_ids(np.array([-1, 7, 33, 300])), [255, 0, 18, 255])


def test_to_label_ids_inverts_the_mapping_and_sends_ignore_to_unlabeled():
    train = np.array([[0, 1, 18], [255, 10, 13]], np.uint8)
    inverse = {t: l for l, t in SPEC_LABEL_TO_TRAIN.items()}
    expected = np.vectorize(lambda t: inverse.get(int(t), 0))(train)
    np.testing.assert_array_equal(to_label_ids(train), expected)
    all_train = np.arange(19, dtype=np.uint8)
    np.testing.assert_array_equal(to_train_ids(to_label_ids(all_train)), all_train)


def test_colorize_uses_the_palette_and_paints_ignore_black():
    train = np.array([[0, 10], [255, 13]], np.uint8)
    out = colorize(train)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 64, 128]  # road
    assert out[0, 1].tolist() == [70, 130, 180]  # sky
    assert out[1, 1].tolist() == [0, 0, 142]  # car
    assert out[1, 0].tolist() == [0, 0, 0]
    assert PALETTE.shape == (19, 3)


# -- transforms ---------------------------------------------------------------------------------

def test_eval_transform_gives_the_raw_bgr_image_and_the_network_subtracts_the_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (5, 7), dtype=np.uint8)
    out_image, out_label = EvalTransform()(image, label)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 5, 7)
    assert out_label.dtype == torch.int64
    np.testing.assert_array_equal(out_image.numpy(), image.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(out_label.numpy(), label)
    np.testing.assert_allclose(IMG_MEAN, SPEC_MEAN_BGR, rtol=1e-7)
    normalised = SKD_INPUT.normalize(out_image[None])[0].numpy()
    expected = image.astype(np.float64).transpose(2, 0, 1) - SPEC_MEAN_BGR[:, None, None]
    np.testing.assert_allclose(normalised, expected, atol=1e-4)


def test_train_transform_pads_bottom_right_with_zero_image_and_ignore_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (10, 12), dtype=np.uint8)
    torch.manual_seed(0)
    out_image, out_label = TrainTransform((16, 16), random_scale=False, random_mirror=False)(
        image, label)
    assert out_image.shape == (3, 16, 16) and out_label.shape == (16, 16)
    np.testing.assert_array_equal(out_label[:10, :12].numpy(), label)
    assert (out_label[10:] == 255).all() and (out_label[:, 12:] == 255).all()
    assert out_image[:, 10:].isnan().all() and out_image[:, :, 12:].isnan().all()
    np.testing.assert_array_equal(_decode_colour(out_image)[:10, :12], image)
    normalised = SKD_INPUT.normalize(out_image[None])[0]  # padding: 0 after the mean, as the original
    assert (normalised[:, 10:] == 0).all() and (normalised[:, :, 12:] == 0).all()


def test_train_transform_crop_and_mirror_keep_every_pixel_aligned():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (20, 30), dtype=np.uint8)  # per-pixel ids: any shift shows
    image = _encode(label)
    transform = TrainTransform((24, 16), random_scale=False, random_mirror=True)
    torch.manual_seed(3)
    crops = set()
    for _ in range(12):
        out_image, out_label = transform(image, label)
        colour, lab = _decode_colour(out_image), out_label.numpy()
        real = lab != 255
        assert real.sum() == 20 * 16  # 4 padded rows, width cropped from 30 to 16
        np.testing.assert_array_equal(colour[real], _encode(lab)[real])
        assert np.isnan(out_image.numpy()[:, ~real]).all()
        crops.add(lab.tobytes())
    assert len(crops) > 6  # offsets and flips really vary


def test_train_transform_with_scaling_keeps_alignment_up_to_one_pixel_at_edges():
    """cv2's INTER_NEAREST samples at floor(x / f) and INTER_LINEAR at pixel centres, so on a
    downscale a label edge can sit one pixel off the image edge (as in the original); anywhere
    else a pixel of pure block colour must carry that block's label."""
    rng = np.random.default_rng(1)
    ids = np.array([0, 5, 10, 15, 18], np.uint8)  # gaps: an interpolated label would show
    blocks = rng.choice(ids, (6, 8))
    label = np.kron(blocks, np.ones((6, 6), np.uint8))  # 36x48, 6x6 blocks
    image = _encode(label)
    codes = {tuple(_encode(np.array([[t]]))[0, 0]): t for t in range(19)}
    transform = TrainTransform((40, 40), random_scale=True, random_mirror=True)
    torch.manual_seed(0)
    checked = blended = 0
    for _ in range(15):
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, 40, 40) and out_label.shape == (40, 40)
        colour, lab = _decode_colour(out_image), out_label.numpy()
        padded = lab == 255
        assert set(np.unique(lab)) <= set(ids.tolist()) | {255}  # label resized by nearest
        assert np.isnan(out_image.numpy()[:, padded]).all()
        blended += sum(tuple(c) not in codes for c in colour[~padded])  # image is bilinear
        edge = np.zeros_like(padded)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[1:] |= lab[1:] != lab[:-1]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        # Pixels inside a uniform 3x3 patch of colour are block interiors, not blends.
        pad = np.pad(colour, ((1, 1), (1, 1), (0, 0)), mode="edge")
        uniform = np.ones_like(padded)
        for dy in range(3):
            for dx in range(3):
                uniform &= (pad[dy:dy + 40, dx:dx + 40] == colour).all(-1)
        for (y, x) in zip(*np.nonzero(~padded & ~edge & uniform)):
            code = codes.get(tuple(colour[y, x]))
            if code is not None:
                assert code == lab[y, x], (y, x)
                checked += 1
    assert checked > 15 * 40 * 40 * 0.3 and blended > 15 * 40


def _original_train_transform(image, label, crop_h, crop_w):
    """The original CSDataSet steps (SKD dataset/datasets.py lines 157-208), written out
    literally, with its `random.randint` draws taken from torch in the same order. Its mean is
    the float32 array of train_and_eval.py line 10, which the dataset subtracts as it is."""
    def randint(a, b):
        return int(torch.randint(a, b + 1, (1,)))
    f = 0.7 + randint(0, 14) / 10.0
    image = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
    image = np.asarray(image, np.float32)
    image -= np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
    img_h, img_w = label.shape
    pad_h, pad_w = max(crop_h - img_h, 0), max(crop_w - img_w, 0)
    if pad_h > 0 or pad_w > 0:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                   value=(0.0, 0.0, 0.0))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(255,))
    img_h, img_w = label.shape
    h_off, w_off = randint(0, img_h - crop_h), randint(0, img_w - crop_w)
    image = image[h_off:h_off + crop_h, w_off:w_off + crop_w].transpose(2, 0, 1)
    label = label[h_off:h_off + crop_h, w_off:w_off + crop_w]
    if randint(0, 1) == 1:
        image, label = image[:, :, ::-1], label[:, ::-1]
    return image, label


def test_train_transform_then_normalize_equals_the_original_pad_then_crop_steps():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (18, 26), dtype=np.uint8)
    transform = TrainTransform((20, 24))
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_label = transform(image, label)
        torch.manual_seed(seed)
        ref_image, ref_label = _original_train_transform(image, label, 20, 24)
        np.testing.assert_array_equal(out_label.numpy(), ref_label)
        np.testing.assert_array_equal(SKD_INPUT.normalize(out_image[None])[0].numpy(), ref_image)  # bit-identical


def test_the_float32_mean_differs_from_the_float64_constants_by_up_to_1_5e_5():
    """Why the float32 mean matters for the bit-for-bit claim: subtracting the float64 literals
    (what skd did before, and the original's test-set loader does) rounds differently."""
    pixels = np.arange(256, dtype=np.float32)[:, None].repeat(3, 1)
    in_float32 = pixels - IMG_MEAN
    from_float64 = (pixels.astype(np.float64) - SPEC_MEAN_BGR).astype(np.float32)
    worst = np.abs(in_float32.astype(np.float64) - from_float64).max()
    assert 0 < worst <= 1.6e-5


def test_random_scale_reaches_every_factor_from_0_7_to_2_1():
    image = np.full((10, 20, 3), 128, np.uint8)
    label = np.zeros((10, 20), np.uint8)
    transform = TrainTransform((32, 48), random_scale=True, random_mirror=False)
    torch.manual_seed(0)
    sizes = set()
    for _ in range(300):
        _, out_label = transform(image, label)
        real = (out_label != 255).numpy()
        sizes.add((int(real.any(1).sum()), int(real.any(0).sum())))
    # f = 0.7 + k/10, k = 0..14: a 10x20 image becomes (7 + k) x (14 + 2k).
    assert sizes == {(7 + k, 14 + 2 * k) for k in range(15)}


def test_mirror_flips_image_and_label_together():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 19, (12, 12), dtype=np.uint8)
    image = _encode(label)
    flipped = unflipped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        ref_image, ref_label = TrainTransform((8, 8), True, False)(image, label)
        torch.manual_seed(seed)
        out_image, out_label = TrainTransform((8, 8), True, True)(image, label)
        if torch.equal(out_label, ref_label) and torch.equal(out_image, ref_image):
            unflipped += 1
        else:
            assert torch.equal(out_label, ref_label.flip(-1))
            assert torch.equal(out_image, ref_image.flip(-1))
            flipped += 1
    assert flipped >= 3 and unflipped >= 3


def test_train_transform_randomness_comes_only_from_torch():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 19, (30, 40), dtype=np.uint8)
    image = _encode(label)
    transform = TrainTransform((16, 16))
    outputs = []
    for other_seed in (1, 2):
        np.random.seed(other_seed)
        random.seed(other_seed)
        torch.manual_seed(7)
        outputs.append([transform(image, label) for _ in range(5)])
    for (i1, l1), (i2, l2) in zip(*outputs):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)
    torch.manual_seed(8)
    other = [transform(image, label) for _ in range(5)]
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(outputs[0], other))


# -- synthetic data -----------------------------------------------------------------------------

def test_synthetic_layout_and_names_are_exactly_cityscapes(synthetic_root):
    pattern = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")
    for split, count in SPLIT_COUNTS.items():
        images = sorted((synthetic_root / "leftImg8bit" / split).glob("*/*"))
        gt_files = sorted((synthetic_root / "gtFine" / split).glob("*/*"))
        assert len(images) == count and len(gt_files) == 3 * count
        for image in images:
            match = pattern.match(image.name)
            assert match and match.group(1) == image.parent.name
            base = (synthetic_root / "gtFine" / split / image.parent.name
                    / image.name.replace("_leftImg8bit.png", "_gtFine_"))
            label, instances, colour = (Path(f"{base}{kind}.png")
                                        for kind in ("labelIds", "instanceIds", "color"))
            assert {label, instances, colour} <= set(gt_files)
            with Image.open(image) as im:
                assert im.mode == "RGB" and im.size == (SYN_W, SYN_H)
            with Image.open(label) as im:
                assert im.mode == "L" and im.size == (SYN_W, SYN_H)
            with Image.open(instances) as im:  # 16-bit, as cityscapesScripts reads them
                assert im.mode.startswith("I") and im.size == (SYN_W, SYN_H)
            with Image.open(colour) as im:
                assert im.mode == "RGB" and im.size == (SYN_W, SYN_H)
    top = {p.relative_to(synthetic_root).as_posix() for p in synthetic_root.iterdir()}
    assert top == {"leftImg8bit", "gtFine"}


def test_synthetic_same_seed_gives_identical_bytes_whatever_the_counts(synthetic_root, tmp_path):
    again = make_synthetic(tmp_path / "again", 2, 1, 1, height=SYN_H, width=SYN_W, seed=0)
    files, reference = _files(again), _files(synthetic_root)
    assert len(files) == 4 * 4  # image, labelIds, instanceIds, color for 2 + 1 + 1 frames
    for name, data in files.items():
        assert reference[name] == data, name


def test_synthetic_other_seed_gives_other_scenes(synthetic_root, tmp_path):
    other = _files(make_synthetic(tmp_path / "other", 1, 0, 0, height=SYN_H, width=SYN_W, seed=1))
    reference = _files(synthetic_root)
    assert other.keys() <= reference.keys()
    assert all(reference[name] != data for name, data in other.items())


def test_synthetic_labels_are_label_ids_with_many_classes_per_image(synthetic_root):
    union = set()
    for path in sorted(synthetic_root.glob("gtFine/*/*/*_gtFine_labelIds.png")):
        ids = set(np.unique(np.asarray(Image.open(path))).tolist())
        assert ids <= set(range(34)), path
        train = {SPEC_LABEL_TO_TRAIN[i] for i in ids if i in SPEC_LABEL_TO_TRAIN}
        assert len(train) >= 6, (path, ids)
        union |= train
    assert len(union) >= 12


def test_synthetic_images_are_saved_rgb_so_cv2_reads_bgr(synthetic_root):
    image_path = next(synthetic_root.glob("leftImg8bit/train/*/*.png"))
    label_path = next(synthetic_root.glob("gtFine/train/*/" + image_path.name.replace(
        "_leftImg8bit.png", "_gtFine_labelIds.png")))
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    bgr = cv2.imread(str(image_path))
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    sky = np.asarray(Image.open(label_path)) == 23
    assert sky.sum() > 0
    assert rgb[sky][:, 2].mean() > rgb[sky][:, 0].mean() + 30  # the sky is blue


def test_make_synthetic_cli_writes_the_dataset_and_prints_it(tmp_path, capsys):
    synthetic_main(["--out", str(tmp_path / "cli"), "--num-train", "1", "--num-val", "0",
                    "--num-test", "0", "--height", "32", "--width", "64", "--seed", "5"])
    assert str(tmp_path / "cli") in capsys.readouterr().out
    assert len(list((tmp_path / "cli").rglob("*.png"))) == 4  # image + 3 gtFine files


# -- dataset ------------------------------------------------------------------------------------

def test_scan_and_list_modes_give_the_same_items(synthetic_root, tmp_path):
    scanned = scan_split(synthetic_root, "train")
    assert [p.name for p, _ in scanned] == sorted(p.name for p, _ in scanned)
    list_path = tmp_path / "train.lst"
    rel = lambda p: p.relative_to(synthetic_root).as_posix()  # noqa: E731
    lines = [f"{rel(image)}\t{rel(label)}" for image, label in scanned]
    list_path.write_text("\n".join(lines) + "\n")
    assert read_list(synthetic_root, list_path) == scanned
    by_scan = CityscapesDataset(synthetic_root, "train")
    by_list = CityscapesDataset(synthetic_root, list_path=list_path)
    assert by_scan.items == by_list.items
    names = [by_scan[i][2] for i in range(len(by_scan))]
    assert names == [by_list[i][2] for i in range(len(by_list))]
    assert names[0] == "aachen/aachen_000000_000019"


def test_write_list_round_trips_with_read_list(synthetic_root, tmp_path):
    test_images = [(image, None) for image, _ in scan_split(synthetic_root, "test")]
    items = scan_split(synthetic_root, "val") + test_images
    path = write_list(items, synthetic_root, tmp_path / "lists" / "pinned.lst")
    assert read_list(synthetic_root, path) == items
    first = path.read_text().splitlines()[0]
    assert first.startswith("leftImg8bit/val/frankfurt/") and "\tgtFine/val/frankfurt/" in first


def test_read_list_accepts_tab_space_and_image_only_lines(synthetic_root, tmp_path):
    (i0, l0), (i1, l1) = scan_split(synthetic_root, "val")
    rel = lambda p: p.relative_to(synthetic_root).as_posix()  # noqa: E731
    path = tmp_path / "mixed.lst"
    path.write_text(f"{rel(i0)}\t{rel(l0)}\n\n{rel(i1)}   {rel(l1)}\n{rel(i0)}\n")
    assert read_list(synthetic_root, path) == [(i0, l0), (i1, l1), (i0, None)]


def test_dataset_item_is_raw_bgr_and_train_id_label(synthetic_root):
    dataset = CityscapesDataset(synthetic_root, "train")
    image, label, name = dataset[0]
    assert name == "aachen/aachen_000000_000019"
    image_path, label_path = dataset.items[0]
    rgb = np.asarray(Image.open(image_path).convert("RGB")).astype(np.float64)
    expected = rgb[:, :, ::-1].transpose(2, 0, 1)
    assert image.dtype == torch.float32 and image.shape == (3, SYN_H, SYN_W)
    np.testing.assert_array_equal(image.numpy(), expected)
    ids = np.asarray(Image.open(label_path))
    expected_label = np.vectorize(lambda i: SPEC_LABEL_TO_TRAIN.get(int(i), 255))(ids)
    assert label.dtype == torch.int64
    np.testing.assert_array_equal(label.numpy(), expected_label)


def test_dataset_applies_the_given_transform(synthetic_root):
    dataset = CityscapesDataset(synthetic_root, "train", transform=TrainTransform((32, 48)))
    torch.manual_seed(0)
    image, label, _ = dataset[1]
    assert image.shape == (3, 32, 48) and label.shape == (32, 48)


def test_test_split_without_labels_gives_all_ignore(synthetic_root):
    dataset = CityscapesDataset(synthetic_root, "test", has_labels=False)
    assert len(dataset) == SPLIT_COUNTS["test"]
    image, label, name = dataset[0]
    assert name == "berlin/berlin_000000_000019"
    assert label.shape == (SYN_H, SYN_W) and (label == 255).all()


def test_check_files_passes_on_good_data(synthetic_root):
    assert CityscapesDataset(synthetic_root, "val").check_files() == SPLIT_COUNTS["val"]
    assert CityscapesDataset(synthetic_root, "train").check_files(limit=2) == 2


# -- errors -------------------------------------------------------------------------------------

def test_missing_data_dir_raises_naming_the_flag(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SkdError, match="--data-dir") as info:
        CityscapesDataset(missing, "train")
    assert str(missing) in str(info.value)


def test_data_dir_without_the_split_or_images_raises(tmp_path):
    with pytest.raises(SkdError, match="leftImg8bit/train"):
        scan_split(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(SkdError, match="no <city>"):
        scan_split(tmp_path, "train")


def test_images_without_labels_are_rejected_when_labels_are_needed(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.zeros((4, 4, 3), np.uint8), None)
    with pytest.raises(SkdError, match="aachen_000000_000019_leftImg8bit.png"):
        CityscapesDataset(tmp_path, "train")


def test_list_with_missing_files_names_all_of_them(synthetic_root, tmp_path):
    (i0, l0), _ = scan_split(synthetic_root, "val")
    rel = lambda p: p.relative_to(synthetic_root).as_posix()  # noqa: E731
    path = tmp_path / "broken.lst"
    path.write_text(f"{rel(i0)}\t{rel(l0)}\n"
                    "leftImg8bit/val/x/gone_a_leftImg8bit.png\tgtFine/val/x/gone_b_labelIds.png\n"
                    "leftImg8bit/val/x/gone_c_leftImg8bit.png\n")
    with pytest.raises(SkdError) as info:
        read_list(synthetic_root, path)
    message = str(info.value)
    assert str(path) in message and "3 listed" in message
    for name in ("gone_a_leftImg8bit.png", "gone_b_labelIds.png", "gone_c_leftImg8bit.png"):
        assert name in message
    assert "\n" not in message


def test_list_with_many_missing_files_shows_20_and_counts_the_rest(tmp_path):
    path = tmp_path / "many.lst"
    path.write_text("".join(f"img_{i:02d}.png\n" for i in range(25)))
    with pytest.raises(SkdError) as info:
        read_list(tmp_path, path)
    message = str(info.value)
    assert "img_19.png" in message and "img_20.png" not in message
    assert "and 5 more" in message


def test_corrupt_png_raises_naming_the_file(tmp_path):
    (image_path, _), (_, label_path), _ = _small_dataset(tmp_path)
    image_path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    label_path.write_bytes(b"not a png at all")
    dataset = CityscapesDataset(tmp_path, "train")
    with pytest.raises(SkdError, match=re.escape(str(image_path))):
        dataset[0]
    with pytest.raises(SkdError, match=re.escape(str(label_path))):
        dataset[1]
    with pytest.raises(SkdError, match="2 problem") as info:
        dataset.check_files()
    assert str(image_path) in str(info.value) and str(label_path) in str(info.value)


def test_image_label_size_mismatch_raises_naming_both(tmp_path):
    (image_path, label_path), *_ = _small_dataset(tmp_path)
    cv2.imwrite(str(label_path), np.full((5, 12), 7, np.uint8))
    dataset = CityscapesDataset(tmp_path, "train")
    for call in (lambda: dataset[0], dataset.check_files):
        with pytest.raises(SkdError) as info:
            call()
        assert str(image_path) in str(info.value) and str(label_path) in str(info.value)


def test_label_id_200_raises_naming_the_file_and_the_id(tmp_path):
    (_, label_path), *_ = _small_dataset(tmp_path)
    label = np.full((8, 12), 7, np.uint8)
    label[2, 3] = 200
    cv2.imwrite(str(label_path), label)
    with pytest.raises(SkdError) as info:
        CityscapesDataset(tmp_path, "train")[0]
    assert str(label_path) in str(info.value) and "200" in str(info.value)
