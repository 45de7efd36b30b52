"""skd-test: predictions for a split without labels, in the Cityscapes submission format.

For every image `<city>/<stem>` it writes `<out>/labelIds/<city>/<stem>_labelIds.png` (train ids
mapped back to labelIds, what the benchmark server reads) and `<out>/color/<city>/<stem>_color.png`
(the Cityscapes palette, for looking at).
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from skd.data import colorize, to_label_ids
from skd.engine.distributed import barrier, cleanup, init_distributed
from skd.engine.evaluate import predict
from skd.engine.runtime import cli, configure_numerics, setup_logging
from skd.errors import SkdError
from skd.evaluate import build_model, inference_of, inference_set
from skd.io import write_bytes_atomic
from skd.options import check_writable_dir, test_parser

log = logging.getLogger("skd.predict")


def write_prediction(out: Path, name: str, train_ids: np.ndarray) -> None:
    """labelIds PNG (submission) and colour PNG for one image named `<city>/<stem>`.

    Encoded in memory and written by skd.io (checked, atomic): cv2.imwrite reports success for a
    small file that a full disk truncated to 0 bytes."""
    label_path = out / "labelIds" / f"{name}_labelIds.png"
    color_path = out / "color" / f"{name}_color.png"
    for path, image in ((label_path, to_label_ids(train_ids)),
                        (color_path, cv2.cvtColor(colorize(train_ids), cv2.COLOR_RGB2BGR))):
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise SkdError(f"--out: could not encode {path} as PNG")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SkdError(f"--out: could not create {path.parent} ({e.strerror})") from None
        write_bytes_atomic(path, png.tobytes())


@cli
def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        setup_logging(info.is_main)
        configure_numerics(args.tf32)
        check_writable_dir(args.out, "--out")
        dataset = inference_set(args, split_has_labels=False)
        model = build_model(args, device)
        how = inference_of(args, device)
        for i in tqdm(range(info.rank, len(dataset), info.world_size), desc="test", disable=not info.is_main):
            image, _, name = dataset[i]
            scores = predict(model, image.unsqueeze(0).to(device), args.num_classes, how)
            write_prediction(args.out, name, scores.argmax(1)[0].to(torch.uint8).cpu().numpy())
        barrier()
        log.info("%d predictions written to %s", len(dataset), args.out)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
