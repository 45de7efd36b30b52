"""Images/s and peak memory of a full distillation step and of whole-image evaluation, plain
versus fast settings; writes the "step-<device>" section of docs/benchmarks.md and a JSON file.

Three phases, each case in a fresh subprocess (its memory and compiled code are its own):

* step: the real `skd.engine.steps.train_step` with --pi --pa --ho, on the objects skd-train
  builds (`skd.engine.build.build_training` and `compile_forwards`, `autocast_factory`): R101 teacher
  forward in inference mode, R18 student forward/backward, G step, discriminator step with the
  gradient penalty. Synthetic input (random mean-subtracted image, random labels); images/s =
  batch / step time.
* eval: `skd.engine.evaluate.evaluate` (mode whole, single scale, no flip, the original's
  validation) of the student on one image of --eval-size per call; images/s = 1 / time per call.
* data: skd-train's own loader (`skd.engine.build.build_train_loader`: --workers processes, pinned
  memory on CUDA, OpenCV threads off in the workers) over synthetic 1024x2048 PNGs (--data-size),
  with the training crop and batch; images/s over the whole pass after the first batch, set
  against the fastest step to say whether loading keeps up. Run once: no setting changes it.

Time per iteration: the median of the timed iterations on CUDA; on the CPU the fastest one
(--stat), since on a shared 2-core machine another process's burst can make a step several
times slower, and the fastest iteration is the least disturbed (every iteration does the same
work).

Weights are random (nothing is downloaded): the parent writes a random student and teacher with
`skd.engine.checkpoint.save_model`, after one forward in train mode on a random batch so that the eval-mode
BatchNorm statistics keep the activations at a realistic scale (uncalibrated, the eval-mode
logits of a random R101 reach about 10^5). The children load them through
--restore-from / --teacher-ckpt, as skd-train does.

Settings: "plain" is true float32 (TF32 off: skd-train's --tf32 False default, the original's
numerics), eager, contiguous; "fast" is --amp bf16
--channels-last --compile (and cudnn.benchmark on CUDA); on the CPU each switch also runs alone
(amp-bf16, channels-last, compile), so the table says which of them pay. With --repeats R every
case runs R times, interleaved with the others, and the fastest run is kept (on a shared machine
the others' load otherwise decides the times).

Peak memory: on CUDA torch.cuda.max_memory_allocated() over the timed iterations (peak stats
reset after warm-up, so compilation is not counted), weights and optimizer state included. On
the CPU the child's peak resident size (VmHWM, reset after warm-up through
/proc/self/clear_refs) minus its resident size after the imports, before any model is built.

    python scripts/benchmark.py --device cuda --crop 512 --batch 8
    SKD_BENCH_MD=$OUT/benchmarks.md python scripts/benchmark.py --device cuda   # page copy, JSON under $OUT
    python scripts/benchmark.py --device cpu --crop 129 --batch 2 --eval-size 256 512 --repeats 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from bench_report import command, machine, rss_kib, spawn_child, write_section  # noqa: E402

SETTINGS: dict[str, dict] = {
    "plain": {"amp": "off", "channels_last": False, "compile": False, "cudnn_benchmark": False},
    "amp-bf16": {"amp": "bf16", "channels_last": False, "compile": False, "cudnn_benchmark": False},
    "channels-last": {"amp": "off", "channels_last": True, "compile": False, "cudnn_benchmark": False},
    "compile": {"amp": "off", "channels_last": False, "compile": True, "cudnn_benchmark": False},
    "fast": {"amp": "bf16", "channels_last": True, "compile": True, "cudnn_benchmark": True},
}
DESCRIBE = {
    "plain": "float32 (TF32 off), eager, contiguous",
    "amp-bf16": "--amp bf16",
    "channels-last": "--channels-last",
    "compile": "--compile",
    "fast": "--amp bf16 --channels-last --compile",
}
DEFAULT_SETTINGS = {"cpu": ["plain", "amp-bf16", "channels-last", "compile", "fast"], "cuda": ["plain", "fast"]}
DEFAULTS = {
    "cpu": {"crop": 129, "batch": 2, "eval_size": [256, 512], "steps": 3, "warmup": 1, "stat": "best",
            "workers": 2},
    "cuda": {"crop": 512, "batch": 8, "eval_size": [1024, 2048], "steps": 10, "warmup": 3, "stat": "median",
             "workers": min(8, os.cpu_count() or 1)},
}
# The data phase: this many synthetic training images (1024x2048 by default, Cityscapes' size;
# their PNGs are then about as large as Cityscapes', ~3.8 MB), read over and over; at least this many batches timed,
# and ten per worker, so that the batches the workers had prefetched before the clock started
# weigh little.
DATA_IMAGES = 8
DATA_MIN_BATCHES = 20
PHASES = ("step", "eval")  # per setting; "data" (the loader) runs once, settings do not touch it
STATS = {"median": statistics.median, "best": min}
# A switch "pays" on the CPU when it is at least this much faster than plain (below: noise).
PAYS = 1.05


# ----------------------------------------------------------------------------- child process

def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def train_args(case: dict):
    """The skd-train namespace of this case, parsed and range-checked as skd-train does."""
    from skd.options import check_train_args, logit_size, resolve_dataset, resolve_distill_defaults, train_parser

    crop = case["crop"]
    # The discriminator needs 64x64 logits; smaller crops resize them, as --d-input-size does.
    d_size = 0 if min(logit_size((crop, crop))) >= 64 else 65
    argv = [
        "--data-dir", case["workdir"], "--snapshot-dir", str(Path(case["workdir"]) / "snap"),
        "--arch", case["arch"], "--width-mult", str(case["width_mult"]), "--restore-from", case["student_ckpt"],
        "--teacher-arch", case["teacher_arch"], "--teacher-width-mult", str(case["teacher_width_mult"]),
        "--teacher-ckpt", case["teacher_ckpt"], "--pi", "True", "--pa", "True", "--ho", "True",
        "--d-input-size", str(d_size), "--input-size", f"{crop},{crop}", "--batch-size", str(case["batch"]),
        "--device", case["device"], "--amp", case["amp"], "--channels-last", str(case["channels_last"]),
        "--compile", str(case["compile"]), "--num-workers", "0", "--progress", "False",
    ]
    args = train_parser().parse_args(argv)
    resolve_distill_defaults(args)
    resolve_dataset(args, train_split="train", val_split="val")
    check_train_args(args)
    return args


def run_case(case: dict) -> dict:
    """One setting, one phase: build as skd-train does, warm up, time, measure the peak memory."""
    import logging

    from skd.engine.build import build_student, build_training, compile_forwards
    from skd.engine.evaluate import Inference, evaluate
    from skd.engine.runtime import autocast_factory, configure_numerics
    from skd.engine.steps import StepConfig, train_step

    logging.getLogger("skd").setLevel(logging.WARNING)
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = case["cudnn_benchmark"]
    torch.manual_seed(0)
    args = train_args(case)
    configure_numerics(args.tf32)  # plain: true float32 (TF32 off), as skd-train's default
    autocast = autocast_factory(args.amp, device)
    base_kib = rss_kib()  # the interpreter with torch and skd imported, no model yet

    if case["phase"] == "step":
        cfg = StepConfig.from_args(args)
        # As skd.train.run builds them.
        models, _ = build_training(args, cfg, device)
        if args.compile:
            compile_forwards(models)
        models.student.train()
        b, crop = case["batch"], case["crop"]
        image = (110 + torch.randn(b, 3, crop, crop) * 50).to(device)  # raw BGR-like values
        label = torch.randint(0, args.num_classes, (b, crop, crop)).to(device)
        terms: dict[str, float] = {}

        def once() -> None:
            nonlocal terms
            terms = train_step(image, label, models=models, cfg=cfg, autocast=autocast,
                               channels_last=args.channels_last).weighted
        per_call = b
    elif case["phase"] == "data":
        from skd.engine.build import build_train_loader, build_train_set
        from skd.engine.distributed import DistInfo

        args.data_dir, args.num_workers = Path(case["data_dir"]), case["workers"]
        batches = max(DATA_MIN_BATCHES, 10 * case["workers"])
        args.num_steps = batches + 1
        batch_iter = iter(build_train_loader(build_train_set(args), args, DistInfo(), device))
        t0 = time.perf_counter()
        next(batch_iter)  # the workers start and fill their queues
        warm = [time.perf_counter() - t0]
        t0 = time.perf_counter()
        for image, label, _ in batch_iter:  # as skd-train's loop takes them
            image.to(device, non_blocking=True)
            label.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        # Throughput over the whole pass: the loader is a pipeline, so the fastest single batch
        # says nothing about its rate.
        return {"times": [elapsed], "warmup_times": warm, "images_per_call": case["batch"] * batches,
                "images_per_s": case["batch"] * batches / elapsed, "workers": case["workers"],
                "batches": batches, "threads": torch.get_num_threads()}
    else:
        net = build_student(args)[0].to(device)
        if args.channels_last:
            net.to(memory_format=torch.channels_last)
        if args.compile:
            net.forward = torch.compile(net.forward)
        h, w = case["eval_size"]
        # One image per call, from the CPU as a dataset item (evaluate copies it to the device).
        sample = [((110 + torch.randn(3, h, w) * 50), torch.randint(0, args.num_classes, (h, w)), "synthetic")]
        terms = {}
        how = Inference(crop=(case["crop"],) * 2, channels_last=args.channels_last, autocast=autocast)

        def once() -> None:
            evaluate(net, sample, device=device, num_classes=args.num_classes, how=how)
        per_call = 1

    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    warm = []
    for _ in range(case["warmup"]):
        t0 = synced()
        once()
        warm.append(synced() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hwm_reset = reset_peak_rss() if device.type == "cpu" else False
    times = []
    for _ in range(case["steps"]):
        t0 = synced()
        once()
        times.append(synced() - t0)

    res = {"times": times, "warmup_times": warm, "images_per_call": per_call,
           "images_per_s": per_call / STATS[case["stat"]](times), "terms": terms,
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        res["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        res["memory"] = "torch.cuda.max_memory_allocated over the timed iterations"
    else:
        peak_kib = rss_kib("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res["peak_mib"] = (peak_kib - base_kib) / 1024
        res["memory"] = ("peak RSS rise over the timed iterations (VmHWM reset after warm-up)" if hwm_reset
                         else "peak RSS rise over the whole child (ru_maxrss; clear_refs not allowed)")
    return res


# ---------------------------------------------------------------------------- parent process

def write_random_weights(args, workdir: Path) -> tuple[Path, Path]:
    """Random student and teacher checkpoints (skd format) with BatchNorm statistics of one
    random batch, written with skd.engine.checkpoint.save_model so that skd-train's loaders read them."""
    from skd.engine.checkpoint import save_model
    from skd.models import build_pspnet

    paths = []
    size = min(args.crop, 257)  # the statistics barely depend on the size; keep the CPU pass short
    for name, arch, width in (("student", args.arch, args.width_mult),
                              ("teacher", args.teacher_arch, args.teacher_width_mult)):
        torch.manual_seed(0)
        net = build_pspnet(arch, num_classes=args.num_classes, width_mult=width)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average: after one batch, that batch's statistics
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 3, size, size) * 50)
        path = workdir / f"{name}.pth"
        save_model(path, net.eval(), step=0, miou=None)
        paths.append(path)
    return paths[0], paths[1]


