"""Benchmark the pair-wise loss implementations and write the "losses-<device>" section of
docs/benchmarks.md.

Two parts, forward + backward (w.r.t. the student features) each time:
1. Full resolution: a 64x64 feature map with one node per pixel (N = 4096), batch 8, student and
   teacher both C = 128 or both C = 512: time and peak memory of naive vs gram (and ext when
   skd.nn.affinity imports). Each case runs in its own subprocess so that its peak is its own:
   on CUDA the peak is torch.cuda.max_memory_allocated() minus the memory allocated before the
   call; on CPU it is the rise of the child's resource.getrusage(RUSAGE_SELF).ru_maxrss (peak
   resident set) over its value just before the call, after a small warm-up call of the same
   implementation, so it is what the loss itself adds on top of its inputs.
2. A sweep of smaller graphs (time only, in this process): the original's 65x65 map with pool
   scale 0.5 (N = 9), node_size 2 on 65x65 (N = 1089), and full-resolution maps of N = 64 ..
   2304 nodes, for (Cs, Ct) = (128, 128), (128, 512) (the paper's pair) and (512, 512). It grounds
   `skd.losses.pair_wise.choose_impl` ("auto"); the table says which implementation auto picks
   and whether that was the faster of the two it chooses from (naive, gram).

    python scripts/benchmark_losses.py --device cpu --threads 1 [--quick]   # CPU, shared machine
    python scripts/benchmark_losses.py --device cuda [--quick]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import write_section  # noqa: E402

from skd.losses.pair_wise import choose_impl, pair_wise_loss  # noqa: E402


def ext_status() -> str | None:
    """None when skd.nn.affinity does not import, else whether its compiled kernel is used."""
    try:
        import skd.nn.affinity  # noqa: F401
        from skd import ext
    except (ImportError, OSError, RuntimeError):
        return None
    return "compiled kernel" if ext.available() else "its PyTorch fallback (the extension did not build)"


def make_inputs(case: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, h, w = case["batch"], case["h"], case["w"]
    student = torch.randn(b, case["cs"], h, w, generator=gen).to(device).requires_grad_(True)
    teacher = torch.randn(b, case["ct"], h, w, generator=gen).to(device)
    return student, teacher


def step(case: dict, student: torch.Tensor, teacher: torch.Tensor) -> None:
    loss = pair_wise_loss(
        student, teacher, pool_scale=case.get("pool_scale", 0.5), node_size=case.get("node_size"), impl=case["impl"]
    )
    loss.backward()
    student.grad = None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(case: dict, device: str, repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Seconds per forward + backward: one warm-up call, then `repeats` calls (more until min_seconds)."""
    student, teacher = make_inputs(case, device)
    step(case, student, teacher)
    sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        step(case, student, teacher)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def child(case: dict, device: str, repeats: int) -> dict:
    """One full-resolution case: peak memory of the first call, then the timings."""
    small = dict(case, h=4, w=4)
    step(small, *make_inputs(small, device))  # load kernels and thread pools outside the peak
    student, teacher = make_inputs(case, device)
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(case, student, teacher)
        sync(device)
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        step(case, student, teacher)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = time_case(case, device, repeats)
    return {"peak_bytes": peak, "times": times, **profile_call(case, student, teacher, device)}


