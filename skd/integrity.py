"""Is a weight file intact? `verify(path)` before trusting it.

Since PyTorch 1.6, torch.save writes a zip archive, and every entry of it (the pickle, each
tensor's storage) carries a CRC-32 of its bytes in the zip headers. torch.load does not check
them, so a flipped bit in a tensor loads silently. `verify` reads every entry and compares its
CRC-32 (zipfile's testzip), which detects every single-bit error and every burst up to 32 bits:
about 0.23 s for a 300 MB file from the page cache on one core (docs/reliability.md), less than
the torch.load that follows.

A file that is not a zip archive (torch's legacy format, the official SKD checkpoints saved
before 1.6, or not a checkpoint at all) carries no checksum and passes unchecked; the reader's
own errors describe it. `fingerprint` identifies a file's content cheaply, for telling a moved
teacher checkpoint from another one.
"""
from __future__ import annotations

import hashlib
import os
import zipfile

from skd.errors import SkdError

PathLike = str | os.PathLike
_BLOCK = 1 << 24


def verify(path: PathLike) -> None:
    """SkdError "<path>: cannot be loaded: damaged (...)" when `path` is a zip archive with an
    entry whose bytes do not match their CRC-32, or whose zip structure is broken; nothing when
    it is intact or not a zip archive (a missing file included: the reader says so)."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as entry:  # reading to the end checks the CRC-32
                        while entry.read(_BLOCK):
                            pass
                except zipfile.BadZipFile as exc:
                    what = ("fails its CRC-32 check: bit rot, a bad copy or a disk fault" if "CRC" in str(exc)
                            else f"has a broken header: {exc}")
                    raise SkdError(f"{path}: cannot be loaded: damaged (entry {info.filename} {what}); "
                                   f"restore it from a copy or use another file") from None
    except SkdError:
        raise
    except Exception as exc:  # zipfile raises BadZipFile, ValueError, zlib.error, EOFError, ...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SkdError(f"{path}: cannot be loaded: damaged (its zip structure is broken: {detail}); "
                       f"restore it from a copy or use another file") from None


def fingerprint(path: PathLike) -> str:
    """A short hex digest of the file's content: for a zip archive, of each entry's name, size
    and CRC-32 as the central directory lists them (no data is read); otherwise of the bytes."""
    h = hashlib.sha256()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