def measure_data_loading(args, common: dict, workdir: Path) -> dict:
    """The data phase, once (no setting touches the loader): synthetic images of --data-size
    (Cityscapes' by default) through skd-train's own loader with --workers processes."""
    from skd.data import make_synthetic

    data_dir = make_synthetic(workdir / "cityscapes", num_train=DATA_IMAGES, num_val=1, num_test=0,
                              height=args.data_size[0], width=args.data_size[1], seed=0)
    pngs = sorted((data_dir / "leftImg8bit" / "train").glob("*/*.png"))
    res = spawn_child(__file__, {**common, **SETTINGS["plain"], "phase": "data", "data_dir": str(data_dir),
                                 "workers": args.workers})
    res["png_mib"] = statistics.mean(p.stat().st_size for p in pngs) / 2**20
    shown = res.get("error") or f"{res['images_per_s']:.1f} images/s with {args.workers} workers"
    print(f"data: {shown}", flush=True)
    return res


def data_line(data: dict, results: dict, args) -> str:
    """Whether skd-train's loader keeps up with the fastest training step measured."""
    if "error" in data:
        return f"Data loading: failed: {data['error']}"
    steps = [(r["images_per_s"], s) for s, phases in results.items() if (r := phases.get("step"))]
    workers = f"{data['workers']} worker" + ("s" if data["workers"] != 1 else "")
    line = (f"Data loading (`skd.engine.build.build_train_loader`, {workers}, random scale, mirror and "
            f"{args.crop}x{args.crop} crop of {args.data_size[0]}x{args.data_size[1]} PNGs of {data['png_mib']:.1f} MiB, "
            f"batch {args.batch}, "
            f"{data['batches']} batches after the first): {data['images_per_s']:.1f} images/s")
    if not steps:
        return line + "."
    fastest, setting = max(steps)
    keeps = data["images_per_s"] >= fastest
    return line + (f", {data['images_per_s'] / fastest:.1f}x the fastest step ({setting}, {fastest:.2f} images/s): "
                   + ("keeps up." if keeps else "does NOT keep up; raise --num-workers."))