def profile_call(case: dict, student: torch.Tensor, teacher: torch.Tensor, device: str) -> dict:
    """Launches of one forward + backward under torch.profiler: on CUDA the kernels, copies and
    memsets run on the GPU and how long the GPU was busy with them (the sum of their durations;
    far below the wall time means the call is bound by launches, not by the GPU); on the CPU the
    aten operators dispatched, nested ones included. {} where the profiler fails."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            step(case, student, teacher)
            sync(device)
        events = list(prof.events())
    except Exception as err:  # a profiler that cannot start must not cost the timings
        return {"profile_error": str(err)[:200]}
    if device != "cuda":
        return {"launches": sum(e.name.startswith("aten::") for e in events)}
    gpu = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_us = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) for e in gpu)
    return {"launches": len(gpu), "gpu_busy_ms": busy_us / 1e3}


def run_child(case: dict, device: str, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--device", device, "--child", json.dumps(case), "--repeats", str(repeats),
           "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def full_resolution(device: str, impls: list[str], repeats: int) -> tuple[str, list[str]]:
    launches = "GPU launches per call | GPU busy (ms)" if device == "cuda" else "aten ops per call"
    rows = [
        "| C (student = teacher) | impl | time fwd+bwd (ms, best) | peak memory (MiB) | speed-up vs naive "
        f"| memory / naive | {launches} |",
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if device == "cuda" else ""),
    ]
    verdicts = []
    for channels, speed_target in ((128, 10.0), (512, 2.5)):
        results, profiles = {}, {}
        for impl in impls:
            case = {"impl": impl, "batch": 8, "cs": channels, "ct": channels, "h": 64, "w": 64, "node_size": 1}
            res = run_child(case, device, repeats)
            results[impl] = (min(res["times"]), res["peak_bytes"])
            profiles[impl] = res
        naive_time, naive_peak = results["naive"]
        for impl, (t, peak) in results.items():
            prof = profiles[impl]
            counts = str(prof.get("launches", "n/a"))
            if device == "cuda":
                counts += f" | {prof['gpu_busy_ms']:.2f}" if "gpu_busy_ms" in prof else " | n/a"
            rows.append(
                f"| {channels} | {impl} | {t * 1e3:.1f} | {peak / 2**20:.1f} | {naive_time / t:.1f}x | "
                f"{peak / max(naive_peak, 1):.3f} | {counts} |"
            )
        gram_time, gram_peak = results["gram"]
        speed, memory = naive_time / gram_time, naive_peak / max(gram_peak, 1)
        verdicts.append(
            f"- C = {channels}: gram is {speed:.1f}x faster (target {speed_target}x: "
            f"{'met' if speed >= speed_target else 'NOT met'}) with {memory:.0f}x less peak memory "
            f"(target 10x: {'met' if memory >= 10 else 'NOT met'})."
        )
    return "\n".join(rows), verdicts


def sweep(device: str, impls: list[str], quick: bool) -> str:
    shapes = [  # (label, h, w, pool_scale, node_size)
        ("65x65, pool scale 0.5", 65, 65, 0.5, None),
        ("8x8, 1 px/node", 8, 8, 0.5, 1),
        ("16x16, 1 px/node", 16, 16, 0.5, 1),
        ("24x24, 1 px/node", 24, 24, 0.5, 1),
        ("32x32, 1 px/node", 32, 32, 0.5, 1),
        ("65x65, node_size 2", 65, 65, 0.5, 2),
        ("48x48, 1 px/node", 48, 48, 0.5, 1),
    ]
    rows = [
        "| feature map | N | Cs | Ct | " + " | ".join(f"{impl} (ms)" for impl in impls) + " | fastest | auto picks | auto right (of naive, gram) |",
        "| --- " * (len(impls) + 7) + "|",
    ]
    repeats, min_seconds = (2, 0.0) if quick else (5, 0.5)
    warm = {"impl": "gram", "batch": 8, "cs": 128, "ct": 512, "h": 65, "w": 65}
    time_case(warm, device, 2)  # thread pools and kernels, outside the first row's timing
    for label, h, w, pool_scale, node_size in shapes:
        if node_size is None:
            kh, kw = int(h * pool_scale), int(w * pool_scale)
        else:
            kh = kw = node_size
        n = -(-h // kh) * -(-w // kw)
        for cs, ct in ((128, 128), (128, 512), (512, 512)):
            timings = {}
            for impl in impls:
                case = {"impl": impl, "batch": 8, "cs": cs, "ct": ct, "h": h, "w": w,
                        "pool_scale": pool_scale, "node_size": node_size}
                timings[impl] = min(time_case(case, device, repeats, min_seconds))
            fastest = min(timings, key=timings.get)
            # auto chooses between naive and gram only; judge it on those two
            best = min(("naive", "gram"), key=timings.get)
            picked = choose_impl(n, cs, ct, torch.device(device))
            close = timings[picked] <= 1.1 * timings[best]
            verdict = "yes" if picked == best else ("within 10%" if close else "NO")
            rows.append(
                f"| {label} | {n} | {cs} | {ct} | " + " | ".join(f"{timings[i] * 1e3:.2f}" for i in impls)
                + f" | {fastest} | {picked} | {verdict} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (2 instead of 5), for a run of a few minutes")
    parser.add_argument("--no-write", action="store_true", help="print the section only; leave docs/benchmarks.md")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads (default: torch's choice). On a shared machine use 1: with every core "
        "busy, a descheduled OpenMP thread stalls each parallel op and timings swing 100x",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.device, args.repeats)))
        return

    ext = ext_status()
    impls = ["naive", "gram"] + (["ext"] if ext else [])
    repeats = 2 if args.quick else 5
    table, verdicts = full_resolution(args.device, impls, repeats)
    body = "\n".join(
        [
            "Pair-wise loss (`skd.losses.pair_wise_loss`), forward + backward w.r.t. the student.",
            "",
            f"torch CPU threads: {torch.get_num_threads()}.",
            "",
            f"**Full resolution**: 64x64 map, one node per pixel (N = 4096), batch 8; time = best of {repeats} "
            "calls after a warm-up (the least disturbed on a shared machine). Peak memory: what the call adds over its inputs, measured in a "
            + ("subprocess per case with torch.cuda.max_memory_allocated()."
               if args.device == "cuda"
               else "subprocess per case as the rise of its peak RSS (getrusage ru_maxrss)."),
            f"ext: skd.nn.affinity with {ext}." if ext else "ext: skd.nn.affinity does not import here; not measured.",
            "",
            table,
            "",
            *verdicts,
            "",
            "**Smaller graphs** (time only, best of several calls, batch 8), grounding `choose_impl` (impl=\"auto\"):",
            "",
            sweep(args.device, impls, args.quick),
        ]
    )
    print(body)
    if not args.no_write:
        write_section(f"losses-{args.device}", body)


if __name__ == "__main__":
    main()
