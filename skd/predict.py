"""skd-test: predictions for a split, written in the dataset's own label encoding.

Cityscapes: for every image `<city>/<stem>`, `<out>/labelIds/<city>/<stem>_labelIds.png` (train
ids mapped back to labelIds, what the benchmark server and cityscapesScripts read: point
CITYSCAPES_RESULTS at `<out>/labelIds`) and `<out>/color/<city>/<stem>_color.png` (the palette, for
looking at). The other datasets: `<out>/labels/<name>.png`, palette PNGs of the dataset's own ids
(`DatasetInfo.write_prediction`).
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from skd.engine.distributed import barrier, cleanup, init_distributed
from skd.engine.evaluate import predict
from skd.engine.runtime import configure_runtime, setup_logging
from skd.errors import cli
from skd.evaluate import build_model, inference_of, inference_set, panel_writer
from skd.options import check_writable_dir, resolve_dataset, test_parser

log = logging.getLogger("skd.predict")


@cli
def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        setup_logging(info.is_main)
        configure_runtime(args)
        check_writable_dir(args.out, "--out")
        resolve_dataset(args, split="test")
        dataset = inference_set(args, args.split, has_labels=False)
        model = build_model(args, device)
        how = inference_of(args, device)
        panel = panel_writer(args, dataset, device, how, args.vis_dir or args.out / "vis")
        for i in tqdm(range(info.rank, len(dataset), info.world_size), desc="test", disable=not info.is_main):
            image, label, name = dataset[i]
            pred = predict(model, image.unsqueeze(0).to(device), args.num_classes, how).argmax(1)[0]
            dataset.info.write_prediction(args.out, name, pred.to(torch.uint8).cpu().numpy())
            if panel is not None:
                panel(i, image, label, pred, name)
        barrier()
        log.info("%d predictions written to %s", len(dataset), args.out)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
