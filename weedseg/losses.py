"""Segmentation losses: soft Jaccard (the paper's), cross-entropy, both, or focal + soft Dice; optional class weights.

Target pixels equal to IGNORE_INDEX (a dataset's `ignore` value) add nothing to either loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.layouts import IGNORE_INDEX

LOSSES = ("jaccard", "ce", "jaccard+ce", "focal+dice")


def soft_overlap(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class over the batch: soft intersection, predicted mass and target mass (IGNORE_INDEX pixels left out)."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    prob = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.masked_fill(~valid[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    return (prob * onehot).sum(dims), prob.sum(dims), onehot.sum(dims)


def weighted_mean(per_class: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over classes, weighted by `class_weights` when given."""
    if class_weights is None:
        return per_class.mean()
    return (per_class * class_weights).sum() / class_weights.sum()


class SoftJaccardLoss(nn.Module):
    """1 - soft IoU per class from softmax probabilities over the whole batch, averaged over classes."""

    def __init__(self, class_weights: torch.Tensor | None = None, eps: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inter, pred, true = soft_overlap(logits, target)
        return weighted_mean(1 - (inter + self.eps) / (pred + true - inter + self.eps), self.class_weights)


class SoftDiceLoss(SoftJaccardLoss):
    """1 - soft Dice (2 |P & G| / (|P| + |G|)) per class over the whole batch, averaged over classes."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inter, pred, true = soft_overlap(logits, target)
        return weighted_mean(1 - (2 * inter + self.eps) / (pred + true + self.eps), self.class_weights)


class FocalLoss(nn.Module):
    """Cross-entropy scaled by (1 - p_true)^gamma per pixel, so well-classified pixels count less (Lin et al. 2017)."""

    def __init__(self, class_weights: torch.Tensor | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        safe = target.masked_fill(~valid, 0)
        log_p = logits.float().log_softmax(1).gather(1, safe.unsqueeze(1))[:, 0]
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        weight = valid.float() if self.class_weights is None else self.class_weights[safe] * valid
        return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


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
    if name == "focal+dice":
        return _Sum(FocalLoss(class_weights), SoftDiceLoss(class_weights))
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
