"""Segmentation metrics from a confusion matrix accumulated over a whole split.

numpy only, so that `weedseg dataset check` scores masks without torch; torch tensors are counted too.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfusionMatrix:
    """Counts (true class, predicted class) pixel pairs; rows are ground truth, columns predictions."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of predicted and true class-index maps (same shape; targets outside 0..C-1 ignored):
        numpy arrays, or torch tensors (on any device)."""
        valid = (target >= 0) & (target < self.num_classes)
        if isinstance(target, np.ndarray):
            codes = target[valid].astype(np.int64) * self.num_classes + pred[valid].astype(np.int64)
            counts = np.bincount(codes, minlength=self.num_classes**2)
        else:
            codes = target[valid].long() * self.num_classes + pred[valid].long()
            counts = codes.cpu().bincount(minlength=self.num_classes**2).numpy()
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both truth and prediction."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def summary(self, class_names: list[str]) -> dict:
        """mIoU (macro mean over classes present), per-class IoU, pixel accuracy, the matrix (JSON-ready)."""
        iou = self.iou()
        m = self.matrix
        return {
            "miou": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
            "iou": {name: float(v) for name, v in zip(class_names, iou)},
            "pixel_accuracy": float(np.trace(m) / max(1, m.sum())),
            "confusion_matrix": m.tolist(),
            "classes": list(class_names),
        }


def format_summary(summary: dict) -> str:
    """A small text table of mIoU, per-class IoU and the confusion matrix (in percent / pixels)."""
    names = summary["classes"]
    lines = [f"mIoU {100 * summary['miou']:.2f}   pixel accuracy {100 * summary['pixel_accuracy']:.2f}"]
    lines.append("IoU  " + "  ".join(f"{n} {100 * summary['iou'][n]:.2f}" for n in names))
    width = max(12, *(len(n) + 2 for n in names))
    lines.append("confusion (rows = truth, columns = prediction, pixels):")
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in names))
    for n, row in zip(names, summary["confusion_matrix"]):
        lines.append(f"{n:<{width}}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)
