"""skd.plot: reading runs and ablations, the panel layout, and PNGs of the expected size."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from skd.errors import SkdError
from skd.plot import (
    _panel_rows,
    loss_terms,
    main,
    read_ablation,
    read_metrics,
    run_labels,
)



def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk, read by hand."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def summary(miou: float, road: float, car: float, sky: float) -> dict:
    return {"mIoU": miou, "pixel_accuracy": 0.9, "per_class": {"road": road, "car": car, "sky": sky}}


def write_run(folder: Path, raw: bool = True, final: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for step in (2, 4, 6):
        rec = {"step": step, "lr_g": 0.01 / step, "task": 3.0 / step, "pa": 0.0, "pi": 1.0 / step,
               "loss": 3.0 / step + 1.0 / step, "sec_per_step": 0.1}
        if raw:
            rec.update(task_raw=3.0 / step, pa_raw=0.5 / step)
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"step": 4, "val": summary(0.2, 0.5, 0.1, 0.0)}))
    lines.append(json.dumps({"step": 6, "val": summary(0.3, 0.6, 0.2, 0.1)}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if final is not None:
        (folder / "val_final.json").write_text(json.dumps(final))
    return folder


def test_read_metrics_sorts_dedups_and_drops_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        json.dumps({"step": 4, "task": 1.0}),
        json.dumps({"step": 2, "task": 2.0}),
        json.dumps({"step": 3, "skipped": "loss is NaN"}),
        json.dumps({"step": 4, "task": 0.5}),      # resumed run: the later record wins
        json.dumps({"step": 4, "val": {"mIoU": 0.1, "per_class": {}}}),
        '{"step": 6, "ta',                          # killed while writing the last line
    ]))
    train, val = read_metrics(path)
    assert train == [{"step": 2, "task": 2.0}, {"step": 4, "task": 0.5}]
    assert val == [{"step": 4, "mIoU": 0.1, "per_class": {}}]


def test_read_metrics_errors_name_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(SkdError, match=r"metrics\.jsonl, line 2: not JSON"):
        read_metrics(path)
    path.write_text('{"step": "one"}\n{"step": 2}\n')
    with pytest.raises(SkdError, match=r"line 1: expected a JSON object with an integer \"step\""):
        read_metrics(path)


def test_terms_and_layout_pair_weighted_with_raw():
    records = [{"step": 1, "lr_g": 0.1, "task": 1, "task_raw": 1, "pi": 2, "pa": 0, "pa_raw": 3,
                "d_adv": 0.5, "loss": 3, "sec_per_step": 0.2}]
    assert loss_terms(records) == ["task", "pi", "pa", "d_adv"]
    assert _panel_rows({"a": records}) == [["task", "task_raw"], ["pa", "pa_raw"], ["pi", "d_adv"],
                                           ["loss", "lr_g"]]
    # a run from before raw logging: weighted names only
    old = [{"step": 1, "lr_g": 0.1, "task": 1, "pi": 2, "loss": 3}]
    assert _panel_rows({"old": old}) == [["task", "pi"], ["loss", "lr_g"]]


def test_run_labels_are_the_shortest_distinct_suffixes(tmp_path):
    assert run_labels([tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"]) == ["a/seed0", "b/seed0"]
    assert run_labels([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_read_ablation_layout_and_order(tmp_path):
    for row, seeds in (("pi+pa", (0, 1)), ("baseline", (0, 1, 10)), ("zzz", (0,))):
        for s in seeds:
            (tmp_path / row / f"seed{s}").mkdir(parents=True)
            (tmp_path / row / f"seed{s}" / "val_final.json").write_text(json.dumps(summary(0.1 * (s + 1), 0, 0, 0)))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "val_final.json").write_text(json.dumps(summary(0.9, 1, 1, 1)))
    (tmp_path / "pi" / "seed0").mkdir(parents=True)  # unfinished: left out
    rows = read_ablation(tmp_path)
    assert list(rows) == ["teacher", "baseline", "pi+pa", "zzz"]
    assert [r["mIoU"] for r in rows["baseline"]] == pytest.approx([0.1, 0.2, 1.1])  # seed0, seed1, seed10
    with pytest.raises(SkdError, match="no <row>/seed<k>/val_final.json"):
        read_ablation(tmp_path / "teacher")
    (tmp_path / "zzz" / "seed0" / "val_final.json").write_text('{"mIoU": 1}')
    with pytest.raises(SkdError, match=r"zzz/seed0/val_final\.json: expected a validation summary"):
        read_ablation(tmp_path)


def test_runs_and_ablation_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'skd[plot]')")
    a = write_run(tmp_path / "runs" / "a", raw=True, final=summary(0.4, 0.7, 0.3, 0.2))
    b = write_run(tmp_path / "runs" / "b", raw=False)     # no val_final.json: last validation used
    out = tmp_path / "plots"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    # losses.png: rows [task, task_raw], [pa, pa_raw], [pi, loss], [lr_g]: 2 x 5.0 in by 4 x 2.6 in at 100 dpi
    assert png_size(out / "losses.png") == (1000, 1040)
    assert png_size(out / "val_miou.png") == (700, 400)
    # per_class.png: 3 classes, 2 runs: (2 + 3 * (0.13 * 2 + 0.3)) in = 3.68 in wide, 4.5 in high
    assert png_size(out / "per_class.png") == (368, 450)
    root = tmp_path / "abl"
    for row in ("baseline", "pi"):
        for s in (0, 1):
            d = root / row / f"seed{s}"
            d.mkdir(parents=True)
            (d / "val_final.json").write_text(json.dumps(summary(0.2 + 0.1 * s, 0.5, 0.2, 0.1)))
    assert main(["--ablation", str(root), "--out", str(out)]) == 0
    assert png_size(out / "ablation_miou.png") == (2.5 * 100 + 2 * 130, 450)
    assert png_size(out / "ablation_per_class.png") == (368, 450)
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 5


def test_cli_errors(tmp_path, capsys):
    assert main([]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main([str(tmp_path), "--names", "a", "b"]) == 2
    assert "--names: 2 names for 1 runs" in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = write_run(tmp_path / "a")
    assert main([str(run), "--out", str(tmp_path / "o")]) == 2
    assert "skd-plot needs matplotlib" in capsys.readouterr().err and not (tmp_path / "o").exists()
