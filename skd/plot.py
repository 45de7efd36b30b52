"""skd-plot: PNG charts of training runs and of an ablation (`pip install 'skd[plot]'`).

    skd-plot runs/baseline runs/pi runs/pi+pa --out plots      # curves and per-class IoU of runs
    skd-plot --ablation runs/ablation --out plots               # the ablation table as charts

For RUN folders (each with the metrics.jsonl that skd-train writes) it writes:
- losses.png: one panel per loss term over steps, every run a line; a term logged both
  weighted (`pa`: lambda times the value, what the student's loss adds) and raw (`pa_raw`)
  gets the two panels side by side; then the total `loss` and the learning rate `lr_g`.
  Terms starting with `d_` are the discriminator's. Runs logged before raw values existed
  (weighted names only) plot what they have.
- val_miou.png: validation mIoU (%) over steps, every run a line.
- per_class.png: per-class IoU (%) of every run as grouped bars, from `<run>/val_final.json`
  (or, without it, the run's last validation in metrics.jsonl).
For `--ablation ROOT`, laid out as scripts/ablation.py writes it (ROOT/<row>/seed<k>/
val_final.json, or ROOT/<row>/val_final.json for a single run such as the demo's teacher):
- ablation_miou.png: mIoU (%) of every row, mean over seeds with a +-1 std bar and each seed
  as a dot, the value written above the bar.
- ablation_per_class.png: per-class IoU (%) of every row (mean over seeds, std bars).
Records repeated for a step (a run resumed from an earlier checkpoint) keep the later one.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skd.errors import SkdError, cli

# Keys of a training record that are not loss terms.
NON_TERMS = ("step", "loss", "lr_g", "lr_d", "sec_per_step", "skipped", "val")
RAW_SUFFIX = "_raw"
# Ablation rows in the order of the paper's table (scripts/ablation.py ROWS); others follow by name.
ROW_ORDER = ("teacher", "baseline", "pi", "pi+pa", "pi+pa+ho", "cwd", "dist", "kd")
DPI = 100
PANEL_W, PANEL_H = 5.0, 2.6     # inches of one panel of losses.png
MIOU_SIZE = (7.0, 4.0)


def _pyplot_free_figure(figsize: tuple[float, float]):
    """A matplotlib Figure with the Agg canvas, without pyplot's global state."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SkdError("skd-plot needs matplotlib, which is not installed: pip install 'skd[plot]'") from None
    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as e:
        raise SkdError(f"could not write {path}: {e.strerror}") from None
    return path


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a metrics.jsonl, each sorted by step, one per
    step (the last written wins). Skipped-step records are dropped. SkdError naming the file
    and line for a line that is not a JSON object with a "step"."""
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SkdError(f"{path}: cannot read it ({e.strerror}); is it a run folder of skd-train?") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a run killed while writing its last line
                continue
            raise SkdError(f"{path}, line {number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise SkdError(f"{path}, line {number}: expected a JSON object with an integer \"step\"")
        if "val" in record:
            val[record["step"]] = record["val"]
        elif "skipped" not in record:
            train[record["step"]] = record
    return ([train[s] for s in sorted(train)],
            [{"step": s, **val[s]} for s in sorted(val)])


def loss_terms(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the loss terms in training records, in order of first appearance: every
    numeric key but NON_TERMS, with `<name>_raw` folded into `<name>`."""
    names: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k in NON_TERMS or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            names.setdefault(k[:-len(RAW_SUFFIX)] if k.endswith(RAW_SUFFIX) else k, None)
    return list(names)


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels for run folders: the fewest trailing path parts that tell them
    apart (runs/a/seed0 and runs/b/seed0 -> a/seed0, b/seed0)."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _panel_rows(runs: Mapping[str, list[dict]]) -> list[list[str]]:
    """Keys of losses.png, two per row: a term beside its raw values, else two terms."""
    records = [r for rs in runs.values() for r in rs]
    keys = {k for r in records for k in r}
    rows: list[list[str]] = []
    single: list[str] = []
    for term in loss_terms(records):
        pair = [k for k in (term, term + RAW_SUFFIX) if k in keys]
        if len(pair) == 2:
            rows.append(pair)
        else:
            single += pair
    tail = single + [k for k in ("loss", "lr_g") if k in keys]
    rows += [tail[i:i + 2] for i in range(0, len(tail), 2)]
    return rows


def _title(key: str) -> str:
    if key == "loss":
        return "loss: total of the weighted terms"
    if key == "lr_g":
        return "lr_g: student learning rate"
    raw = key.endswith(RAW_SUFFIX)
    base = key[:-len(RAW_SUFFIX)] if raw else key
    who = " (discriminator)" if base.startswith("d_") else ""
    return f"{key}{who}: raw (unweighted)" if raw else f"{key}{who}: weighted"


