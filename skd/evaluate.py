"""skd-eval: mIoU of a PSPNet checkpoint on a labelled split (python -m skd.evaluate).

Prints the per-class IoU table and writes it as JSON. Whole image (the original) or sliding
window, any scales, optional flip; under torchrun the images are sharded over ranks.
"""
from __future__ import annotations

import json
import logging

import torch

from skd.data import EvalTransform
from skd.data.registry import build_dataset
from skd.engine.distributed import cleanup, init_distributed
from skd.engine.evaluate import Inference, evaluate
from skd.engine.runtime import autocast_factory, cli, configure_numerics, setup_logging
from skd.metrics import format_table
from skd.models import build_pspnet, load_weights
from skd.options import eval_parser, resolve_dataset

log = logging.getLogger("skd.evaluate")


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


def inference_of(args, device: torch.device) -> Inference:
    """How skd-eval and skd-test predict, from their flags."""
    return Inference(mode=args.mode, scales=tuple(args.scales), flip=args.flip, crop=args.input_size,
                     average=args.ms_average, autocast=autocast_factory(args.amp, device),
                     channels_last=args.channels_last)


@cli
def main(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    info, device = init_distributed(args.device)
    try:
        setup_logging(info.is_main)
        configure_numerics(args.tf32)
        resolve_dataset(args, split="val")
        dataset = build_dataset(args.dataset, args.data_dir, args.split, args.data_list, transform=EvalTransform())
        model = build_model(args, device)
        conf = evaluate(model, dataset, device=device, num_classes=args.num_classes, how=inference_of(args, device),
                        rank=info.rank, world_size=info.world_size, max_images=args.max_images,
                        progress=info.is_main)
        summary = conf.summary(dataset.info.class_names)
        summary.update(ckpt=str(args.ckpt), dataset=args.dataset, split=args.split, mode=args.mode, scales=args.scales,
                       flip=args.flip, ms_average=args.ms_average,
                       images=len(dataset) if not args.max_images else min(args.max_images, len(dataset)))
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
