"""skd-profile: what a PSPNet costs: parameters, FLOPs, forward latency and peak memory.

    skd-profile --arch resnet101 --input-size 512,1024              # the paper's teacher
    skd-profile --ckpt runs/student/best.pth --width-mult 0.5 --device cuda

The network profiled is the deployed one (skd.export.DeployNet without upsampling: raw image
-> normalisation -> backbone -> pyramid pooling -> classifier), in eval mode, batch
`--batch-size`, float32. The auxiliary DSN head only serves training; its parameters and
FLOPs are reported apart.

- Parameters: elements of every parameter (trainable, as docs/reproduction.md counts them), with and
  without the DSN head.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward on the "meta" device (no
  memory, no arithmetic), which counts convolutions and matrix products as 2 FLOPs per
  multiply-add; normalisation, activations, pooling and resizing are not counted. Papers
  that call multiply-adds "FLOPs" (MACs) give half of this figure; both are printed.
- Latency: `--warmup` forwards, then the median (and min, max) of `--repeat` timed forwards
  under torch.inference_mode, CUDA synchronised before each clock read.
- Peak memory: the bytes of live tensors at the worst moment of one forward, weights and input
  included. On CUDA, torch.cuda.max_memory_allocated after reset_peak_memory_stats. The CPU
  allocator keeps no such statistics, so there we add the bytes of the weights and input to
  the peak running sum of the allocation and free events that torch.profiler records with
  profile_memory=True. Neither counts the allocator's cache, the CUDA context or the Python
  process itself (the resident set size of the process is larger).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from skd.engine.runtime import setup_logging
from skd.errors import SkdError, cli
from skd.export import DeployNet, add_network_args, build_network, deploy_parameters
from skd.models import SegmentationNet, build_model
from skd.options import size_pair

log = logging.getLogger("skd.profile")

# Parts of a PSPNet in the FLOP breakdown, in forward order; "stem" is what the others leave.
PARTS = ("backbone", "decode_head", "auxiliary_head")


def count_flops(module: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of `module(example)` and their split by top-level child of `module`.

    Counted by FlopCounterMode (2 per multiply-add of convolutions and matrix products).
    Returns (total, {child name: FLOPs}); children that count nothing are left out.
    """
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(example)
    root = type(module).__name__
    by_child = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == root:
            by_child[parts[1]] = sum(ops.values())
    return counter.get_total_flops(), by_child


