"""skd.integrity.verify: a flipped bit anywhere in a checkpoint's tensors is found (torch.load
does not check the zip CRC-32s), --resume auto skips such a file like a truncated one, and
intact or legacy (non-zip) files pass."""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from skd.engine import checkpoint as ckpt
from skd.errors import SkdError
from skd.integrity import fingerprint, verify


def flip_bit_in_tensor(path: Path, which: int = 0) -> str:
    """Flip one bit in the middle of the bytes of the `which`-th tensor storage of a torch.save
    zip, in place; returns the entry's name. The zip headers are left as they were."""
    with zipfile.ZipFile(path) as z:
        info = [i for i in z.infolist() if "/data/" in i.filename and i.file_size > 0][which]
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return info.filename


def test_a_flipped_bit_in_a_tensor_loads_silently_with_torch_but_fails_verify(tmp_path):
    path = tmp_path / "checkpoint_000002.pth"
    ckpt.atomic_save({"skd_format": 1, "step": 2, "w": torch.arange(1000.0)}, path)
    verify(path)
    entry = flip_bit_in_tensor(path)
    w = torch.load(path, weights_only=True)["w"]           # torch does not notice ...
    assert not torch.equal(w, torch.arange(1000.0))         # ... and gives a wrong tensor
    with pytest.raises(SkdError) as info:
        verify(path)
    assert str(info.value) == (f"{path}: cannot be loaded: damaged (entry {entry} fails its CRC-32 check: bit rot, "
                               f"a bad copy or a disk fault); restore it from a copy or use another file")
    with pytest.raises(SkdError, match="fails its CRC-32 check"):
        ckpt.load_checkpoint(path)


def test_resume_auto_skips_a_damaged_checkpoint_with_a_warning(tmp_path, caplog):
    ckpt.atomic_save({"skd_format": 1, "step": 1, "w": torch.zeros(64)}, tmp_path / "checkpoint_000001.pth")
    ckpt.atomic_save({"skd_format": 1, "step": 2, "w": torch.ones(64)}, tmp_path / "checkpoint_000002.pth")
    flip_bit_in_tensor(tmp_path / "checkpoint_000002.pth")
    path, state = ckpt.find_resumable(tmp_path)
    assert path.name == "checkpoint_000001.pth" and state["step"] == 1
    assert "skipping " in caplog.text and "checkpoint_000002.pth: cannot be loaded: damaged" in caplog.text


def test_a_broken_zip_directory_is_damaged_and_a_legacy_file_passes(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"w": torch.zeros(8)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        first = z.infolist()[0]
    data[first.header_offset] ^= 0xFF  # the local header's signature
    path.write_bytes(bytes(data))
    with pytest.raises(SkdError, match=r"c.pth: cannot be loaded: damaged \(entry c/data.pkl has a broken "
                                       r"header: Bad magic number for file header\)"):
        verify(path)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(8)}, legacy, _use_new_zipfile_serialization=False)
    verify(legacy)  # no checksum to check: torch.load's own errors describe such a file
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    verify(tmp_path / "plain.pkl")


def test_fingerprint_follows_the_content_not_the_name(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "moved" / "b.pth"
    b.parent.mkdir()
    ckpt.atomic_save({"w": torch.arange(10.0)}, a)
    b.write_bytes(a.read_bytes())
    assert fingerprint(a) == fingerprint(b)
    ckpt.atomic_save({"w": torch.arange(10.0) + 1}, b)
    assert fingerprint(a) != fingerprint(b)


def test_a_run_resumed_past_its_damaged_newest_checkpoint_writes_over_it(cityscapes_dir, tmp_path, capsys):
    """The crash case: the newest checkpoint rotted, the run had not finished; --resume auto takes
    the one before and continues (the damaged file is not "a later checkpoint" to protect)."""
    from skd.train import main
    from test_e2e import TINY
    flags = ["--data-dir", str(cityscapes_dir), "--snapshot-dir", str(tmp_path), *TINY, "--save-every", "1"]
    assert main([*flags, "--num-steps", "2"]) == 0
    for name in ("final.pth", "best.pth", "val_final.json"):  # as if killed before the end
        (tmp_path / name).unlink()
    flip_bit_in_tensor(tmp_path / "checkpoint_000002.pth")
    capsys.readouterr()
    assert main([*flags, "--num-steps", "2", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "skipping " in out and f"resumed from {tmp_path / 'checkpoint_000001.pth'} at step 1" in out
    verify(tmp_path / "checkpoint_000002.pth")  # written anew, intact