def plot_losses(runs: Mapping[str, list[dict]], path: Path) -> Path | None:
    """losses.png of the training records of each run ({label: records}); None if there are none."""
    rows = _panel_rows(runs)
    if not rows:
        return None
    fig = _pyplot_free_figure((2 * PANEL_W, len(rows) * PANEL_H))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, keys in zip(axes, rows):
        for ax, key in zip(row, keys + [None] * (2 - len(keys))):
            if key is None:
                ax.set_axis_off()
                continue
            for i, records in enumerate(runs.values()):
                points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if points:
                    ax.plot(*zip(*points), color=_run_color(i), linewidth=1.2)
            ax.set_title(_title(key), fontsize=10)
            _step_axis(ax)
            ax.tick_params(labelsize=8)
            if key == "lr_g":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _run_legend(fig, list(runs))
    return _save(fig, path)


def _run_color(i: int) -> str:
    """The colour of the i-th run in every chart of the runs."""
    return f"C{i % 10}"


def _step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _run_legend(fig, labels: list[str]) -> None:
    """One legend for the figure, above the panels: run i has colour _run_color(i) everywhere,
    also in panels where only some runs have values."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=_run_color(i), linewidth=2) for i in range(len(labels))]
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4), fontsize=9, frameon=False)


def plot_val_miou(runs: Mapping[str, list[dict]], path: Path) -> Path | None:
    """val_miou.png of the validation records of each run; None if no run validated."""
    if not any(runs.values()):
        return None
    fig = _pyplot_free_figure(MIOU_SIZE)
    ax = fig.subplots()
    for i, (label, records) in enumerate(runs.items()):
        if records:
            ax.plot([r["step"] for r in records], [100 * r["mIoU"] for r in records], marker="o",
                    markersize=4, linewidth=1.2, label=label, color=_run_color(i))
    ax.set_title("validation mIoU", fontsize=11)
    _step_axis(ax)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=9)
    return _save(fig, path)


def per_class_size(num_classes: int, num_groups: int) -> tuple[float, float]:
    """Figure size (inches) of a per-class bar chart."""
    return 2.0 + num_classes * (0.13 * num_groups + 0.3), 4.5


def plot_per_class(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> Path | None:
    """Grouped bars of per-class IoU (%): one group per class, one bar per entry of `groups`
    ({label: [summary, ...]}, summaries as val_final.json; several are averaged, std bars)."""
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    classes = list(next(iter(groups.values()))[0]["per_class"])
    fig = _pyplot_free_figure(per_class_size(len(classes), len(groups)))
    ax = fig.subplots()
    width = 0.8 / len(groups)
    top = 0.0
    for i, (label, summaries) in enumerate(groups.items()):
        means, stds = [], []
        for c in classes:
            values = [100 * s["per_class"].get(c, math.nan) for s in summaries]
            means.append(statistics.mean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(classes))]
        miou = statistics.mean(100 * s["mIoU"] for s in summaries)
        ax.bar(xs, means, width, yerr=stds if any(stds) else None, capsize=1.5, error_kw={"linewidth": 0.8},
               label=f"{label} (mIoU {miou:.2f})", color=_row_color(label, i))
        top = max([top] + [m + d for m, d in zip(means, stds) if not math.isnan(m)])
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=9)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, min(100.0, 10 * math.ceil(top / 10 + 0.05)) or 10)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", fontsize=9, ncols=min(len(groups), 5), frameon=False)
    return _save(fig, path)


def _row_color(label: str, i: int) -> str:
    """Bars of a teacher grey, the others as the runs' lines."""
    return "0.55" if label == "teacher" else _run_color(i)


