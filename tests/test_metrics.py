"""Confusion matrix and IoU against numbers computed by hand."""

import math

import torch

from weedseg.losses import FocalLoss, SoftDiceLoss
from weedseg.metrics import ConfusionMatrix, format_summary


def test_confusion_matrix_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = truth, columns = prediction
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    # IoU: soil 2/(3+3-2)=0.5, crop 2/(2+3-2)=2/3, weed 2/(3+2-2)=2/3
    iou = cm.iou()
    assert math.isclose(iou[0], 0.5) and math.isclose(iou[1], 2 / 3) and math.isclose(iou[2], 2 / 3)
    summary = cm.summary(["soil", "crop", "weed"])
    assert math.isclose(summary["miou"], (0.5 + 2 / 3 + 2 / 3) / 3)
    assert math.isclose(summary["pixel_accuracy"], 6 / 8)
    assert "weed 66.67" in format_summary(summary)


def test_accumulates_over_batches_and_ignores_out_of_range_targets():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([1, 1]), torch.tensor([0, 255]))  # 255 = ignore
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]


def test_numpy_maps_count_as_tensors_do():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    from_tensors, from_arrays = ConfusionMatrix(3), ConfusionMatrix(3)
    from_tensors.update(pred, target)
    from_arrays.update(pred.numpy().astype("uint8"), target.numpy().astype("uint8"))
    assert from_arrays.matrix.tolist() == from_tensors.matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_class_absent_everywhere_is_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert math.isnan(cm.iou()[2])
    assert cm.summary(["a", "b", "c"])["miou"] == 1.0


# ---- losses ----

def test_focal_loss_without_focusing_is_cross_entropy_and_focusing_lowers_easy_pixels():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), ce)
    assert FocalLoss(gamma=2.0)(logits, target) < ce
    weights = torch.tensor([0.5, 1.0, 2.0])
    weighted_ce = torch.nn.functional.cross_entropy(logits, target, weight=weights)
    assert torch.allclose(FocalLoss(weights, gamma=0.0)(logits, target), weighted_ce)


def test_dice_loss_is_zero_for_a_confident_correct_prediction_and_high_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 8, 8))
    right = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert SoftDiceLoss(eps=0.0)(right, target) < 1e-4
    assert SoftDiceLoss(eps=0.0)(wrong, target) > 0.99
