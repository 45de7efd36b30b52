"""Confusion matrix and IoU against hand-computed values; both mIoU conventions."""
import pytest
import torch

from skd.errors import SkdError
from skd.metrics import (
    ConfusionMatrix,
    PredictionRangeError,
    confusion_matrix,
    format_table,
    iou,
    miou_present,
)


def test_confusion_matrix_matches_hand_count_and_skips_ignore():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    # (gt, pred) pairs without the ignored pixel: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2)
    expected = torch.tensor([[1, 1, 0],
                             [0, 2, 1],
                             [1, 0, 1]])
    assert torch.equal(confusion_matrix(pred, gt, 3), expected)


def test_iou_is_tp_over_union_and_absent_class_counts_zero():
    conf = torch.tensor([[1, 1, 0, 0],
                         [0, 2, 1, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    per_class, miou = iou(conf)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: tp 1, fp 1, fn 1 -> 1/3
    expected = torch.tensor([1 / 3, 2 / 4, 1 / 3, 0.0], dtype=torch.float64)
    assert torch.allclose(per_class, expected)
    assert abs(miou - expected.mean().item()) < 1e-12


def test_accumulator_sums_batches_and_summary_names_classes():
    acc = ConfusionMatrix(2)
    acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    acc.update(torch.tensor([1, 1]), torch.tensor([0, 255]))
    assert torch.equal(acc.mat, torch.tensor([[1, 1], [0, 1]]))
    summary = acc.summary(["road", "sky"])
    assert summary["per_class"] == {"road": 0.5, "sky": 0.5}
    assert abs(summary["pixel_accuracy"] - 2 / 3) < 1e-12
    table = format_table(summary)
    assert "road" in table and "50.00" in table and table.splitlines()[-1].startswith("mIoU")


def test_both_miou_conventions_against_a_hand_computed_matrix():
    # rows gt, columns prediction; class 2 is predicted once but absent from the ground truth,
    # class 3 is absent from both.
    conf = torch.tensor([[3, 1, 0, 0],
                         [0, 2, 1, 0],
                         [0, 0, 0, 0],
                         [0, 0, 0, 0]])
    acc = ConfusionMatrix(4)
    acc.mat += conf
    summary = acc.summary(["a", "b", "c", "d"])
    # a: 3 / (3 + 1 + 0) = 3/4; b: 2 / (2 + 1 + 1) = 1/2; c: 0 / (0 + 1 + 0) = 0; d: 0 (absent)
    assert summary["per_class"] == {"a": 0.75, "b": 0.5, "c": 0.0, "d": 0.0}
    assert abs(summary["mIoU"] - (0.75 + 0.5 + 0 + 0) / 4) < 1e-12  # SKD: all four classes
    assert abs(summary["mIoU_present"] - (0.75 + 0.5 + 0) / 3) < 1e-12  # gt or pred: a, b, c
    assert summary["num_present"] == 3 and summary["absent_classes"] == ["d"]
    assert abs(miou_present(conf) - 1.25 / 3) < 1e-12
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[4].split() == ["d", "-"]  # absent: shown apart, not as a measured 0
    assert lines[-2].startswith("mIoU ") and "31.25" in lines[-2] and "all 4 classes" in lines[-2]
    assert lines[-1].startswith("mIoU present") and "41.67" in lines[-1] and "3 classes" in lines[-1]
    assert "cityscapesScripts" in lines[-1] and "original SKD" in lines[-2]


def test_empty_matrix_has_no_present_mean():
    summary = ConfusionMatrix(3).summary(["a", "b", "c"])
    assert summary["mIoU"] == 0.0 and summary["mIoU_present"] is None
    assert "nan" in format_table(summary).splitlines()[-1]


def test_an_older_summary_without_present_keys_still_formats():
    table = format_table({"mIoU": 0.5, "per_class": {"road": 0.5}})
    assert table.splitlines()[-1].startswith("mIoU") and "50.00" in table


@pytest.mark.parametrize("bad", [3, -1, 255])
def test_a_prediction_outside_the_classes_is_an_error_not_a_clamp(bad):
    gt = torch.tensor([0, 1, 2, 255])
    for position in (1, 3):  # at a labelled pixel and at an ignored one
        pred = torch.tensor([0, 1, 2, 0])
        pred[position] = bad
        with pytest.raises(PredictionRangeError, match=rf"\[{bad}\] are outside 0\.\.2") as info:
            confusion_matrix(pred, gt, 3)
        assert isinstance(info.value, ValueError) and isinstance(info.value, SkdError)
        with pytest.raises(ValueError, match="--num-classes"):
            ConfusionMatrix(3).update(pred, gt)


def test_summary_refuses_a_wrong_number_of_names():
    with pytest.raises(ValueError, match="2 class names for a 3-class"):
        ConfusionMatrix(3).summary(["a", "b"])