def best_runs(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "error" not in r]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def speedup(results: dict, setting: str, phase: str) -> float | None:
    mine, plain = results[setting].get(phase), results.get("plain", {}).get(phase)
    if not mine or not plain:
        return None
    return mine["images_per_s"] / plain["images_per_s"]


def table(device: str, results: dict, errors: dict) -> str:
    rows = ["| setting | flags | step images/s | eval images/s | step peak (MiB) | eval peak (MiB) "
            "| step speed-up vs plain | eval speed-up vs plain |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(setting: str, phase: str, key: str, fmt: str) -> str:
        r = results[setting].get(phase)
        if r:
            return format(r[key], fmt)
        return "not run" if errors[setting][phase] == "not run" else f"failed: {errors[setting][phase]}"

    for setting in results:
        ups = [speedup(results, setting, p) for p in PHASES]
        flags = DESCRIBE[setting]
        if device == "cuda" and SETTINGS[setting]["cudnn_benchmark"]:
            flags += " + cudnn.benchmark"
        rows.append(
            f"| {setting} | {flags} | {cell(setting, 'step', 'images_per_s', '.2f')} "
            f"| {cell(setting, 'eval', 'images_per_s', '.2f')} | {cell(setting, 'step', 'peak_mib', '.0f')} "
            f"| {cell(setting, 'eval', 'peak_mib', '.0f')} | "
            + " | ".join("" if u is None else f"{u:.2f}x" for u in ups) + " |")
    return "\n".join(rows)


def warmup_line(runs: dict) -> str:
    """How long the warm-up took where torch.compile compiles (longest over the repeats: the
    first run compiles, later ones may hit the inductor cache)."""
    parts = []
    for setting, phases in runs.items():
        if SETTINGS[setting]["compile"]:
            secs = {p: max((sum(r["warmup_times"]) for r in rs if "error" not in r), default=None)
                    for p, rs in phases.items()}
            shown = ", ".join(f"{p} {v:.0f} s" for p, v in secs.items() if v is not None)
            if shown:
                parts.append(f"{setting}: {shown}")
    if not parts:
        return ""
    return ("Warm-up (untimed first iterations, compilation included; longest of the repeats): "
            + "; ".join(parts) + ".\n")


def verdict(device: str, results: dict, crop: int, batch: int) -> tuple[str, dict]:
    """One line against the issue's target and, on the CPU, one saying which switches pay."""
    def x(u: float | None) -> str:
        return "n/a" if u is None else f"{u:.2f}x"

    step_up = speedup(results, "fast", "step") if "fast" in results else None
    eval_up = speedup(results, "fast", "eval") if "fast" in results else None
    info: dict = {"fast_step_speedup": step_up, "fast_eval_speedup": eval_up, "met": None}
    if step_up is None:
        line = "Verdict: no step figures for both plain and fast, so none against the target."
    elif device == "cuda":
        info["met"] = step_up >= 2.0
        where = "" if (crop, batch) == (512, 8) else f" (measured at {crop}x{crop} batch {batch}, not 512x512 batch 8)"
        line = (f"Verdict: target fast >= 2x plain images/s at 512x512 batch 8: fast step {x(step_up)}, "
                f"eval {x(eval_up)} plain{where}: {'met' if info['met'] else 'NOT met'}.")
    else:
        info["met"] = step_up >= 1.0 and (eval_up is None or eval_up >= 1.0)
        line = (f"Verdict: target fast settings not slower than plain on the CPU: fast step {x(step_up)}, "
                f"eval {x(eval_up)} plain: {'met' if info['met'] else 'NOT met'}.")
    if device == "cpu":
        pays = {s: {p: (u := speedup(results, s, p)) is not None and u >= PAYS for p in PHASES}
                for s in ("amp-bf16", "channels-last", "compile") if s in results}
        if pays:
            names = {p: ", ".join(s for s, v in pays.items() if v[p]) or "none" for p in PHASES}
            line += (f"\nSwitches that pay alone (>= {round((PAYS - 1) * 100)}% more images/s than plain): "
                     f"training step: {names['step']}; evaluation: {names['eval']}.")
        info["pays"] = pays
    return line, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Distillation step and whole-image evaluation: images/s "
                                                 "and peak memory, plain vs fast settings")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--crop", type=int, help="square training crop (default: cpu 129, cuda 512)")
    parser.add_argument("--batch", type=int, help="training batch (default: cpu 2, cuda 8)")
    parser.add_argument("--eval-size", type=int, nargs=2, metavar=("H", "W"),
                        help="evaluation image size (default: cpu 256 512, cuda 1024 2048, Cityscapes)")
    parser.add_argument("--steps", type=int, help="timed iterations per case (default: cpu 3, cuda 10)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default: cpu 1, cuda 3)")
    parser.add_argument("--stat", choices=list(STATS),
                        help="time per iteration: median or best of the timed ones (default: cpu best, cuda median)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every case, interleaved; best kept (default 1)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        help="settings to compare (default: cpu all five, cuda plain fast)")
    parser.add_argument("--phases", nargs="+", choices=PHASES + ("data",), default=list(PHASES) + ["data"],
                        help="default: step eval data")
    parser.add_argument("--data-size", type=int, nargs=2, metavar=("H", "W"), default=[1024, 2048],
                        help="training image size in the data phase (default 1024 2048, Cityscapes)")
    parser.add_argument("--workers", type=int,
                        help="loader processes in the data phase (default: cpu 2 as skd-train, cuda min(8, cores))")
    parser.add_argument("--arch", default="resnet18", help="student (default resnet18)")
    parser.add_argument("--width-mult", type=float, default=1.0, help="student width (default 1.0)")
    parser.add_argument("--teacher-arch", default="resnet101", help="teacher (default resnet101)")
    parser.add_argument("--teacher-width-mult", type=float, default=1.0, help="teacher width (default 1.0)")
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in the cases (default: torch's)")
    parser.add_argument("--json", type=Path, help="output JSON (default: $OUT or /tmp, benchmark_step_<device>.json)")
    parser.add_argument("--no-write", action="store_true", help="print the section only; leave docs/benchmarks.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmark.py: --device cuda but torch.cuda.is_available() is False")
    for k, v in DEFAULTS[args.device].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    settings = args.settings or DEFAULT_SETTINGS[args.device]
    if "plain" not in settings:
        settings = ["plain", *settings]
    started = time.perf_counter()
    out_json = args.json or Path(os.environ.get("OUT") or tempfile.gettempdir()) / f"benchmark_step_{args.device}.json"

    measure_data = "data" in args.phases
    args.phases = [p for p in args.phases if p != "data"]
    with tempfile.TemporaryDirectory(prefix="skd_bench_") as tmp:
        workdir = Path(tmp)
        student_ckpt, teacher_ckpt = write_random_weights(args, workdir)
        common = {"device": args.device, "crop": args.crop, "batch": args.batch, "eval_size": args.eval_size,
                  "steps": args.steps, "warmup": args.warmup, "arch": args.arch, "width_mult": args.width_mult,
                  "teacher_arch": args.teacher_arch, "teacher_width_mult": args.teacher_width_mult,
                  "threads": args.threads, "stat": args.stat, "workdir": str(workdir),
                  "student_ckpt": str(student_ckpt), "teacher_ckpt": str(teacher_ckpt)}
        runs: dict[str, dict[str, list[dict]]] = {s: {p: [] for p in args.phases} for s in settings}
        for rep in range(args.repeats):
            for setting in settings:
                for phase in args.phases:
                    res = spawn_child(__file__, {**common, **SETTINGS[setting], "phase": phase})
                    runs[setting][phase].append(res)
                    shown = res.get("error") or (f"{res['images_per_s']:.2f} images/s, peak {res['peak_mib']:.0f} MiB, "
                                                 f"warm-up {sum(res['warmup_times']):.1f} s")
                    print(f"[{rep + 1}/{args.repeats}] {setting} {phase}: {shown}", flush=True)
        data = measure_data_loading(args, common, workdir) if measure_data else None

    results = {s: {p: best_runs(runs[s][p]) for p in args.phases} for s in settings}
    errors = {s: {p: next((r["error"] for r in runs[s][p] if "error" in r), "") for p in args.phases}
              for s in settings}
    for s in settings:  # a phase not run is no failure
        for p in PHASES:
            results[s].setdefault(p, None)
            errors[s].setdefault(p, "not run")
    line, info = verdict(args.device, results, args.crop, args.batch)

    amp_note = " bf16 autocast, losses in float32;" if any(SETTINGS[s]["amp"] == "bf16" for s in settings) else ""
    gpu_note = ("cudnn.benchmark on in fast only; float32 convolutions use TF32 (PyTorch's default). "
                if args.device == "cuda" else "")
    mem = ("torch.cuda.max_memory_allocated over the timed iterations (weights, optimizer state and "
           "activations)" if args.device == "cuda" else
           "peak resident size over the timed iterations minus the child's resident size after its imports "
           "(weights, optimizer state, activations, compiled code)")
    body = (
        f"Distillation step and whole-image evaluation (`scripts/benchmark.py` explains the cases). "
        f"Step: `train_step` with --pi --pa --ho, teacher PSPNet-{args.teacher_arch[6:]} "
        f"(width {args.teacher_width_mult}) in inference mode, student PSPNet-{args.arch[6:]} "
        f"(width {args.width_mult}), discriminator step with the gradient penalty, crop {args.crop}x{args.crop}, "
        f"batch {args.batch}; step images/s = batch / step time. Eval: `evaluate` (whole image, "
        f"single scale) of the student on {args.eval_size[0]}x{args.eval_size[1]} images, one per call. "
        f"Random weights, synthetic input;{amp_note} {args.stat} of {args.steps} iterations after {args.warmup} "
        f"warm-up, best of {args.repeats} interleaved runs; torch CPU threads: "
        f"{next((r['threads'] for s in results.values() for r in s.values() if r), '?')}. "
        f"Peak memory: {mem}. "
        f"{gpu_note}"
        f"JSON: `{out_json.name}`.\n\n"
        + table(args.device, results, errors) + "\n\n" + warmup_line(runs) + line
        + ("\n" + data_line(data, results, args) if data is not None else "")
    )
    record = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "torch": torch.__version__,
        "command": command(), "device": args.device,
        "config": {k: v for k, v in common.items() if k not in ("workdir", "student_ckpt", "teacher_ckpt")},
        "repeats": args.repeats, "settings": {s: SETTINGS[s] for s in settings},
        "results": results, "runs": runs, "verdict": line, **info, "data": data,
        "wall_s": time.perf_counter() - started,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2))
    print(body)
    print(f"JSON written to {out_json}")
    if not args.no_write:
        write_section(f"step-{args.device}", body)


if __name__ == "__main__":
    main()
