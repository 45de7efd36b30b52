"""skd-test: predictions for a split without labels, in the Cityscapes submission format.

For every image `<city>/<stem>` it writes `<out>/labelIds/<city>/<stem>_labelIds.png` (train ids
mapped back to labelIds, what the benchmark server reads) and `<out>/color/<city>/<stem>_color.png`
(the Cityscapes palette, for looking at).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from skd.data import CityscapesDataset, EvalTransform, colorize, to_label_ids
from skd.engine.distributed import barrier, cleanup, init_distributed
from skd.engine.evaluate import predict
from skd.engine.runtime import autocast_factory, cli, setup_logging
from skd.errors import SkdError
from skd.evaluate import build_model
from skd.options import add_data_args, add_eval_args, add_model_args, add_runtime_args, check_writable_dir

log = logging.getLogger("skd.predict")


def test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skd-test", description="Write Cityscapes submission PNGs for a split.")
    add_data_args(p)
    p.add_argument("--split", default="test", help="split to predict (default test)")
    p.add_argument("--ckpt", type=Path, required=True, help="weights: skd checkpoint or official SKD .pth")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_model_args(p)
    add_eval_args(p)
    add_runtime_args(p)
    return p


def write_prediction(out: Path, name: str, train_ids: np.ndarray) -> None:
    """labelIds PNG (submission) and colour PNG for one image named `<city>/<stem>`."""
    label_path = out / "labelIds" / f"{name}_labelIds.png"
    color_path = out / "color" / f"{name}_color.png"
    label_path.parent.mkdir(parents=True, exist_ok=True)
    color_path.parent.mkdir(parents=True, exist_ok=True)
    for path, image in ((label_path, to_label_ids(train_ids)),
                        (color_path, cv2.cvtColor(colorize(train_ids), cv2.COLOR_RGB2BGR))):
        if not cv2.imwrite(str(path), image):
            raise SkdError(f"--out: could not write {path} (disk full or not writable?)")


@cli
def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        setup_logging(info.is_main)
        check_writable_dir(args.out, "--out")
        dataset = CityscapesDataset(args.data_dir, args.split, args.data_list, transform=EvalTransform(),
                                    has_labels=False)
        model = build_model(args, device)
        autocast = autocast_factory(args.amp, device)
        for i in tqdm(range(info.rank, len(dataset), info.world_size), desc="test", disable=not info.is_main):
            image, _, name = dataset[i]
            image = image.unsqueeze(0).to(device)
            if args.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            probs = predict(model, image, args.num_classes, args.mode, tuple(args.scales), args.flip,
                            args.input_size, autocast)
            write_prediction(args.out, name, probs.argmax(1)[0].to(torch.uint8).cpu().numpy())
        barrier()
        log.info("%d predictions written to %s", len(dataset), args.out)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
