"""Peak memory and time of one PSPNet training step with BatchNorm vs InPlace-ABN; writes the
"memory-<device>" section of docs/benchmarks.md.

One step = forward, task loss (cross-entropy of the upsampled logits + 0.4 x the DSN's), backward,
SGD step (momentum 0.9, weight decay 5e-4), for PSPNet-R18 and PSPNet-R101 at one batch and
crop, with three norm settings:

* `bn`: `skd.models.pspnet(norm="bn")`, BatchNorm + activation.
* `inplace_abn`: `norm="inplace_abn"`, the same network. The residual blocks and the stem use
  InPlace-ABN with activation "identity" followed by a separate ReLU (the original SKD
  layout); the blocks then take the lean autograd path of `skd.nn.fused` (ReLUs recomputed
  inside the next convolution and the residual sum), and the heads fuse norm + leaky ReLU.
* `inplace_abn+lrelu`: InPlace-ABN with the blocks' and stem's ReLUs folded into it as leaky
  ReLU(0.01), the layout of the InPlace-ABN paper. A different network (leaky ReLU instead of
  ReLU after those norms); shown for what the layer saves when its activation is fused.

Each case runs in a fresh subprocess. CUDA: peak = torch.cuda.max_memory_allocated() over the
timed steps, minus what is allocated before them (weights, their gradients and momentum,
allocated up front and zeroed in place between steps, and the input), i.e. what the
activations, their gradients and the temporaries take. CPU has no allocator statistics, so the first step runs under
torch.profiler with memory profiling and "activation peak" is the highest sum of live tensor
allocations made during the step: the same quantity as on CUDA, exact and repeatable. The
peak RSS rise (ru_maxrss after the steps minus the resident size before the first one) is shown
next to it; it also counts what glibc's allocator keeps mapped after frees, so it is blurred.
Time: median over the timed steps after warm-up; with --repeats R every case runs R times,
interleaved with the others, and the fastest median is reported (on a shared machine the
others' load otherwise decides the times).

    python scripts/benchmark_memory.py [--device cpu|cuda|all] [--batch B] [--crop S] [--steps N]
        [--repeats R]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from bench_report import rss_kib, spawn_child, write_section  # noqa: E402

NORMS = ("bn", "inplace_abn", "inplace_abn+lrelu")
DEFAULTS = {"cpu": {"batch": 2, "crop": 257, "steps": 3}, "cuda": {"batch": 4, "crop": 512, "steps": 5}}


def fold_relus_into_norms(model: nn.Module) -> int:
    """Turn each (bnK, reluK) pair of the backbone into InPlace-ABN + leaky ReLU(0.01).

    Returns how many pairs were folded. The final ReLU after a residual sum stays.
    """
    folded = 0
    for module in model.modules():
        for k in (1, 2, 3):
            norm, relu = getattr(module, f"bn{k}", None), getattr(module, f"relu{k}", None)
            if norm is not None and isinstance(relu, nn.ReLU) and getattr(norm, "activation", None) == "identity":
                norm.activation, norm.slope = "leaky_relu", 0.01
                setattr(module, f"relu{k}", nn.Identity())
                folded += 1
    return folded


def run_case(case: dict) -> dict:
    """Build the model, run warm-up + timed steps, return peak memory (MiB) and step times (s)."""
    from skd import ext
    from skd.models import pspnet

    torch.manual_seed(0)
    device = torch.device(case["device"])
    base_norm = "bn" if case["norm"] == "bn" else "inplace_abn"
    model = pspnet(case["depth"], num_classes=19, norm=base_norm).to(device).train()
    if case["norm"] == "inplace_abn+lrelu":
        fold_relus_into_norms(model)
    if base_norm != "bn":
        ext.load()  # build/load before measuring, so its memory is in the baseline
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():  # gradients and momentum now: model state, not activations
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        p.grad = torch.zeros_like(p)
    image = torch.randn(case["batch"], 3, case["crop"], case["crop"], device=device)
    label = torch.randint(0, 19, (case["batch"], case["crop"], case["crop"]), device=device)

    def forward_backward() -> None:
        out = model(image)
        size = label.shape[-2:]
        logits = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=True)
        aux = F.interpolate(out.aux_logits, size=size, mode="bilinear", align_corners=True)
        loss = F.cross_entropy(logits, label, ignore_index=255) + 0.4 * F.cross_entropy(aux, label, ignore_index=255)
        opt.zero_grad(set_to_none=False)
        loss.backward()

    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    # The peak is taken over forward + backward (the activations' lifetime); the SGD update's
    # own temporaries are the same for every norm and are left out. The time is the whole step.
    if device.type == "cuda":
        forward_backward()  # warm-up: cuDNN algorithm choice, allocator
        opt.step()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        times, peak = [], 0
        for _ in range(case["steps"]):
            torch.cuda.reset_peak_memory_stats(device)
            t0 = synced()
            forward_backward()
            peak = max(peak, torch.cuda.max_memory_allocated(device))
            opt.step()
            times.append(synced() - t0)
        return {"peak_mib": peak / 2**20, "act_mib": (peak - base) / 2**20, "times": times}

    # CPU: the first step sets the peak resident size (freed memory stays mapped afterwards).
    base_kib = rss_kib()
    alloc_peak = profiled_peak_bytes(forward_backward)
    opt.step()
    times = []
    for _ in range(case["steps"]):
        t0 = synced()
        forward_backward()
        opt.step()
        times.append(synced() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": peak_kib / 1024, "rss_rise_mib": (peak_kib - base_kib) / 1024,
            "act_mib": alloc_peak / 2**20, "times": times}


def profiled_peak_bytes(fn) -> int:
    """Run fn under torch.profiler; the highest total of tensor memory allocated and not yet
    freed during the call (blocks from before the call that it frees count as 0)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def table(device: str, results: list[tuple[dict, dict]]) -> str:
    cpu = device == "cpu"
    rows = [
        f"| model | norm | {'process peak RSS' if cpu else 'peak'} (MiB) | activation peak (MiB) | vs bn | step time (s) | vs bn |"
        + (" peak RSS rise (MiB) | vs bn |" if cpu else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if cpu else ""),
    ]
    bn_of: dict[int, dict] = {}
    for case, res in results:
        if case["norm"] == "bn" and "error" not in res:
            bn_of[case["depth"]] = res
    for case, res in results:
        name = f"PSPNet-R{case['depth']}"
        if "error" in res:
            rows.append(f"| {name} | {case['norm']} | failed: {res['error']} | | | | |" + (" | |" if cpu else ""))
            continue
        t = statistics.median(res["times"])
        ref = bn_of.get(case["depth"])
        d_mem = f"{100 * (res['act_mib'] / ref['act_mib'] - 1):+.1f}%" if ref and case["norm"] != "bn" else ""
        d_time = f"{100 * (t / statistics.median(ref['times']) - 1):+.1f}%" if ref and case["norm"] != "bn" else ""
        row = f"| {name} | {case['norm']} | {res['peak_mib']:.0f} | {res['act_mib']:.0f} | {d_mem} | {t:.3f} | {d_time} |"
        if cpu:
            d_rss = f"{100 * (res['rss_rise_mib'] / ref['rss_rise_mib'] - 1):+.1f}%" if ref and case["norm"] != "bn" else ""
            row += f" {res['rss_rise_mib']:.0f} | {d_rss} |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PSPNet training-step memory and time: bn vs inplace_abn")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all = cpu, and cuda when available (default)")
    parser.add_argument("--batch", type=int, help="batch size (default: cpu 2, cuda 4)")
    parser.add_argument("--crop", type=int, help="square crop (default: cpu 257, cuda 512)")
    parser.add_argument("--steps", type=int, help="timed steps (default: cpu 3, cuda 5)")
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 101], help="ResNet depths (default 18 101)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every case, interleaved (default 1)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            sys.exit("benchmark_memory.py: --device cuda but torch.cuda.is_available() is False")
        devices.remove("cuda")
    for device in devices:
        cfg = {k: getattr(args, k) or v for k, v in DEFAULTS[device].items()}
        cases = [{"device": device, "depth": d, "norm": n, **cfg} for d in args.depths for n in NORMS]
        runs: list[list[dict]] = [[] for _ in cases]
        for _ in range(args.repeats):
            for case, case_runs in zip(cases, runs):
                res = spawn_child(__file__, case)
                print(f"{device} R{case['depth']} {case['norm']}: {res}", flush=True)
                case_runs.append(res)
        results = []
        for case, case_runs in zip(cases, runs):
            ok = [r for r in case_runs if "error" not in r]
            best = min(ok, key=lambda r: statistics.median(r["times"])) if ok else case_runs[0]
            results.append((case, best))
        body = (
            f"Training step of PSPNet (19 classes), batch {cfg['batch']}, crop {cfg['crop']}x{cfg['crop']}, "
            f"float32, median of {cfg['steps']} steps (best of {args.repeats} interleaved runs); "
            "`scripts/benchmark_memory.py` explains the cases.\n"
            "Target: InPlace-ABN >= 30% lower activation peak than bn, step time within 15%.\n\n"
            + table(device, results)
        )
        print(body)
        if not args.no_write:
            write_section(f"memory-{device}", body)


if __name__ == "__main__":
    main()
