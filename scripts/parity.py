"""mIoU parity of the fast settings: the same short distillation run, plain and fast, over seeds.

scripts/benchmark.py shows that --amp bf16 --channels-last --compile make a step faster; this
script shows that they do not make the student worse. It trains a teacher once (plain), then
the student with --pi --pa --ho under each setting and seed, through skd-train itself, on the
synthetic Cityscapes-format dataset, and compares the final validation mIoU:

    python scripts/parity.py --device cpu --seeds 0 1 2      # the demo's sizes, about 10 min on 2 cores
    python scripts/parity.py --device cuda --seeds 0 1 2     # larger images and models

Settings are scripts/benchmark.py's: "plain" is true float32 (--tf32 False, TF32 off on GPUs
that have it), eager, contiguous; "fast" is --amp bf16 --channels-last True --compile True (also
--tf32 False: bf16 autocast decides the convolutions' precision there). Both settings use the same seeds, so each seed starts from
the same weights and sees the same crops in the same order.

Verdict: the fast mean is within noise of the plain mean when |mean_fast - mean_plain| <= 2 SE,
SE = sqrt(s_plain^2 / n + s_fast^2 / n) with s the seed-to-seed standard deviation of each
setting (two standard errors of the difference of two means, as a Welch test at about 95%).
It needs at least two seeds. The per-seed differences are shown too.

A finished run (val_final.json) is reused when its flags are the same, and an interrupted one
resumes, as in scripts/ablation.py, so a command cut off by a time limit can simply be rerun.
Writes the "parity-<device>" section of docs/benchmarks.md (SKD_BENCH_MD moves it) and a JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from ablation import DEMO, run, train  # noqa: E402
from bench_report import command, machine, write_section  # noqa: E402
from skd.errors import cli  # noqa: E402
from skd.io import write_text_atomic  # noqa: E402

# The same settings as scripts/benchmark.py, as skd-train flags.
SETTING_FLAGS = {
    "plain": ["--amp", "off", "--channels-last", "False", "--compile", "False", "--tf32", "False"],
    "fast": ["--amp", "bf16", "--channels-last", "True", "--compile", "True", "--tf32", "False"],
}
DISTIL = ["--pi", "True", "--pa", "True", "--ho", "True"]

# Per device: the synthetic dataset, the flags of every run, the teacher's and the student's.
# CPU: the ablation demo's (a 96x96 crop, teacher R18 x0.5 450 steps at batch 4, student R18 x0.25 150 steps,
# one thread each: the plain runs are the demo's + pi + pa + ho row again).
# CUDA: larger images and full-width ResNet-18s; the teacher is still short-trained, since only
# the difference between the two settings matters here.
CONFIGS = {
    "cpu": {
        "synthetic": DEMO["synthetic"],
        "common": DEMO["common"],
        "teacher": DEMO["teacher"],
        "student": DEMO["student"] + DEMO["teacher_arch"],
    },
    "cuda": {
        "synthetic": ["--num-train", "64", "--num-val", "16", "--num-test", "4", "--height", "384", "--width", "768"],
        "common": ["--input-size", "384,384", "--batch-size", "8", "--num-workers", "4", "--device", "cuda",
                   "--eval-every", "0", "--save-every", "1000", "--log-every", "50", "--progress", "False"],
        "teacher": ["--arch", "resnet18", "--width-mult", "1.0", "--num-steps", "600", "--lr-g", "0.02"],
        "student": ["--arch", "resnet18", "--width-mult", "0.5", "--num-steps", "300", "--lr-g", "0.02",
                    "--lambda-pi", "1", "--lambda-d", "0.01", "--teacher-arch", "resnet18",
                    "--teacher-width-mult", "1.0"],
    },
}


def within_noise(plain: list[float], fast: list[float]) -> dict:
    """Difference of means and its standard error from the seed-to-seed spread (Welch).

    Returns diff (fast - plain), se, and parity (|diff| <= 2 se); se and parity are None with
    fewer than two values on either side (no spread to judge by).
    """
    diff = statistics.mean(fast) - statistics.mean(plain)
    if len(plain) < 2 or len(fast) < 2:
        return {"diff": diff, "se": None, "parity": None}
    se = math.sqrt(statistics.variance(plain) / len(plain) + statistics.variance(fast) / len(fast))
    return {"diff": diff, "se": se, "parity": abs(diff) <= 2 * se}


def timed_train(launch: list[str], snapshot: Path, flags: list[str]) -> tuple[dict, float | None]:
    """`ablation.train`, plus the wall time of the run (kept in parity_time.json; None when the
    run was finished before this script first timed it)."""
    timing = snapshot / "parity_time.json"
    done = (snapshot / "val_final.json").exists()
    start = time.perf_counter()
    summary = train(launch, snapshot, flags)
    if not done:
        write_text_atomic(timing, json.dumps({"wall_s": time.perf_counter() - start}))
    seconds = json.loads(timing.read_text())["wall_s"] if timing.exists() else None
    return summary, seconds


def report(results: dict[str, list[dict]], seconds: dict[str, list[float | None]], seeds: list[int],
           teacher: dict, device: str, json_name: str) -> tuple[str, dict]:
    """The markdown body of the section and the verdict record."""
    miou = {s: [100 * r["mIoU"] for r in runs] for s, runs in results.items()}

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    lines = ["| setting | flags | " + " | ".join(f"seed {s}" for s in seeds) + " | mIoU (mean ± std) | train time per run (s) |",
             "| --- | --- | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: |"]
    for setting, values in miou.items():
        times = [t for t in seconds[setting] if t is not None]
        mean_time = f"{statistics.mean(times):.0f}" if times else "-"
        lines.append(f"| {setting} | {' '.join(SETTING_FLAGS[setting])} | "
                     + " | ".join(f"{v:.2f}" for v in values) + f" | {spread(values)} | {mean_time} |")
    test = within_noise(miou["plain"], miou["fast"])
    paired = [f - p for p, f in zip(miou["plain"], miou["fast"])]
    lines.append("")
    lines.append("Per-seed difference fast - plain: " + ", ".join(f"{d:+.2f}" for d in paired) + " mIoU.")
    if test["parity"] is None:
        verdict = (f"Verdict: fast - plain = {test['diff']:+.2f} mIoU; with one seed there is no spread to judge "
                   "it by (run --seeds 0 1 2).")
    else:
        verdict = (f"Verdict: fast - plain = {test['diff']:+.2f} mIoU, standard error {test['se']:.2f} "
                   f"(seed spread, {len(seeds)} seeds each): "
                   + ("within noise (|difference| <= 2 SE): parity." if test["parity"]
                      else "NOT within noise (|difference| > 2 SE)."))
    cfg = CONFIGS[device]
    body = (
        f"mIoU parity of the fast settings (`scripts/parity.py` explains the test). Synthetic dataset "
        f"({' '.join(cfg['synthetic'])}); teacher trained once, plain ({' '.join(cfg['teacher'])}): "
        f"{100 * teacher['mIoU']:.2f} mIoU. Student runs: skd-train {' '.join(DISTIL)} "
        f"{' '.join(cfg['common'] + cfg['student'])}, then the final validation (whole image, single scale) "
        f"under the run's own settings. Train time: skd-train's wall time, start-up, compilation and "
        f"validation included. JSON: `{json_name}`.\n\n" + "\n".join(lines) + "\n\n" + verdict
    )
    return body, {"miou": miou, "paired_diff": paired, **test, "verdict": verdict}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=list(CONFIGS), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every setting (default 0 1 2)")
    p.add_argument("--snapshot-root", type=Path, help="runs and data (default runs/parity-<device>)")
    p.add_argument("--launch", default=f"{sys.executable} -m skd.train",
                   help="training command, e.g. 'torchrun --nproc_per_node=4 -m skd.train'")
    p.add_argument("--json", type=Path, help="output JSON (default: $OUT or /tmp, parity_<device>.json)")
    p.add_argument("--no-write", action="store_true", help="print the section only; leave docs/benchmarks.md")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")

    started = time.perf_counter()
    cfg = CONFIGS[args.device]
    root = args.snapshot_root or ROOT / "runs" / f"parity-{args.device}"
    data = root / "data"
    py = [sys.executable, "-m"]
    if not (data / "leftImg8bit").exists():
        run(py + ["skd.data.synthetic", "--out", str(data), "--seed", "0"] + cfg["synthetic"])
    base = ["--data-dir", str(data)] + cfg["common"]
    launch = shlex.split(args.launch)
    teacher = train(launch, root / "teacher", base + cfg["teacher"])
    student = base + cfg["student"] + DISTIL + ["--teacher-ckpt", str(root / "teacher" / "final.pth")]
    results: dict[str, list[dict]] = {s: [] for s in SETTING_FLAGS}
    seconds: dict[str, list[float | None]] = {s: [] for s in SETTING_FLAGS}
    for seed in args.seeds:  # interleaved, so that a cut-off command leaves both settings as far along
        for setting, flags in SETTING_FLAGS.items():
            summary, secs = timed_train(launch, root / setting / f"seed{seed}",
                                        student + flags + ["--seed", str(seed)])
            results[setting].append(summary)
            seconds[setting].append(secs)

    out_json = args.json or Path(os.environ.get("OUT") or tempfile.gettempdir()) / f"parity_{args.device}.json"
    body, record = report(results, seconds, args.seeds, teacher, args.device, out_json.name)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_json, json.dumps({
        "date": datetime.date.today().isoformat(), "machine": machine(), "command": command(),
        "device": args.device, "seeds": args.seeds, "settings": SETTING_FLAGS, "config": cfg,
        "teacher_miou": teacher["mIoU"], "train_seconds": seconds, "wall_s": time.perf_counter() - started,
        **record}, indent=2))
    print("\n" + body)
    print(f"JSON written to {out_json}")
    if not args.no_write:
        write_section(f"parity-{args.device}", body)


if __name__ == "__main__":
    sys.exit(cli(main)())
