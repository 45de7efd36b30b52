"""Parameters and FLOPs of every network skd builds, as a Markdown table (docs/models.md).

    python scripts/count_models.py                  # 512x1024, every network
    python scripts/count_models.py --size 1024 2048 --only skd-pspnet-resnet18

Networks are built on the meta device, so nothing is computed: FLOPs are
torch.utils.flop_counter's (2 per multiply-accumulate of convolutions and matrix products),
MACs half of that. 19 classes, BatchNorm.
"""
from __future__ import annotations

import argparse

import torch

from skd.models import build_model, count_flops, count_parameters

# name -> (build_model arguments, published figure to compare with)
NETWORKS: dict[str, tuple[dict, str]] = {
    "skd-pspnet-resnet18": (dict(arch="resnet18"), "13,068,262 params (original SKD code, docs/reproduction.md)"),
    "skd-pspnet-resnet18-w0.5": (dict(arch="resnet18", width_mult=0.5), ""),
    "skd-pspnet-resnet101": (dict(arch="resnet101"), "70,437,350 params (original SKD code, docs/reproduction.md)"),
    "skd-pspnet-resnet18-aux64": (dict(arch="resnet18", aux_channels=64),
                                  "CIRKD Table 1 PSPNet-R18: 12.9M params, 507.4G"),
    "skd-deeplabv3-resnet18": (dict(arch="resnet18", head="aspp"), ""),
    "skd-deeplabv3-resnet101": (dict(arch="resnet101", head="aspp"), ""),
    "skd-pspnet-mobilenetv2": (dict(arch="mobilenetv2"), ""),
    "skd-deeplabv3-mobilenetv2": (dict(arch="mobilenetv2", head="aspp"), ""),
    "skd-deeplabv3-mobilenetv2-w0.5": (dict(arch="mobilenetv2", head="aspp", width_mult=0.5), ""),
    "mmseg-pspnet-resnet18": (dict(arch="resnet18", variant="mmseg"), "= mmseg pspnet_r18-d8 (cross-check)"),
    "mmseg-pspnet-resnet50": (dict(arch="resnet50", variant="mmseg"), "= mmseg pspnet_r50-d8 (cross-check)"),
    "mmseg-pspnet-resnet101": (dict(arch="resnet101", variant="mmseg"), ""),
    "mmseg-deeplabv3-resnet18": (dict(arch="resnet18", head="aspp", variant="mmseg"), "= mmseg deeplabv3_r18-d8 (cross-check)"),
    "mmseg-deeplabv3-resnet50": (dict(arch="resnet50", head="aspp", variant="mmseg"), ""),
    "mmseg-deeplabv3-resnet101": (dict(arch="resnet101", head="aspp", variant="mmseg"), ""),
    "mmseg-pspnet-mobilenetv2": (dict(arch="mobilenetv2", variant="mmseg"), "= mmseg mobilenet-v2-d8_pspnet (cross-check)"),
    "mmseg-deeplabv3-mobilenetv2": (dict(arch="mobilenetv2", head="aspp", variant="mmseg"),
                                    "= mmseg mobilenet-v2-d8_deeplabv3 (cross-check)"),
    "mmseg-deeplabv3-mobilenetv2-w0.5": (dict(arch="mobilenetv2", head="aspp", variant="mmseg", width_mult=0.5), ""),
}


def rows(size: tuple[int, int], names: list[str]) -> list[str]:
    out = [f"| network | params | GFLOPs at {size[0]}x{size[1]} | GMACs | published |", "| --- | ---: | ---: | ---: | --- |"]
    for name in names:
        config, published = NETWORKS[name]
        with torch.device("meta"):
            net = build_model(**config)
        flops = count_flops(net, size)
        out.append(f"| {name} | {count_parameters(net):,} | {flops / 1e9:.1f} | {flops / 2e9:.1f} | {published} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"),
                        help="input size (default 512 1024, the Cityscapes crop)")
    parser.add_argument("--only", nargs="+", choices=list(NETWORKS), default=list(NETWORKS), metavar="NAME",
                        help=f"networks to count (default all: {', '.join(NETWORKS)})")
    args = parser.parse_args(argv)
    print("\n".join(rows(tuple(args.size), args.only)))


if __name__ == "__main__":
    main()
