"""What a dataset is, as data: classes, colours, splits, how its mask files map to train ids and
how a prediction is written back in its own encoding; plus its training recipe from the papers.

Every dataset reader (`skd.data.cityscapes`, `voc`, `ade20k`, `camvid`, `folder`) describes itself
with one `DatasetInfo`; the registry (`skd.data.registry`) lists the readers. Train ids are
0..K-1 with 255 = ignore everywhere inside skd; a dataset's files may use other values (Cityscapes
labelIds, ADE20K's 1-based ids, CamVid's void 11), and two 256-entry tables translate:
`decode_table` (file value -> train id) and `encode_table` (train id -> file value).
"""
from __future__ import annotations

import io

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from skd.data.files import DataFileError
from skd.errors import SkdError
from skd.io import write_bytes_atomic

IGNORE_INDEX = 255
# decode_table entry of a file value that must not occur in a mask of the dataset.
NOT_ALLOWED = -1

Writer = Callable[["DatasetInfo", Path, str, np.ndarray], list[Path]]


@dataclass(frozen=True)
class Recipe:
    """A dataset's training defaults as published (what `skd-train --dataset` starts from).

    crop: (h, w) training crop; batch_size: global batch; num_steps: iterations; lr: base
    learning rate of the student (poly schedule); source: where each figure was read;
    note: what could not be confirmed, or how the source's setting differs from skd's.
    """

    crop: tuple[int, int]
    batch_size: int
    num_steps: int
    lr: float
    source: str
    note: str = ""


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """One dataset, described.

    Attributes:
        name: the registry key (`--dataset NAME`).
        title: the dataset's name for people.
        class_names: K names in train-id order.
        palette: (K, 3) uint8 RGB colour of each train id.
        splits: split name -> whether its masks are on disk as users download it.
        train_split, val_split, test_split: the standard choices for training, validation and
            prediction (`skd-test`).
        decode_table: (256,) int16; entry v is the train id of mask file value v, 255 for an
            ignored value, NOT_ALLOWED (-1) for a value the dataset never uses.
        encode_table: (256,) uint8; entry t is the file value that writes train id t (255, the
            ignore id, maps to the dataset's own void value).
        file_palette: (256, 3) uint8 RGB colour of each file value (the palette of the PNGs
            `write_prediction` writes, and of the synthetic colour renderings).
        mask_encoding: one line saying how the dataset's mask files hold classes.
        writer: writes one prediction (see `write_prediction`).
        recipe: the published training defaults, or None where the literature gives none.
        sources: what -> "repository, file" for the class list, palette and encoding.
    """

    name: str
    title: str
    class_names: tuple[str, ...]
    palette: np.ndarray
    splits: Mapping[str, bool]
    train_split: str
    val_split: str
    test_split: str
    decode_table: np.ndarray
    encode_table: np.ndarray
    file_palette: np.ndarray
    mask_encoding: str
    writer: Writer
    recipe: Recipe | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        k = len(self.class_names)
        checks = {
            "palette": self.palette.shape == (k, 3) and self.palette.dtype == np.uint8,
            "decode_table": self.decode_table.shape == (256,),
            "encode_table": self.encode_table.shape == (256,) and self.encode_table.dtype == np.uint8,
            "file_palette": self.file_palette.shape == (256, 3) and self.file_palette.dtype == np.uint8,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"dataset {self.name}: malformed {', '.join(bad)}")
        for array in (self.palette, self.decode_table, self.encode_table, self.file_palette):
            array.flags.writeable = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_train_ids(self, mask: np.ndarray, path: Path | str) -> np.ndarray:
        """Map the values of one mask file to train ids.

        Args:
            mask: (H, W) uint8 values as stored in `path` (see `skd.data.files.read_mask`).
            path: the file, named in the error.
        Returns:
            (H, W) uint8 train ids 0..K-1, 255 where the dataset's encoding says ignore.
        Raises:
            DataFileError naming the file and the values that are not classes of the dataset.
        """
        train = self.decode_table[mask]
        if (train == NOT_ALLOWED).any():
            bad = np.unique(mask[train == NOT_ALLOWED])
            raise DataFileError(
                f"{path}: mask values {bad[:10].tolist()} are not {self.title} classes "
                f"({self.mask_encoding}); check the mask files and --dataset")
        return train.astype(np.uint8)

    def encode(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids (H, W) -> the dataset's own file values (H, W) uint8.

        Raises:
            ValueError naming the values that are neither a class (0..K-1) nor 255.
        """
        train_ids = np.asarray(train_ids)
        _check_train_ids(train_ids, self.num_classes)
        return self.encode_table[train_ids.astype(np.intp)]

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> (H, W, 3) uint8 RGB in the dataset's palette (ignore: black)."""
        train_ids = np.asarray(train_ids)
        _check_train_ids(train_ids, self.num_classes)
        lut = np.zeros((256, 3), np.uint8)
        lut[:self.num_classes] = self.palette
        return lut[train_ids.astype(np.intp)]

    def write_prediction(self, out_dir: Path | str, name: str, train_ids: np.ndarray) -> list[Path]:
        """Write one predicted (H, W) train-id map for sample `name` under `out_dir`, in the
        dataset's own encoding (Cityscapes: labelIds + colour preview; the others: one palette
        PNG whose pixel values are the dataset's ids). Returns the files written."""
        return self.writer(self, Path(out_dir), name, np.asarray(train_ids))

    def split_has_labels(self, split: str) -> bool:
        """Whether `split` comes with masks; SkdError naming --split for an unknown split."""
        if split not in self.splits:
            raise SkdError(f"--split {split}: {self.title} has splits "
                           f"{', '.join(self.splits)}; pick one of them")
        return self.splits[split]


def _check_train_ids(train_ids: np.ndarray, num_classes: int) -> None:
    if train_ids.ndim != 2 or not np.issubdtype(train_ids.dtype, np.integer):
        raise ValueError(f"expected an integer (H, W) train-id map, got shape {train_ids.shape} "
                         f"and dtype {train_ids.dtype}")
    bad = (train_ids < 0) | ((train_ids >= num_classes) & (train_ids != IGNORE_INDEX))
    if bad.any():
        values = np.unique(train_ids[bad])[:10].tolist()
        raise ValueError(f"train ids {values} are outside 0..{num_classes - 1} (and not the "
                         f"ignore id {IGNORE_INDEX}); the model predicts more classes than the "
                         f"dataset has")


# -- tables -------------------------------------------------------------------------------------

def decode_table(mapping: Mapping[int, int]) -> np.ndarray:
    """(256,) int16 table: `mapping[v]` for the listed file values, NOT_ALLOWED elsewhere."""
    table = np.full(256, NOT_ALLOWED, np.int16)
    for value, train_id in mapping.items():
        table[value] = train_id
    return table


def encode_table(mapping: Mapping[int, int], void: int) -> np.ndarray:
    """(256,) uint8 table: `mapping[t]` for the train ids listed, `void` elsewhere (255 too)."""
    table = np.full(256, void, np.uint8)
    for train_id, value in mapping.items():
        table[train_id] = value
    return table


def file_palette(colours: Mapping[int, tuple[int, int, int]]) -> np.ndarray:
    """(256, 3) uint8 palette: `colours[v]` for the file values listed, black elsewhere."""
    out = np.zeros((256, 3), np.uint8)
    for value, rgb in colours.items():
        out[value] = rgb
    return out


def bit_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map, (n, 3) uint8 RGB: the bits of index i spread over the colour
    channels, most significant first (VOCdevkit `VOClabelcolormap.m`): bit 3j of i sets bit 7-j
    of red, bit 3j+1 of green, bit 3j+2 of blue. Index 0 is black, 1 (128, 0, 0), 255 is the
    VOC border colour (224, 224, 192)."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        rgb = [0, 0, 0]
        c = i
        for j in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - j)
            c >>= 3
        out[i] = rgb
    return out