def network_flops(config: dict[str, Any], input_shape: tuple[int, int, int, int]) -> dict[str, Any]:
    """FLOPs of the network of `config` (`net.config()`) on an input of `input_shape`: "backbone",
    "decode_head", "auxiliary_head", the totals "deploy" (all but the auxiliary head) and
    "train", and "children" (each top-level module, e.g. conv1, layer1, pspmodule, head, dsn).

    Built and run on the meta device: no weights are allocated and nothing is computed.
    """
    with torch.device("meta"), torch.no_grad():
        net = build_model(**{**config, "norm": "bn"}).eval()
        x = torch.empty(input_shape)
        # Part by part: each is called as its own root, so its children are named after it.
        backbone, by_backbone = count_flops(net.backbone, x)
        _, _, l3, l4 = net.backbone(x)
        decode, by_decode = count_flops(net.decode_head, l4)
        aux, by_aux = count_flops(net.auxiliary_head, l3)
    return {"backbone": backbone, "decode_head": decode, "auxiliary_head": aux, "deploy": backbone + decode,
            "train": backbone + decode + aux, "children": {**by_backbone, **by_decode, **by_aux}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side prints start/stop lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak, over one call of `fn`, of the bytes held by CPU tensors allocated during the call.

    From the allocation and free events that torch.profiler records with profile_memory=True
    (every allocation of PyTorch's CPU allocator, with its size): the maximum running sum in
    time order. Tensors alive before the call (weights, input) are not included.
    """
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def resident_bytes(module: nn.Module, *tensors: torch.Tensor) -> int:
    """Bytes of the parameters and buffers of `module` and of `tensors`."""
    held = list(module.parameters()) + list(module.buffers()) + list(tensors)
    return sum(t.numel() * t.element_size() for t in held)


def peak_memory(fn: Callable[[], Any], device: torch.device, resident: int) -> tuple[int, str]:
    """Peak memory of one call of `fn` in bytes, weights and input included, and what it is.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: `resident` (the
    weights and input, resident_bytes) plus peak_tensor_bytes(fn), the same quantity as CUDA's
    (bytes of live tensors at the worst moment), counted from the profiler's allocation events.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resident + peak_tensor_bytes(fn), "live CPU tensors at the peak, from torch.profiler's allocation events"


def profile(net: SegmentationNet, input_size: tuple[int, int], batch_size: int = 1, device: torch.device | str = "cpu",
            warmup: int = 2, repeat: int = 10) -> dict[str, Any]:
    """Parameters, FLOPs, latency and peak memory of `net` deployed (DeployNet, no upsampling)
    on a (batch_size, 3, H, W) raw image on `device`. Returns a JSON-ready dict (see the module
    docstring for what each figure measures)."""
    device = torch.device(device)
    shape = (batch_size, 3, *input_size)
    flops = network_flops(net.config(), shape)
    deploy = DeployNet(net, upsample=False).eval().to(device)
    raw = torch.rand(shape, device=device) * 255

    shapes = []

    def forward() -> None:
        with torch.inference_mode():
            shapes.append(tuple(deploy(raw).shape))

    times = time_forward(forward, device, warmup, repeat)
    memory, memory_what = peak_memory(forward, device, resident_bytes(deploy, raw))
    logits_shape = shapes[-1]
    return {
        "model": net.describe(),
        "config": net.config(),
        "input_shape": list(shape),
        "logits_shape": list(logits_shape),
        "params": {"total": sum(p.numel() for p in net.parameters()), "deploy": deploy_parameters(net)},
        "flops": flops,
        "latency_s": {"median": statistics.median(times), "min": min(times), "max": max(times),
                      "warmup": warmup, "repeat": repeat},
        "peak_memory_bytes": memory,
        "peak_memory_what": memory_what,
        "device": device_name(device),
        "torch": torch.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def format_report(r: dict[str, Any]) -> str:
    """The profile as aligned text."""
    g = 1e9
    f = r["flops"]
    n, _, h, w = r["input_shape"]
    lines = [
        f"model        {r['model']}",
        f"input        {n} x 3 x {h} x {w} (logits {'x'.join(map(str, r['logits_shape'][1:]))})",
        f"device       {r['device']}, torch {r['torch']}",
        f"parameters   {r['params']['deploy']:,} deployed (no DSN head); {r['params']['total']:,} with it",
        f"FLOPs        {f['deploy'] / g:.2f} G deployed ({f['deploy'] / 2 / g:.2f} G multiply-adds); "
        f"{f['train'] / g:.2f} G with the DSN head",
        "             " + ", ".join(f"{k.replace('_', ' ')} {f[k] / g:.2f}" for k in PARTS),
        f"latency      {1e3 * r['latency_s']['median']:.1f} ms median of {r['latency_s']['repeat']} "
        f"(min {1e3 * r['latency_s']['min']:.1f}, max {1e3 * r['latency_s']['max']:.1f}; "
        f"{r['latency_s']['warmup']} warm-up)",
    ]
    lines.append(f"peak memory  {r['peak_memory_bytes'] / 2**20:.1f} MiB, weights and input included "
                 f"({r['peak_memory_what']})")
    return "\n".join(lines)


def profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skd-profile",
                                description="Parameters, FLOPs, forward latency and peak memory of a network.")
    add_network_args(p)
    p.add_argument("--input-size", type=size_pair, default=(512, 1024), help="input H,W (default 512,1024)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default 2)")
    p.add_argument("--repeat", type=int, default=10, help="timed forwards; the median is reported (default 10)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = profile_parser().parse_args(argv)
    setup_logging()
    if args.batch_size < 1 or args.repeat < 1 or args.warmup < 0 or min(args.input_size) < 16:
        raise SkdError("--batch-size and --repeat must be at least 1, --warmup at least 0, "
                       "each side of --input-size at least 16")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SkdError(f"--device {args.device}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkdError(f"--device {args.device}: CUDA is not available on this machine")
    result = profile(build_network(args), args.input_size, args.batch_size, device, args.warmup, args.repeat)
    print(format_report(result))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result, indent=2))
        except OSError as e:
            raise SkdError(f"--json {args.json}: cannot write it ({e.strerror})") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
