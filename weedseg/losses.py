"""Segmentation losses: soft Jaccard (the paper's), cross-entropy, or both; optional class weights.

Target pixels equal to IGNORE_INDEX (a dataset's `ignore` value) add nothing to either loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.layouts import IGNORE_INDEX

LOSSES = ("jaccard", "ce", "jaccard+ce")


class SoftJaccardLoss(nn.Module):
    """1 - soft IoU per class from softmax probabilities over the whole batch, averaged over classes.

    Pixels whose target is IGNORE_INDEX are left out of both the intersection and the union.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, eps: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target != IGNORE_INDEX).unsqueeze(1)
        prob = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(~valid[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
        dims = (0, 2, 3)
        inter = (prob * onehot).sum(dims)
        union = prob.sum(dims) + onehot.sum(dims) - inter
        loss = 1 - (inter + self.eps) / (union + self.eps)
        if self.class_weights is None:
            return loss.mean()
        return (loss * self.class_weights).sum() / self.class_weights.sum()


def build_loss(name: str, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The training loss called `name` (one of LOSSES)."""
    if name == "jaccard":
        return SoftJaccardLoss(class_weights)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE_INDEX)
    if name == "jaccard+ce":
        jaccard = SoftJaccardLoss(class_weights)
        ce = nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE_INDEX)
        return _Sum(jaccard, ce)
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")


class _Sum(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def inverse_sqrt_frequency_weights(pixel_counts: torch.Tensor) -> torch.Tensor:
    """Class weights proportional to 1 / sqrt(frequency), normalised to mean 1."""
    freq = pixel_counts.double() / pixel_counts.sum()
    w = 1.0 / torch.sqrt(freq.clamp_min(1e-6))
    return (w / w.mean()).float()