def read_summary(path: Path) -> dict:
    """A val_final.json (ConfusionMatrix.summary): SkdError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise SkdError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SkdError(f"{path}: not JSON ({e.msg})") from None
    if not (isinstance(data, dict) and isinstance(data.get("mIoU"), (int, float))
            and isinstance(data.get("per_class"), dict)):
        raise SkdError(f"{path}: expected a validation summary with \"mIoU\" and \"per_class\"")
    return data


def read_ablation(root: Path) -> dict[str, list[dict]]:
    """{row: [summary of each seed]} of an ablation folder: ROOT/<row>/seed<k>/val_final.json
    (seeds in numeric order) or ROOT/<row>/val_final.json; rows in ROW_ORDER, then by name.
    Rows without any finished run are left out; SkdError if none is finished."""
    if not root.is_dir():
        raise SkdError(f"--ablation {root}: no such folder")
    rows: dict[str, list[dict]] = {}
    for row in sorted(p for p in root.iterdir() if p.is_dir()):
        seeds = sorted((p for p in row.glob("seed*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
        files = [s / "val_final.json" for s in seeds if (s / "val_final.json").is_file()]
        if not files and (row / "val_final.json").is_file():
            files = [row / "val_final.json"]
        if files:
            rows[row.name] = [read_summary(f) for f in files]
    if not rows:
        raise SkdError(f"--ablation {root}: no <row>/seed<k>/val_final.json below it (is the ablation finished?)")
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    return dict(sorted(rows.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def ablation_size(num_rows: int) -> tuple[float, float]:
    """Figure size (inches) of ablation_miou.png."""
    return 2.5 + 1.3 * num_rows, 4.5


def plot_ablation_miou(rows: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> Path:
    """ablation_miou.png: one bar per row, mean mIoU (%) over its seeds, +-1 std, seeds as dots."""
    fig = _pyplot_free_figure(ablation_size(len(rows)))
    ax = fig.subplots()
    top = 0.0
    for i, (label, summaries) in enumerate(rows.items()):
        values = [100 * s["mIoU"] for s in summaries]
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.bar(i, mean, 0.6, yerr=std if std else None, capsize=4, color=_row_color(label, i))
        ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
        text = f"{mean:.2f}" + (f"\n± {std:.2f} ({len(values)} seeds)" if len(values) > 1 else "")
        high = max(values + [mean + std])
        ax.annotate(text, (i, high), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=9)
        top = max(top, high)
    ax.set_xticks(range(len(rows)), list(rows), fontsize=10)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, top * 1.25 + 1)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_runs(run_dirs: Sequence[Path], out: Path, names: Sequence[str] | None = None) -> list[Path]:
    """losses.png, val_miou.png and per_class.png of run folders in `out`; the paths written."""
    labels = list(names) if names else run_labels(run_dirs)
    train, val, final = {}, {}, {}
    for label, run in zip(labels, run_dirs):
        metrics = Path(run) / "metrics.jsonl"
        if not metrics.is_file():
            raise SkdError(f"{run}: no metrics.jsonl in it; pass the --snapshot-dir of a skd-train run")
        train[label], val[label] = read_metrics(metrics)
        summary_file = Path(run) / "val_final.json"
        if summary_file.is_file():
            final[label] = [read_summary(summary_file)]
        elif val[label]:
            final[label] = [val[label][-1]]
    written = [plot_losses(train, out / "losses.png"), plot_val_miou(val, out / "val_miou.png"),
               plot_per_class(final, out / "per_class.png", "per-class IoU at the end of training")]
    return [p for p in written if p is not None]


def plot_ablation(root: Path, out: Path) -> list[Path]:
    """ablation_miou.png and ablation_per_class.png of an ablation folder in `out`."""
    rows = read_ablation(root)
    seeds = sorted({len(v) for k, v in rows.items() if k != "teacher"})
    what = f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}"
    return [plot_ablation_miou(rows, out / "ablation_miou.png", f"ablation: mIoU ({what}) — {root.name}"),
            plot_per_class(rows, out / "ablation_per_class.png", f"ablation: per-class IoU, mean over seeds — {root.name}")]


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skd-plot", description="PNG charts of skd-train runs and of an ablation.")
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                   help="run folders (--snapshot-dir of skd-train): losses.png, val_miou.png, per_class.png")
    p.add_argument("--ablation", type=Path, default=None, metavar="ROOT",
                   help="ablation folder (ROOT/<row>/seed<k>/val_final.json, as scripts/ablation.py writes): "
                        "ablation_miou.png, ablation_per_class.png")
    p.add_argument("--names", nargs="+", default=None, help="legend labels of the RUNs (default: their folder names)")
    p.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs (default plots)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = plot_parser().parse_args(argv)
    if not args.runs and args.ablation is None:
        raise SkdError("nothing to plot: give RUN folders and/or --ablation ROOT")
    if args.names is not None and len(args.names) != len(args.runs):
        raise SkdError(f"--names: {len(args.names)} names for {len(args.runs)} runs")
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            raise SkdError(f"{run}: no metrics.jsonl in it; pass the --snapshot-dir of a skd-train run")
    if args.ablation is not None and not args.ablation.is_dir():
        raise SkdError(f"--ablation {args.ablation}: no such folder")
    _pyplot_free_figure((1, 1))  # a missing matplotlib fails before anything is read
    written = plot_runs(args.runs, args.out, args.names) if args.runs else []
    if args.ablation is not None:
        written += plot_ablation(args.ablation, args.out)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
