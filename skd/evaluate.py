"""skd-eval: mIoU of a PSPNet checkpoint on a labelled split (python -m skd.evaluate).

Prints the per-class IoU table and writes it as JSON. Whole image (the original) or sliding
window, any scales, optional flip; under torchrun the images are sharded over ranks.
"""
from __future__ import annotations

import json
import logging

import torch

from skd.data import CLASS_NAMES, CityscapesDataset, EvalTransform
from skd.engine.build import CheckedDataset
from skd.engine.distributed import cleanup, init_distributed, main_decides
from skd.engine.evaluate import Inference, evaluate
from skd.engine.runtime import RecoveringCompile, autocast_factory, cli, configure_numerics, setup_logging
from skd.errors import SkdError
from skd.integrity import verify
from skd.io import write_text_atomic
from skd.metrics import format_table
from skd.models import build_pspnet, load_weights
from skd.options import check_list_file, check_output_file, eval_parser

log = logging.getLogger("skd.evaluate")


def build_model(args, device: torch.device) -> torch.nn.Module:
    """The network named by the flags, loaded from --ckpt (its integrity checked first), in eval
    mode on `device`; with --compile, compiled so that a failed compilation falls back."""
    # Inference uses plain BN whatever the training norm was: the state_dict keys are the same,
    # and nothing is saved for a backward pass.
    model = build_pspnet(args.arch, num_classes=args.num_classes, width_mult=args.width_mult,
                         norm="bn", stem=args.stem)
    verify(args.ckpt)
    load_weights(model, args.ckpt)
    model = model.eval().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.forward = RecoveringCompile(model.forward, "the network")
    return model


def inference_set(args, split_has_labels: bool = True) -> CheckedDataset:
    """The images skd-eval / skd-test read, checked as they load: labels below --num-classes,
    each of --scales leaving the image at least 32 pixels a side (skd.engine.build.CheckedDataset)."""
    if args.data_list is not None:
        check_list_file(args.data_list, "--data-list")
    dataset = CityscapesDataset(args.data_dir, args.split, args.data_list, transform=EvalTransform(),
                                has_labels=split_has_labels)
    return CheckedDataset(dataset, args.num_classes, tuple(args.scales))


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
        out = args.out or args.ckpt.with_name(args.ckpt.stem + f"_{args.split}_miou.json")
        check_output_file(out, "--out" if args.out else "--out (default: next to --ckpt)")
        dataset = inference_set(args)
        if args.max_images > len(dataset):
            raise SkdError(f"--max-images {args.max_images}: the {args.split} split has only {len(dataset)} "
                           f"images; pass at most {len(dataset)}, or 0 for all")
        model = build_model(args, device)
        conf = evaluate(model, dataset, device=device, num_classes=args.num_classes, how=inference_of(args, device),
                        rank=info.rank, world_size=info.world_size, max_images=args.max_images,
                        progress=info.is_main)
        if int(conf.mat.sum()) == 0:
            raise SkdError(f"--split {args.split}: the evaluated images hold no labelled pixel (every label is "
                           f"255, ignore), so the mIoU would be 0; evaluate a labelled split (the Cityscapes "
                           f"test labels are placeholders: use skd-test for it)")
        names = CLASS_NAMES if args.num_classes == len(CLASS_NAMES) else [str(c) for c in range(args.num_classes)]
        summary = conf.summary(names)
        summary.update(ckpt=str(args.ckpt), split=args.split, mode=args.mode, scales=args.scales,
                       flip=args.flip, ms_average=args.ms_average,
                       images=len(dataset) if not args.max_images else min(args.max_images, len(dataset)))
        if info.is_main:
            print(format_table(summary))
        main_decides(lambda: write_text_atomic(out, json.dumps(summary, indent=2)))
        log.info("results written to %s", out)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
