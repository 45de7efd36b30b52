"""skd-eval: mIoU of a network checkpoint on a labelled split (python -m skd.evaluate).

Prints the per-class IoU table and writes it as JSON. Whole image (the original) or sliding
window, any scales, optional flip; under torchrun the images are sharded over ranks. With
--vis N, panels of the first N images.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from skd.data import EvalTransform
from skd.data.registry import build_dataset
from skd.engine.build import CheckedDataset, network_from_args
from skd.engine.distributed import cleanup, init_distributed, main_decides
from skd.engine.evaluate import Inference, evaluate, predict
from skd.engine.runtime import RecoveringCompile, autocast_factory, configure_runtime, setup_logging
from skd.errors import SkdError, cli
from skd.io import write_text_atomic
from skd.metrics import format_table
from skd.models import load_model
from skd.options import check_list_file, check_output_file, eval_parser, resolve_dataset
from skd.vis import write_panel

log = logging.getLogger("skd.evaluate")


def build_model(args, device: torch.device) -> torch.nn.Module:
    """The network --ckpt describes (architecture flags given must agree with it), in eval mode
    on `device`; with --compile, compiled so that a failed compilation falls back. Inference
    builds plain BN whatever the training norm was: the weights are the same, and nothing is
    saved for a backward pass."""
    model = network_from_args(args, args.ckpt)
    model = model.eval().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.forward = RecoveringCompile(model.forward, "the network")
    return model


def inference_set(args, split: str, has_labels: bool = True) -> CheckedDataset:
    """The images skd-eval / skd-test read from --dataset, checked as they load: labels below
    --num-classes, each of --scales leaving the image at least 32 pixels a side
    (skd.engine.build.CheckedDataset)."""
    if args.data_list is not None:
        check_list_file(args.data_list, "--data-list")
    dataset = build_dataset(args.dataset, args.data_dir, split, args.data_list, transform=EvalTransform(),
                            has_labels=has_labels)
    return CheckedDataset(dataset, args.num_classes, tuple(args.scales))


def panel_writer(args, dataset, device: torch.device, how: Inference, vis_dir: Path):
    """--vis N: a callback writing the panel of each of the first N images (with the teacher's
    prediction when --teacher-ckpt is given), or None."""
    if not args.vis:
        return None
    teacher = load_model(args.teacher_ckpt).to(device) if args.teacher_ckpt is not None else None
    palette = dataset.info.palette

    def write(index: int, image: torch.Tensor, label, pred: torch.Tensor, name: str) -> None:
        if index >= args.vis:
            return
        t_pred = None
        if teacher is not None:
            t_pred = predict(teacher, image.unsqueeze(0).to(device), args.num_classes, how).argmax(1)[0].cpu()
        gt = label if dataset.info.split_has_labels(args.split) else None
        write_panel(vis_dir / f"{name}.png", image, pred.cpu(), palette, gt=gt, teacher=t_pred,
                    overlay=args.vis_overlay)
    return write


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
        configure_runtime(args)
        resolve_dataset(args, split="val")
        out = args.out or args.ckpt.with_name(args.ckpt.stem + f"_{args.split}_miou.json")
        check_output_file(out, "--out" if args.out else "--out (default: next to --ckpt)")
        dataset = inference_set(args, args.split)
        if args.max_images > len(dataset):
            raise SkdError(f"--max-images {args.max_images}: the {args.split} split has only {len(dataset)} "
                           f"images; pass at most {len(dataset)}, or 0 for all")
        model = build_model(args, device)
        how = inference_of(args, device)
        vis_dir = args.vis_dir or args.ckpt.with_name(f"{args.ckpt.stem}_{args.split}_vis")
        conf = evaluate(model, dataset, device=device, num_classes=args.num_classes, how=how,
                        rank=info.rank, world_size=info.world_size, max_images=args.max_images,
                        progress=info.is_main, on_image=panel_writer(args, dataset, device, how, vis_dir))
        if int(conf.mat.sum()) == 0:
            raise SkdError(f"--split {args.split}: the evaluated images hold no labelled pixel (every label is "
                           f"255, ignore), so the mIoU would be 0; evaluate a labelled split (the Cityscapes "
                           f"test labels are placeholders: use skd-test for it)")
        summary = conf.summary(dataset.info.class_names)
        summary.update(ckpt=str(args.ckpt), dataset=args.dataset, split=args.split, mode=args.mode,
                       scales=args.scales, flip=args.flip, ms_average=args.ms_average,
                       images=len(dataset) if not args.max_images else min(args.max_images, len(dataset)))
        if info.is_main:
            print(format_table(summary))
        main_decides(lambda: write_text_atomic(out, json.dumps(summary, indent=2)))
        log.info("results written to %s", out)
        if args.vis and info.is_main:
            log.info("panels of the first %d images in %s", min(args.vis, summary["images"]), vis_dir)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
