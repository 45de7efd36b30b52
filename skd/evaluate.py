"""skd-eval: mIoU of a PSPNet checkpoint on a labelled split (python -m skd.evaluate).

Prints the per-class IoU table and writes it as JSON. Whole image (the original) or sliding
window, any scales, optional flip; under torchrun the images are sharded over ranks.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from skd.data import CLASS_NAMES, CityscapesDataset, EvalTransform
from skd.engine.distributed import cleanup, init_distributed
from skd.engine.evaluate import evaluate
from skd.engine.runtime import autocast_factory, cli, setup_logging
from skd.metrics import format_table
from skd.models import build_pspnet, load_weights
from skd.options import add_data_args, add_eval_args, add_model_args, add_runtime_args

log = logging.getLogger("skd.evaluate")


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skd-eval", description="mIoU of a PSPNet on a labelled split.")
    add_data_args(p)
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--ckpt", type=Path, required=True, help="weights: skd checkpoint or official SKD .pth")
    add_model_args(p)
    add_eval_args(p)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: next to --ckpt)")
    p.add_argument("--max-images", type=int, default=0, help="only the first N images (0 = all)")
    add_runtime_args(p)
    return p


def build_model(args, device: torch.device) -> torch.nn.Module:
    """The network named by the flags, loaded from --ckpt, in eval mode on `device`."""
    # Inference uses plain BN whatever the training norm was: the state_dict keys are the same,
    # and nothing is saved for a backward pass.
    model = build_pspnet(args.arch, num_classes=args.num_classes, width_mult=args.width_mult,
                         norm="bn", stem=args.stem)
    load_weights(model, args.ckpt)
    model = model.eval().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.forward = torch.compile(model.forward)
    return model


@cli
def main(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        setup_logging(info.is_main)
        dataset = CityscapesDataset(args.data_dir, args.split, args.data_list, transform=EvalTransform())
        model = build_model(args, device)
        conf = evaluate(model, dataset, device, args.num_classes, args.mode, tuple(args.scales), args.flip,
                        args.input_size, info.rank, info.world_size, args.max_images, progress=info.is_main,
                        channels_last=args.channels_last, autocast=autocast_factory(args.amp, device))
        names = CLASS_NAMES if args.num_classes == len(CLASS_NAMES) else [str(c) for c in range(args.num_classes)]
        summary = conf.summary(names)
        summary.update(ckpt=str(args.ckpt), split=args.split, mode=args.mode, scales=args.scales,
                       flip=args.flip, images=len(dataset) if not args.max_images else args.max_images)
        if info.is_main:
            print(format_table(summary))
            out = args.out or args.ckpt.with_name(args.ckpt.stem + f"_{args.split}_miou.json")
            out.write_text(json.dumps(summary, indent=2))
            log.info("results written to %s", out)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
