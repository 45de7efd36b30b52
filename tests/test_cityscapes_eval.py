"""cityscapesScripts' own evaluator on synthetic data and skd-test's output format (issue #16).

Skipped where the cityscapesscripts package is absent (`pip install cityscapesscripts`). The
evaluator runs in a child process, as its users run it: CITYSCAPES_DATASET names the ground
truth, CITYSCAPES_RESULTS the predictions, CITYSCAPES_EXPORT_DIR where its JSON goes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skd.data import CITYSCAPES, CityscapesDataset, make_synthetic
from skd.metrics import ConfusionMatrix

pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                    reason="cityscapesscripts is not installed")

# cityscapesscripts 2.3.0 calls np.in1d, which numpy 2.4 removed; the child aliases it to
# np.isin (same result) so the evaluator runs with the numpy skd installs.
RUN_EVALUATOR = (
    "import numpy\n"
    "if not hasattr(numpy, 'in1d'):\n"
    "    numpy.in1d = numpy.isin\n"
    "from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import main\n"
    "main()\n"
)
TRAIN_ID_TRAIN = 16  # absent from the synthetic scenes: predicted here, never in ground truth


def _evaluate(data: Path, results: Path, export: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CITYSCAPES_DATASET=str(data), CITYSCAPES_RESULTS=str(results),
               CITYSCAPES_EXPORT_DIR=str(export))
    return subprocess.run([sys.executable, "-c", RUN_EVALUATOR], env=env, capture_output=True,
                          text=True, timeout=300)


def test_cityscapesscripts_scores_skd_test_output_as_skd_does(tmp_path):
    data = make_synthetic(tmp_path / "cs", 0, 3, 0, height=64, width=128, seed=0)
    out, export = tmp_path / "out", tmp_path / "export"
    export.mkdir()
    dataset = CityscapesDataset(data, "val")
    conf = ConfusionMatrix(19)
    rng = np.random.default_rng(0)
    for _, label, name in dataset:
        gt = label.numpy()
        pred = np.where(gt == 255, 0, gt)
        present = np.unique(pred)
        noise = rng.random(pred.shape) < 0.15
        pred[noise] = rng.choice(present, int(noise.sum()))  # confusions among present classes
        pred[:2, :4] = TRAIN_ID_TRAIN  # a class predicted but absent from the ground truth
        CITYSCAPES.write_prediction(out, name, pred)
        conf.update(torch.from_numpy(pred), label)
    summary = conf.summary(CITYSCAPES.class_names)

    # Our colour PNGs match its file pattern too: pointed at <out> it finds two predictions.
    both = _evaluate(data, out, export)
    assert both.returncode != 0 and "Found multiple predictions" in both.stdout + both.stderr

    run = _evaluate(data, out / "labelIds", export)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads((export / "resultPixelLevelSemanticLabeling.json").read_text())
    scores = result["classScores"]
    for name, value in summary["per_class"].items():
        if name in summary["absent_classes"]:
            assert np.isnan(scores[name]), name  # neither gt nor prediction: nan, left out
        else:
            assert abs(scores[name] - value) < 1e-12, name
    assert summary["per_class"]["train"] == 0 and scores["train"] == 0  # predicted only: counts
    assert abs(result["averageScoreClasses"] - summary["mIoU_present"]) < 1e-12
    assert summary["mIoU"] < summary["mIoU_present"]  # the SKD mean counts the absent as 0
    assert "Score Average" in run.stdout
