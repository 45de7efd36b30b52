"""Fuzzing the Cityscapes loader with corrupt PNG bytes, odd formats and random labels (issue #6).

The property, for every input: `CityscapesDataset.__getitem__` (directly and through a
DataLoader with num_workers=0) and `check_files` either raise SkdError, on one line, naming the
offending file, or return valid tensors: image float32 (3, H, W) and finite, label int64 (H, W)
holding 0..18 or 255. Any other exception type, a crash of the process or a hang is a failure.

Every case is seeded. The byte mutations and the decompression bomb run in a child process (this
file run as a script), so a decoder that segfaults, hangs or allocates gigabytes fails a test
with the last case named instead of killing pytest.
"""
from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from skd.data import CityscapesDataset
from skd.errors import SkdError

H, W = 16, 32
BASE = "aachen_000000_000019"
# labelIds the synthetic data uses; fuzzed labels add every other uint8 value.
GOOD_IDS = np.array([0, 1, 7, 8, 11, 17, 21, 23, 24, 26, 33], np.uint8)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYTE_SEEDS = 320
BOMB_SIZE = 12000  # 144 Mpixel: inside OpenCV's 1 Gpixel limit, far above what Cityscapes needs


# -- helpers ------------------------------------------------------------------------------------

def _pair_paths(root: Path, base: str = BASE) -> tuple[Path, Path]:
    city = base.split("_")[0]
    image = root / "leftImg8bit" / "train" / city / f"{base}_leftImg8bit.png"
    label = root / "gtFine" / "train" / city / f"{base}_gtFine_labelIds.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    return image, label