# -- writers ------------------------------------------------------------------------------------

def write_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write (H, W) uint8 values (a palette PNG when `palette` (256, 3) RGB is given) or an
    (H, W, 3) RGB image; the parent folder is created. Encoded in memory and written checked and
    atomically (skd.io: cv2.imwrite reports success for a small file a full disk truncated to 0
    bytes), so the file is the old one or the new one; SkdError naming the file on failure."""
    if palette is not None:
        im = Image.fromarray(np.ascontiguousarray(array, np.uint8))
        im.putpalette(palette.reshape(-1).tolist())
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        if array.ndim == 3:
            array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(array))
        if not ok:
            raise SkdError(f"--out: could not encode {path} as PNG")
        data = png.tobytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SkdError(f"--out: could not create {path.parent} ({e.strerror})") from None
    write_bytes_atomic(path, data)
    return path


def write_palette_prediction(info: DatasetInfo, out_dir: Path, name: str,
                             train_ids: np.ndarray) -> list[Path]:
    """`<out>/labels/<name>.png`: a palette PNG whose pixel values are the dataset's own ids
    (`info.encode`) and whose palette is `info.file_palette`, so one file is both the
    machine-readable result and its colour preview."""
    values = info.encode(train_ids)
    return [write_png(out_dir / "labels" / f"{name}.png", values, info.file_palette)]
