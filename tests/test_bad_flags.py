"""Every bad flag of skd-train, skd-eval and skd-test is one line `skd: error: ...` naming it, and
exit status 2: values out of range, empty lists, lists that are not text, evaluations over no
labelled pixel or past the split, scales that shrink the image below 32 pixels, class counts
below the labels' ids, damaged or weights-only checkpoints. One table, run in this process."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from skd import evaluate, predict, train
from skd.engine import checkpoint as ckpt
from skd.models import build_pspnet
from test_e2e import TINY
from test_integrity import flip_bit_in_tensor

MODEL = ["--arch", "resnet18", "--width-mult", "0.25", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(cityscapes_dir, tmp_path_factory) -> dict[str, Path]:
    """A 1-step run (checkpoint_000001.pth, final.pth), a damaged copy of each, a 5-class network,
    a binary and an empty list file, a data dir whose val labels are all 'unlabeled', a file."""
    root = tmp_path_factory.mktemp("bad_flags")
    run = root / "run"
    assert train.main(["--data-dir", str(cityscapes_dir), "--snapshot-dir", str(run), *TINY, "--num-steps", "1"]) == 0
    f = {"data": cityscapes_dir, "checkpoint": run / "checkpoint_000001.pth", "final": run / "final.pth"}
    for name in ("checkpoint", "final"):
        f[f"damaged_{name}"] = root / f"damaged_{name}.pth"
        shutil.copy(f[name], f[f"damaged_{name}"])
        flip_bit_in_tensor(f[f"damaged_{name}"])
    f["five"] = root / "five.pth"
    ckpt.save_model(f["five"], build_pspnet("resnet18", num_classes=5, width_mult=0.25), 0, None)
    f["binary"] = root / "binary.lst"
    f["binary"].write_bytes(bytes(range(256)) * 4)
    f["file"] = root / "a_file"
    f["file"].write_text("x")
    f["unlabelled"] = root / "unlabelled"
    shutil.copytree(cityscapes_dir, f["unlabelled"])
    for label in (f["unlabelled"] / "gtFine" / "val").glob("*/*_labelIds.png"):
        cv2.imwrite(str(label), np.zeros(cv2.imread(str(label), cv2.IMREAD_UNCHANGED).shape, np.uint8))
    return f


def _argv(command: str, flags: list, f: dict, tmp_path: Path) -> list[str]:
    def value(x):
        return str(f[x[1:]]) if isinstance(x, str) and x.startswith("@") else str(x)
    flags = [value(x) for x in flags]
    data = ["--data-dir", str(f["data"])] if "--data-dir" not in flags else []
    if command == "train":
        return data + ["--snapshot-dir", str(tmp_path / "s"), *TINY, "--num-steps", "1", *flags]
    ckpt_flag = [] if "--ckpt" in flags else ["--ckpt", str(f["final"])]
    out = [] if "--out" in flags else ["--out", str(tmp_path / ("preds" if command == "test" else "miou.json"))]
    return data + ckpt_flag + MODEL + out + flags


# (command, flags ("@name": a file of the fixture), what the one line must contain)
CASES = [
    # skd-train: values out of range, empty lists
    ("train", ["--num-classes", "1"], "--num-classes 1: must be in [2, 255]"),
    ("train", ["--num-classes", "256"], "--num-classes 256: must be in [2, 255]"),
    ("train", ["--seed", "-1"], "--seed -1: must be in [0, 4.29497e+09]"),
    ("train", ["--seed", "100000000000000000000000"], "--seed 100000000000000000000000: must be in"),
    ("train", ["--num-workers", "100000"], "--num-workers 100000: must be in [0, 256]"),
    ("train", ["--input-size", "8"], "--input-size 8: each side must be between 16 and 4096 pixels"),
    ("train", ["--lr-g", "0"], "--lr-g 0: must be positive"),
    ("train", ["--lr-d", "nan"], "--lr-d nan: must be a finite number"),
    ("train", ["--momentum", "1"], "--momentum 1: must be in [0, 1)"),
    ("train", ["--dropout", "1"], "--dropout 1: must be in [0, 1)"),
    ("train", ["--keep-last", "0"], "--keep-last 0: must be at least 1"),
    ("train", ["--save-every", "0"], "--save-every 0: must be at least 1"),
    ("train", ["--log-every", "0"], "--log-every 0: must be at least 1"),
    ("train", ["--ohem-thresh", "0"], "--ohem-thresh 0: must be in (0, 1]"),
    ("train", ["--pool-scale", "0"], "--pool-scale 0: must be in (0, 1]"),
    ("train", ["--eval-at"], "--eval-at: expected at least one argument"),
    ("train", ["--eval-at", "0"], "--eval-at 0: must be at least 1"),
    ("train", ["--eval-at", "9"], "--eval-at 9: after the last step (--num-steps 1)"),
    ("train", ["--norm", "gn"], "--norm: invalid choice: 'gn'"),
    ("train", ["--arch", "resnet7"], "--arch: invalid choice: 'resnet7'"),
    ("train", ["--device", "cuda:7"], "--device cuda:7: this torch build has no CUDA device"),
    ("train", ["--amp", "fp16"], "--amp fp16: float16 autocast needs a GPU"),
    # skd-train: flags that only the data or the files can refute
    ("train", ["--batch-size", "1"], "--batch-size 1 over 1 process(es) leaves 1 image per rank, and --norm bn"),
    ("train", ["--batch-size", "16"], "8 training images, fewer than --batch-size 16"),
    ("train", ["--num-classes", "5"], "--num-classes 5: --dataset cityscapes has 19 classes"),
    ("train", ["--data-list", "@binary"], "--data-list {binary}: not a text list file (byte 128 is 0x80"),
    ("train", ["--val-list", "@binary"], "--val-list {binary}: not a text list file"),
    ("train", ["--val-list", "@data"], "--val-list {data}: no such file"),
    ("train", ["--val-split", "nope"], "no leftImg8bit/nope folder"),
    ("train", ["--max-val-images", "4"], "--max-val-images 4: the validation set has only 3 images"),
    ("train", ["--data-dir", "@unlabelled", "--num-classes", "19"], "validation: the 3 image(s) of --val-split val "
                                                                    "hold no labelled pixel"),
    ("train", ["--snapshot-dir", "@file"], "--snapshot-dir {file}: is a file, not a folder"),
    ("train", ["--resume", "@final"], "--resume {final}: a weights-only file"),
    ("train", ["--resume", "@damaged_checkpoint"], "--resume {damaged_checkpoint}: cannot be loaded: damaged (entry"),
    ("train", ["--restore-from", "@damaged_final"], "{damaged_final}: cannot be loaded: damaged (entry"),
    ("train", ["--teacher-ckpt", "@damaged_final", "--teacher-arch", "resnet18", "--ho", "False"],
     "{damaged_final}: cannot be loaded: damaged (entry"),
    ("train", ["--allow-change", "lr-g"], "--allow-change: only means something with --resume"),
    ("train", ["--resume", "auto", "--allow-change", "lr-gg"], "--allow-change lr-gg: no such flag of skd-train"),
    # skd-eval
    ("eval", ["--scales", "0.01"], "--scales 0.01: shrinks"),
    ("eval", ["--scales", "0.5"], "to 48x24, under the 32 pixels a side the network needs; use a scale of at least "
                                  "0.667"),
    ("eval", ["--scales", "300"], "--scales 300: enlarges"),
    ("eval", ["--scales"], "--scales: expected at least one argument"),
    ("eval", ["--scales", "0"], "--scales 0: must be positive"),
    ("eval", ["--max-images", "4"], "--max-images 4: the val split has only 3 images"),
    ("eval", ["--data-dir", "@unlabelled"], "--split val: the evaluated images hold no labelled pixel"),
    ("eval", ["--ckpt", "@five", "--num-classes", "5"], "--num-classes 5: --dataset cityscapes has 19 classes"),
    ("eval", ["--ckpt", "@five"], "the file holds --num-classes 5, this run has --num-classes 19"),
    ("eval", ["--ckpt", "@damaged_final"], "{damaged_final}: cannot be loaded: damaged (entry"),
    ("eval", ["--ckpt", "@data"], "{data}: no such file"),
    ("eval", ["--data-list", "@binary"], "--data-list {binary}: not a text list file"),
    ("eval", ["--out", "@data"], "--out {data}: is a folder"),
    ("eval", ["--out", "{file}/x.json"], "--out {file}: is a file, not a folder"),
    ("eval", ["--input-size", "4000,5000"], "--input-size 4000,5000: each side must be between 16 and 4096"),
    ("eval", ["--mode", "tiles"], "--mode: invalid choice: 'tiles'"),
    # skd-test
    ("test", ["--scales", "0.01"], "--scales 0.01: shrinks"),
    ("test", ["--ckpt", "@damaged_final"], "{damaged_final}: cannot be loaded: damaged (entry"),
    ("test", ["--out", "@file"], "--out {file}: is a file, not a folder"),
    ("test", ["--data-list", "@binary"], "--data-list {binary}: not a text list file"),
]
PROGRESS = re.compile(r"(eval|test): +\d+%\|")
COMMANDS = {"train": train.main, "eval": evaluate.main, "test": predict.main}


@pytest.mark.parametrize("command, flags, message", CASES, ids=[f"{c}{' '.join(map(str, f))}" for c, f, _ in CASES])
def test_a_bad_flag_is_one_line_and_exit_2(files, tmp_path, capsys, command, flags, message):
    flags = [x.format(**files) if isinstance(x, str) and "{" in x else x for x in flags]
    argv = _argv(command, flags, files, tmp_path)
    capsys.readouterr()
    status = COMMANDS[command](argv)
    err = capsys.readouterr().err
    # skd-eval's and skd-test's progress bars (tqdm, on stderr) may stand before the line
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.match(line)]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith("skd: error: ") and message.format(**files) in lines[0], lines[0]
    assert not (tmp_path / "s" / "final.pth").exists()


def test_a_discriminator_input_beyond_1024_is_refused_at_parse(train_args):
    from skd.errors import SkdError
    with pytest.raises(SkdError, match="--d-input-size 100000: must be 0 or between 64"):
        train_args("--d-input-size", "100000")
