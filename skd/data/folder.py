"""A dataset of the user's own: a folder of images, a folder of index masks, a classes file and
split lists.

Layout:
    <root>/images/<name>.<ext>     any of .png .jpg .jpeg .bmp .tif .tiff; subfolders allowed
    <root>/masks/<name>.png        8-bit grey or palette PNG: pixel value = class index
                                   0..K-1, 255 = ignore; no other value is allowed
    <root>/classes.txt             one class per line, in index order (line 1 = class 0):
                                       name            or   name R G B
                                   names may hold spaces; R G B (0..255) give the class colour,
                                   for every class or for none (then the VOC colour map is used);
                                   blank lines and lines starting with '#' are skipped
    <root>/splits/<split>.txt      one <name> per line (the image path under images/, with or
                                   without its extension); split "all" is every image

`<name>` is the sample name: the image's path under images/ without extension, e.g. "a/b/img1".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skd.data.base import SegmentationDataset, Transform, missing_images_error, resolve_root
from skd.data.files import Item, read_name_list, summarize
from skd.data.info import (
    IGNORE_INDEX,
    DatasetInfo,
    bit_colormap,
    decode_table,
    encode_table,
    file_palette,
    write_palette_prediction,
)
from skd.errors import SkdError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CLASSES_FILE = "classes.txt"
ALL_SPLIT = "all"
MAX_CLASSES = 255  # 255 is the ignore value, so a mask holds at most classes 0..254
_LAYOUT = "images/, masks/, classes.txt and splits/<split>.txt"


def read_classes(path: Path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Class names and colours of a classes file (format in the module docstring).

    Returns:
        (names in index order, (K, 3) uint8 RGB colours or None where no line gives one).
    Raises:
        SkdError naming the file (and the line): unreadable, a colour out of 0..255, colours on
        some lines only, a repeated name, fewer than 2 or more than 255 classes.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SkdError(f"classes file {path}: cannot be read ({exc.strerror}); write one class "
                       f"per line, 'name' or 'name R G B'")
    except UnicodeDecodeError:
        raise SkdError(f"classes file {path}: not a text file; write one class per line, 'name' or "
                       f"'name R G B'") from None
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        colour = None
        if len(fields) >= 4 and all(_is_int(f) for f in fields[-3:]):
            colour = tuple(int(f) for f in fields[-3:])
            if not all(0 <= c <= 255 for c in colour):
                raise SkdError(f"classes file {path} line {number}: colour {colour} outside "
                               f"0..255; write 'name R G B' with 8-bit values")
            fields = fields[:-3]
        name = " ".join(fields)
        if name in seen:
            raise SkdError(f"classes file {path} line {number}: class {name!r} repeats line "
                           f"{seen[name]}; each class once, in index order")
        seen[name] = number
        names.append(name)
        colours.append(colour)
    if not 2 <= len(names) <= MAX_CLASSES:
        raise SkdError(f"classes file {path}: {len(names)} classes; expected 2 to {MAX_CLASSES} "
                       f"(mask value 255 is ignore)")
    given = [c is not None for c in colours]
    if any(given) and not all(given):
        missing = [names[i] for i, g in enumerate(given) if not g]
        raise SkdError(f"classes file {path}: colours given for some classes only (none for "
                       f"{summarize(missing)}); give 'name R G B' on every line or on none")
    return tuple(names), (np.array(colours, np.uint8) if all(given) else None)


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def folder_info(classes_path: Path) -> DatasetInfo:
    """The DatasetInfo of a folder dataset whose classes file is `classes_path`."""
    names, colours = read_classes(classes_path)
    k = len(names)
    palette = colours if colours is not None else bit_colormap(k)
    splits_dir = classes_path.parent / "splits"
    splits = {p.stem: True for p in sorted(splits_dir.glob("*.txt"))} if splits_dir.is_dir() else {}
    splits[ALL_SPLIT] = True
    return DatasetInfo(
        name="folder",
        title=f"folder dataset {classes_path.parent}",
        class_names=names,
        palette=palette,
        splits=splits,
        train_split="train",
        val_split="val",
        test_split="test",
        decode_table=decode_table({**{v: v for v in range(k)}, IGNORE_INDEX: IGNORE_INDEX}),
        encode_table=encode_table({t: t for t in range(k)}, void=IGNORE_INDEX),
        file_palette=file_palette(dict(enumerate(map(tuple, palette.tolist())))),
        mask_encoding=f"class indices 0..{k - 1} of {classes_path}, 255 = ignore",
        writer=write_palette_prediction,
        recipe=None,
        sources={"classes, palette": str(classes_path)},
    )


class FolderDataset(SegmentationDataset):
    """Images and index masks of a user's own folder (layout in the module docstring).

    Args:
        data_dir: the folder holding images/, masks/ and classes.txt.
        split: a list under splits/ (train, val, ...) or "all".
        list_path: a split list elsewhere (same format: one name per line).
        transform, has_labels: as in `SegmentationDataset`.
        classes_file: the classes file; default `<data_dir>/classes.txt`.

    Items: (image, label, "<name>"), the image's path under images/ without extension.
    """

    name = "folder"
    missing_label_fix = "add their masks under masks/ (same name, .png), or predict without labels"

    @classmethod
    def describe(cls, data_dir: str | Path | None = None) -> DatasetInfo:
        if data_dir is None:
            raise SkdError(f"--dataset folder reads its classes from <--data-dir>/{CLASSES_FILE}; "
                           f"give --data-dir")
        return folder_info(cls._classes_path(Path(data_dir)))

    @staticmethod
    def _classes_path(data_dir: Path) -> Path:
        root = resolve_root(data_dir, "images", (), "folder dataset", _LAYOUT)
        path = root / CLASSES_FILE
        if not path.is_file():
            raise SkdError(f"--data-dir {data_dir}: no {CLASSES_FILE}; write one class per line "
                           f"in mask-index order, 'name' or 'name R G B'")
        return path

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        list_path: str | Path | None = None,
        transform: Transform | None = None,
        has_labels: bool = True,
        classes_file: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        classes_path = Path(classes_file) if classes_file else self._classes_path(self.data_dir)
        self.info = folder_info(classes_path)
        self.root = root = resolve_root(self.data_dir, "images", (), "folder dataset", _LAYOUT)
        images = self._scan_images(root / "images")
        masks = root / "masks"
        if has_labels:
            self._check_masks_have_images(masks, images)
        if list_path is not None:
            names = self._read_split(Path(list_path), images)
            source = f"list file {list_path}"
        elif split == ALL_SPLIT:
            names = sorted(images)
            source = f"--data-dir {self.data_dir} split {split}"
        else:
            path = root / "splits" / f"{split}.txt"
            if not path.is_file():
                known = ", ".join(self.info.splits)
                raise SkdError(f"--data-dir {self.data_dir} split {split}: no split list {path}; "
                               f"write one image name per line there, or pick a split of "
                               f"{known}")
            names = self._read_split(path, images)
            source = f"--data-dir {self.data_dir} split {split}"
        items: list[Item] = []
        for name in names:
            mask = masks / f"{name}.png"
            items.append((images[name], mask if mask.is_file() else None))
        self._finish(items, source, transform, has_labels)

    def sample_name(self, image_path: Path) -> str:
        return image_path.relative_to(self.root / "images").with_suffix("").as_posix()

    @staticmethod
    def _scan_images(image_dir: Path) -> dict[str, Path]:
        """name -> image path; SkdError for two images of one name (a.jpg and a.png)."""
        found: dict[str, Path] = {}
        clashes: list[str] = []
        for path in sorted(image_dir.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            name = path.relative_to(image_dir).with_suffix("").as_posix()
            if name in found:
                clashes.append(f"{found[name].name} and {path.name}")
            found[name] = path
        if clashes:
            raise SkdError(f"{image_dir}: {len(clashes)} name(s) with two images: "
                           f"{summarize(clashes)}; keep one image per name")
        if not found:
            raise SkdError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}); expected "
                           f"the folder layout ({_LAYOUT})")
        return found

    def _check_masks_have_images(self, mask_dir: Path, images: dict[str, Path]) -> None:
        if not mask_dir.is_dir():
            return  # every image then lacks its mask, which _finish reports by name
        orphans = sorted(str(p) for p in mask_dir.rglob("*.png")
                         if p.relative_to(mask_dir).with_suffix("").as_posix() not in images)
        if orphans:
            raise missing_images_error(f"--data-dir {self.data_dir}", orphans,
                                       str(self.root / "images"))

    @staticmethod
    def _read_split(path: Path, images: dict[str, Path]) -> list[str]:
        names = []
        unknown = []
        for entry in read_name_list(path, "split list"):
            name = entry[: -len(Path(entry).suffix)] if Path(entry).suffix.lower() in \
                IMAGE_EXTENSIONS else entry
            (names if name in images else unknown).append(name)
        if unknown:
            raise SkdError(f"split list {path}: {len(unknown)} name(s) with no image under "
                           f"images/: {summarize(unknown)}; fix the list or add the images")
        return names