def _cv2_bytes(array: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def _pil_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _good_arrays(rng: np.random.Generator, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.choice(GOOD_IDS, (h, w))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset of the length field, type, data length) of each chunk of a well-formed PNG."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append((pos, data[pos + 4:pos + 8], length))
        pos += 12 + length
    return out


def _fix_crc(data: bytearray, offset: int, length: int) -> None:
    """Recompute the CRC of the chunk at `offset`, so libpng accepts the mutated chunk and the
    mutation reaches the decoder instead of stopping at the checksum."""
    crc = zlib.crc32(bytes(data[offset + 4:offset + 8 + length]))
    data[offset + 8 + length:offset + 12 + length] = struct.pack(">I", crc)


def _bomb_png(width: int, height: int, rows: int | None = None) -> bytes:
    """8-bit grayscale PNG whose header claims width x height; `rows` rows of zeros (all of them
    when None: a real bomb, about 1000:1 compressed)."""
    rows = height if rows is None else rows
    comp = zlib.compressobj(1)
    row = bytes(1 + width)
    parts = [comp.compress(row * min(64, rows - r)) for r in range(0, rows, 64)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def _outcome(call, offending: list[Path]) -> str:
    """Run one loader call; "error" for SkdError naming an offending file, "ok" for valid
    tensors; anything else fails (other exceptions propagate)."""
    try:
        out = call()
    except SkdError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert any(str(p) in message for p in offending), (message, offending)
        return "error"
    if isinstance(out, int):  # check_files: the number of items checked
        return "ok"
    image, label = out[0], out[1]
    assert image.dtype == torch.float32 and image.shape[-3] == 3, (image.dtype, image.shape)
    assert bool(torch.isfinite(image).all())
    assert label.dtype == torch.int64 and label.shape == image.shape[:-3] + image.shape[-2:]
    assert bool((((label >= 0) & (label <= 18)) | (label == 255)).all()), label.unique()
    return "ok"


def _check_all(dataset: CityscapesDataset, offending: list[Path], loader: bool = False) -> str:
    """The item, check_files, and (optionally) a DataLoader batch; returns the item's outcome."""
    result = _outcome(lambda: dataset[0], offending)
    _outcome(dataset.check_files, offending)
    if loader:
        batches = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=0)
        assert _outcome(lambda: next(iter(batches)), offending) == result
    return result


# -- the child process: byte mutations and the decompression bomb -------------------------------

MUTATIONS = ("truncate", "flip_signature", "flip_ihdr", "flip_idat", "flip_crc", "flip_any",
             "flip_ihdr_fixed_crc", "flip_idat_fixed_crc", "flip_pixels", "ihdr_values",
             "garbage", "garbage_after_signature", "empty")


def _mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One seeded corruption of a valid PNG."""
    buf = bytearray(data)
    chunks = _chunks(data)
    ihdr = next(c for c in chunks if c[1] == b"IHDR")
    idat = next(c for c in chunks if c[1] == b"IDAT")
    if kind == "truncate":
        return data[:int(rng.integers(0, len(data)))]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
    if kind == "garbage_after_signature":
        return PNG_SIGNATURE + rng.integers(0, 256, int(rng.integers(0, 3000)), np.uint8).tobytes()
    if kind == "flip_pixels":
        # Flip bits of the inflated rows (filter-type bytes and pixels), then deflate again with
        # a correct CRC: past both checksums, so the row filters and the label check see them.
        raw = bytearray(zlib.decompress(data[idat[0] + 8:idat[0] + 8 + idat[2]]))
        for _ in range(int(rng.integers(1, 9))):
            raw[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
        rest = data[idat[0] + 12 + idat[2]:]
        return data[:idat[0]] + _chunk(b"IDAT", zlib.compress(bytes(raw))) + rest
    if kind == "ihdr_values":
        # Plausible and absurd header fields, with a correct CRC: what libpng and cv2 must judge.
        off = ihdr[0] + 8
        width = int(rng.choice([0, 1, W - 1, W + 1, 2 * W, 65535, 2**31 - 1, 2**32 - 1]))
        height = int(rng.choice([0, 1, H - 1, H + 1, 2 * H, 65535, 2**31 - 1, 2**32 - 1]))
        fields = [rng.choice([W, width]), rng.choice([H, height]),
                  rng.choice([1, 2, 4, 8, 16, 0, 3, 255]), rng.choice([0, 2, 3, 4, 6, 1, 7]),
                  rng.choice([0, 1]), rng.choice([0, 1]), rng.choice([0, 1, 2])]
        buf[off:off + 13] = struct.pack(">IIBBBBB", *map(int, fields))
        _fix_crc(buf, *ihdr[::2])
        return bytes(buf)
    start, stop, fix = 0, len(buf), None
    if kind == "flip_signature":
        start, stop = 0, 8
    elif kind.startswith("flip_ihdr"):
        start, stop, fix = ihdr[0] + 8, ihdr[0] + 8 + ihdr[2], ihdr
    elif kind.startswith("flip_idat"):
        start, stop, fix = idat[0] + 8, idat[0] + 8 + idat[2], idat
    elif kind == "flip_crc":
        off, _, length = chunks[int(rng.integers(0, len(chunks)))]
        start, stop = off + 8 + length, off + 12 + length
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.integers(start, stop))
        buf[pos] ^= 1 << int(rng.integers(0, 8))
    if kind.endswith("fixed_crc"):
        _fix_crc(buf, fix[0], fix[2])
    return bytes(buf)


def run_byte_fuzz(root: Path, num_seeds: int) -> dict[str, int]:
    """Seed s corrupts the image (even s // len(MUTATIONS)) or the label (odd) with mutation
    MUTATIONS[s % len(MUTATIONS)]; every 8th seed also goes through a DataLoader."""
    image_path, label_path = _pair_paths(root)
    rng = np.random.default_rng(0)
    image, label = _good_arrays(rng)
    good = {image_path: _cv2_bytes(image), label_path: _cv2_bytes(label)}
    for path, data in good.items():
        path.write_bytes(data)
    dataset = CityscapesDataset(root, "train")
    counts: Counter = Counter()
    for seed in range(num_seeds):
        kind = MUTATIONS[seed % len(MUTATIONS)]
        target = (image_path, label_path)[(seed // len(MUTATIONS)) % 2]
        print(f"case seed={seed} {kind} {target.name}", file=sys.stderr, flush=True)
        other = label_path if target == image_path else image_path
        other.write_bytes(good[other])
        target.write_bytes(_mutate(good[target], kind, np.random.default_rng(seed)))
        result = _check_all(dataset, [target], loader=seed % 8 == 0)
        counts[result] += 1
        counts[f"{kind}:{result}"] += 1
    return dict(counts)


def run_bomb(root: Path) -> dict:
    """Headers claiming huge sizes, as image and as label: refused without decoding. Returns the
    peak-memory growth (MB) and the messages."""
    image_path, label_path = _pair_paths(root)
    image, label = _good_arrays(np.random.default_rng(1))
    bombs = {
        "real_bomb": _bomb_png(BOMB_SIZE, BOMB_SIZE),  # all rows present: 432 MB as BGR
        "pil_refuses": _bomb_png(30000, 30000, rows=4),  # above PIL's own bomb limit
        "cv2_refuses": _bomb_png(40000, 40000, rows=4),  # above OpenCV's 1 Gpixel limit
        "libpng_refuses": _bomb_png(2**31 - 1, 1, rows=0),
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    messages = []
    for name, data in bombs.items():
        for target in (image_path, label_path):
            image_path.write_bytes(_cv2_bytes(image))
            label_path.write_bytes(_cv2_bytes(label))
            target.write_bytes(data)
            print(f"case bomb {name} {target.name}", file=sys.stderr, flush=True)
            dataset = CityscapesDataset(root, "train")
            with pytest.raises(SkdError) as info:
                dataset[0]
            messages.append(str(info.value))
            assert str(target) in messages[-1], messages[-1]
            with pytest.raises(SkdError, match=target.name):
                dataset.check_files()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"rss_growth_mb": grown, "messages": messages}


# -- tests --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def child_report(tmp_path_factory) -> dict:
    """Run the byte fuzz and the bomb in one child process (one torch import)."""
    root = tmp_path_factory.mktemp("fuzz")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, __file__, str(root), str(BYTE_SEEDS)],
                              capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired as exc:
        last = (exc.stderr or b"")[-400:]
        pytest.fail(f"loader hung (killed after 120 s); last case: {last!r}")
    if proc.returncode != 0:
        last_case = [line for line in proc.stderr.splitlines() if line.startswith("case ")][-1:]
        pytest.fail(f"child died with status {proc.returncode} at {last_case}:\n"
                    f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_corrupt_png_bytes_give_skderror_or_valid_tensors_never_a_crash(child_report):
    counts = child_report["fuzz"]
    assert counts["ok"] + counts["error"] == BYTE_SEEDS
    # Every corruption of the header or of the checksummed data must be refused by name.
    for kind in ("empty", "garbage", "flip_signature", "flip_ihdr", "flip_idat"):
        assert counts.get(f"{kind}:ok", 0) == 0, (kind, counts)
    assert counts["error"] > BYTE_SEEDS // 2


def test_huge_declared_size_is_refused_before_decoding(child_report):
    bomb = child_report["bomb"]
    assert bomb["rss_growth_mb"] < 150, bomb
    assert len(bomb["messages"]) == 8


IMAGE_MODES = {
    "RGBA": lambda rng: Image.fromarray(rng.integers(0, 256, (H, W, 4), np.uint8), "RGBA"),
    "LA": lambda rng: Image.fromarray(rng.integers(0, 256, (H, W, 2), np.uint8), "LA"),
    "L": lambda rng: Image.fromarray(rng.integers(0, 256, (H, W), np.uint8), "L"),
    "P": lambda rng: Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).quantize(16),
    "1": lambda rng: Image.fromarray(rng.integers(0, 2, (H, W), np.uint8) * 255).convert("1"),
    "I;16": lambda rng: Image.fromarray(rng.integers(0, 65536, (H, W), np.uint16)),
}


@pytest.mark.parametrize("mode", list(IMAGE_MODES) + ["RGB16", "BGRA16"])
def test_image_in_another_png_mode_is_converted_to_bgr_or_refused(tmp_path, mode):
    image_path, label_path = _pair_paths(tmp_path)
    rng = np.random.default_rng(7)
    _, label = _good_arrays(rng)
    label_path.write_bytes(_cv2_bytes(label))
    if mode == "RGB16":
        image_path.write_bytes(_cv2_bytes(rng.integers(0, 65536, (H, W, 3), np.uint16)))
    elif mode == "BGRA16":
        image_path.write_bytes(_cv2_bytes(rng.integers(0, 65536, (H, W, 4), np.uint16)))
    else:
        image_path.write_bytes(_pil_bytes(IMAGE_MODES[mode](rng)))
    # OpenCV turns every colour layout into 8-bit BGR, as the original code read them.
    assert _check_all(CityscapesDataset(tmp_path, "train"), [image_path], loader=True) == "ok"


LABEL_MODES = {
    "RGB": lambda rng: Image.fromarray(rng.choice(GOOD_IDS, (H, W, 3)), "RGB"),
    "RGBA": lambda rng: Image.fromarray(rng.choice(GOOD_IDS, (H, W, 4)), "RGBA"),
    "LA": lambda rng: Image.fromarray(rng.choice(GOOD_IDS, (H, W, 2)), "LA"),
    "P": lambda rng: Image.fromarray(rng.choice(GOOD_IDS, (H, W, 3))).quantize(8),
    "1": lambda rng: Image.fromarray(rng.integers(0, 2, (H, W), np.uint8) * 255).convert("1"),
    "I;16": lambda rng: Image.fromarray(rng.choice(GOOD_IDS, (H, W)).astype(np.uint16)),
}


@pytest.mark.parametrize("mode", LABEL_MODES)
def test_label_that_is_not_8bit_single_channel_is_refused_by_name(tmp_path, mode):
    image_path, label_path = _pair_paths(tmp_path)
    rng = np.random.default_rng(8)
    image, _ = _good_arrays(rng)
    image_path.write_bytes(_cv2_bytes(image))
    label_path.write_bytes(_pil_bytes(LABEL_MODES[mode](rng)))
    dataset = CityscapesDataset(tmp_path, "train")
    assert _outcome(lambda: dataset[0], [label_path]) == "error"
    assert _outcome(dataset.check_files, [label_path]) == "error"


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM"])
@pytest.mark.parametrize("target", ["image", "label"])
def test_other_formats_renamed_png_give_skderror_or_valid_tensors(tmp_path, fmt, target):
    image_path, label_path = _pair_paths(tmp_path)
    rng = np.random.default_rng(9)
    image, label = _good_arrays(rng)
    image_path.write_bytes(_cv2_bytes(image))
    label_path.write_bytes(_cv2_bytes(label))
    if target == "image":
        image_path.write_bytes(_pil_bytes(Image.fromarray(image[:, :, ::-1]), fmt))
    else:
        label_path.write_bytes(_pil_bytes(Image.fromarray(label, "L"), fmt))
    offending = [image_path if target == "image" else label_path]
    _check_all(CityscapesDataset(tmp_path, "train"), offending, loader=True)


def test_random_label_ids_map_to_train_ids_or_are_refused_by_name(tmp_path):
    image_path, label_path = _pair_paths(tmp_path)
    dataset = None
    outcomes = Counter()
    for seed in range(120):
        rng = np.random.default_rng(1000 + seed)
        image, _ = _good_arrays(rng)
        high = int(rng.choice([34, 40, 256]))  # inside the labelId range, just past it, any uint8
        label = rng.integers(0, high, (H, W), dtype=np.uint8)
        if seed % 5 == 0:
            label[rng.integers(0, H), rng.integers(0, W)] = rng.choice([34, 128, 254, 255])
        image_path.write_bytes(_cv2_bytes(image))
        label_path.write_bytes(_cv2_bytes(label))
        dataset = dataset or CityscapesDataset(tmp_path, "train")
        result = _check_all(dataset, [label_path], loader=seed % 10 == 0)
        outcomes[result] += 1
        assert result == ("ok" if label.max() <= 33 else "error"), (seed, label.max())
        if result == "error":
            with pytest.raises(SkdError, match=str(int(label[label > 33].min()))):
                dataset[0]
    assert outcomes["ok"] > 10 and outcomes["error"] > 10


def test_random_image_label_size_pairs_are_loaded_or_refused_naming_both(tmp_path):
    image_path, label_path = _pair_paths(tmp_path)
    dataset = None
    for seed in range(60):
        rng = np.random.default_rng(2000 + seed)
        ih, iw, lh, lw = (int(v) for v in rng.integers(1, 40, 4))
        if seed % 3 == 0:
            lh, lw = ih, iw
        image, _ = _good_arrays(rng, ih, iw)
        _, label = _good_arrays(rng, lh, lw)
        image_path.write_bytes(_cv2_bytes(image))
        label_path.write_bytes(_cv2_bytes(label))
        dataset = dataset or CityscapesDataset(tmp_path, "train")
        offending = [image_path] if (ih, iw) == (lh, lw) else [image_path, label_path]
        for call in (lambda: dataset[0], dataset.check_files):
            result = _outcome(call, offending)
            assert result == ("ok" if (ih, iw) == (lh, lw) else "error"), (seed, ih, iw, lh, lw)
            if result == "error":
                with pytest.raises(SkdError) as info:
                    call()
                assert str(image_path) in str(info.value) and str(label_path) in str(info.value)


def test_dataloader_over_a_mixed_dataset_stops_with_skderror_naming_the_bad_file(tmp_path):
    """Many pairs, some corrupted: iterating a DataLoader either yields only valid batches or
    raises SkdError naming one of the corrupted files."""
    for seed in range(12):
        root = tmp_path / str(seed)
        rng = np.random.default_rng(3000 + seed)
        corrupted = []
        for i in range(4):
            image_path, label_path = _pair_paths(root, f"aachen_{i:06d}_000019")
            image, label = _good_arrays(rng)
            image_bytes, label_bytes = _cv2_bytes(image), _cv2_bytes(label)
            if rng.random() < 0.3:
                kind = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
                if rng.random() < 0.5:
                    image_bytes = _mutate(image_bytes, kind, rng)
                    corrupted.append(image_path)
                else:
                    label_bytes = _mutate(label_bytes, kind, rng)
                    corrupted.append(label_path)
            image_path.write_bytes(image_bytes)
            label_path.write_bytes(label_bytes)
        dataset = CityscapesDataset(root, "train")
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)
        try:
            batches = list(loader)
        except SkdError as exc:
            assert any(str(p) in str(exc) for p in corrupted), (str(exc), corrupted)
            continue
        for image, label, _ in batches:
            _outcome(lambda: (image, label), [])


def test_error_in_a_dataloader_worker_keeps_its_one_line_message(tmp_path):
    """A worker re-raises in the main process with its traceback in the message; the CLI's
    one-line contract (`skd: error: <message>`) needs the original message back."""
    image_path, label_path = _pair_paths(tmp_path)
    image, label = _good_arrays(np.random.default_rng(4))
    label[0, 0] = 200
    image_path.write_bytes(_cv2_bytes(image))
    label_path.write_bytes(_cv2_bytes(label))
    dataset = CityscapesDataset(tmp_path, "train")
    with pytest.raises(SkdError) as direct:
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(SkdError) as info:
        next(iter(loader))
    assert str(info.value) == str(direct.value)
    assert str(label_path) in str(info.value) and "\n" not in str(info.value)


if __name__ == "__main__":
    # The child process of `child_report`: python tests/test_fuzz_loader.py ROOT NUM_SEEDS
    work = Path(sys.argv[1])
    report = {"bomb": run_bomb(work / "bomb"),
              "fuzz": run_byte_fuzz(work / "bytes", int(sys.argv[2]))}
    print(json.dumps(report))
