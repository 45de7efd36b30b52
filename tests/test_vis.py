"""skd.vis: colours, error maps, blends and the panel layout, checked pixel by pixel on tiny
label maps; PNGs written and read back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skd.data.labels import PALETTE
from skd.errors import SkdError
from skd.vis import GAP, STRIP, colorize, error_map, make_panel, raw_to_rgb, save_png, write_panel

# a 3-class palette, written out: red, green, blue
PAL = np.array([(200, 0, 0), (0, 200, 0), (0, 0, 200)], dtype=np.uint8)
GT = np.array([[0, 1], [2, 255]])
PRED = np.array([[0, 2], [2, 1]])
TEACHER = np.array([[1, 1], [2, 0]])
IMAGE = np.array([[(10, 20, 30), (40, 50, 60)], [(70, 80, 90), (100, 110, 120)]], dtype=np.uint8)
BLACK, WHITE, RED, GREY = (0, 0, 0), (255, 255, 255), (255, 0, 0), (128, 128, 128)


def test_colorize_uses_the_palette_and_black_for_ignore_and_unknown_ids():
    out = colorize(np.array([[0, 1, 2], [255, 3, -1]]), PAL)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out.tolist() == [[[200, 0, 0], [0, 200, 0], [0, 0, 200]], [list(BLACK)] * 3]
    # Cityscapes: train id 13 (car) is (0, 0, 142) in cityscapesScripts' colours
    assert colorize(np.array([[13]]), PALETTE)[0, 0].tolist() == [0, 0, 142]


def test_error_map_marks_wrong_red_correct_black_ignored_grey():
    out = error_map(PRED, GT)
    assert out.tolist() == [[list(BLACK), list(RED)], [list(BLACK), list(GREY)]]


def test_raw_to_rgb_from_the_loaders_raw_bgr_chw_with_nan_padding():
    raw = torch.tensor([[[1.4, float("nan")]], [[2.6, 300.0]], [[3.0, -5.0]]])  # (3, 1, 2) B, G, R
    assert raw_to_rgb(raw).tolist() == [[[3, 3, 1], [0, 255, 0]]]  # RGB, rounded, clipped, NaN -> 0
    hwc = np.array([[[1, 2, 3]]], dtype=np.uint8)  # an (H, W, 3) BGR array as cv2.imread gives
    assert raw_to_rgb(hwc).tolist() == [[[3, 2, 1]]]


def tile(panel: np.ndarray, col: int, top: int, w: int = 2) -> np.ndarray:
    x = col * (w + GAP)
    return panel[top:, x:x + w]


def test_panel_columns_pixel_by_pixel():
    panel = make_panel(IMAGE, PRED, PAL, gt=GT, teacher=TEACHER, labels=False)
    assert panel.shape == (2, 5 * 2 + 4 * GAP, 3) and panel.dtype == np.uint8
    assert tile(panel, 0, 0).tolist() == IMAGE.tolist()
    assert tile(panel, 1, 0).tolist() == [[[200, 0, 0], [0, 200, 0]], [[0, 0, 200], list(BLACK)]]
    assert tile(panel, 2, 0).tolist() == [[[200, 0, 0], [0, 0, 200]], [[0, 0, 200], [0, 200, 0]]]
    assert tile(panel, 3, 0).tolist() == [[list(BLACK), list(RED)], [list(BLACK), list(GREY)]]
    assert tile(panel, 4, 0).tolist() == [[[0, 200, 0], [0, 200, 0]], [[0, 0, 200], [200, 0, 0]]]
    gap = panel[:, 2:2 + GAP]
    assert (gap == 255).all()


def test_overlay_blends_prediction_over_image():
    panel = make_panel(IMAGE, PRED, PAL, labels=False, overlay=True, alpha=0.5)
    assert panel.shape == (2, 2 * 2 + GAP, 3)  # no ground truth: image | prediction only
    # 0.5 * (200, 0, 0) + 0.5 * (10, 20, 30) = (105, 10, 15); pixel (0, 1) class 2: (20, 25, 130)
    assert tile(panel, 1, 0)[0].tolist() == [[105, 10, 15], [20, 25, 130]]
    quarter = make_panel(IMAGE, PRED, PAL, labels=False, overlay=True, alpha=0.25)
    # 0.25 * 200 + 0.75 * 10 = 57.5 -> 58 and 0.75 * 30 = 22.5 -> 22: rint rounds halves to even
    assert tile(quarter, 1, 0)[0, 0].tolist() == [58, 15, 22]


def test_label_strip_names_columns_above_the_tiles():
    img = np.zeros((30, 120, 3), dtype=np.uint8)
    lbl = np.zeros((30, 120), dtype=np.int64)
    panel = make_panel(img, lbl, PAL, gt=lbl)
    assert panel.shape == (STRIP + 30, 4 * 120 + 3 * GAP, 3)
    strip = panel[:STRIP, :120]
    assert (strip == 255).mean() > 0.5 and (strip < 128).any()  # white with dark text
    assert (panel[STRIP:, :120] == 0).all()                     # the tile starts below it
    # each column's strip holds text of its own
    for col in range(4):
        assert (panel[:STRIP, col * (120 + GAP):col * (120 + GAP) + 120] < 128).any()


def test_scale_resizes_each_column_nearest_for_labels():
    panel = make_panel(IMAGE, PRED, PAL, gt=GT, labels=False, scale=2.0)
    assert panel.shape == (4, 4 * 4 + 3 * GAP, 3)
    gt_tile = tile(panel, 1, 0, w=4)
    assert gt_tile[:2, :2].tolist() == [[[200, 0, 0]] * 2] * 2 and gt_tile[3, 3].tolist() == list(BLACK)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="ground truth is"):
        make_panel(IMAGE, PRED, PAL, gt=np.zeros((3, 3), dtype=np.int64))


def test_png_written_and_read_back(tmp_path):
    panel = make_panel(IMAGE, PRED, PAL, gt=GT)
    path = save_png(tmp_path / "sub" / "p.png", panel)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert back.tolist() == panel.tolist()
    raw = torch.from_numpy(IMAGE[..., ::-1].copy()).permute(2, 0, 1).float()  # BGR (3, H, W)
    p2 = write_panel(tmp_path / "q.png", raw, PRED, PAL, gt=GT)
    assert np.asarray(Image.open(p2).convert("RGB")).tolist() == panel.tolist()


def test_unwritable_png_is_an_error_naming_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SkdError, match=r"could not write .*file.*p\.png"):
        save_png(blocker / "p.png", make_panel(IMAGE, PRED, PAL))
