"""Confusion matrix and IoU against hand-computed values."""
import torch

from skd.metrics import ConfusionMatrix, confusion_matrix, format_table, iou


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
