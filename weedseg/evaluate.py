"""Evaluation: mIoU, per-class IoU and confusion matrix over a whole split."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import EvalResize, SegmentationDataset, open_dataset
from .metrics import ConfusionMatrix
from .runtime import channels_last, resolve_device, to_device


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: SegmentationDataset, num_classes: int,
                   device: torch.device, progress: bool = False) -> ConfusionMatrix:
    """Predict every image of `dataset` one at a time (sizes may differ) and accumulate the confusion matrix.

    Logits are resized to the mask's size when they differ (full-resolution scoring).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for i in tqdm(range(len(dataset)), desc="evaluating", unit="img", leave=False, disable=not progress):
        image, mask = dataset[i]
        logits = model(to_device(image.unsqueeze(0), device))
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0].cpu(), mask)
    model.train(was_training)
    return cm


def evaluate_checkpoint(checkpoint: str | Path, dataset: str, split: str = "test", data_root: str | None = None,
                        short_side: int | None = None, full_res: bool = False, device: str = "auto") -> dict:
    """Evaluate a saved model on a dataset split; returns the metrics summary plus what was evaluated.

    `short_side` None takes the resolution the model was validated at in training (else 256); 0 is native.
    """
    ckpt = load_checkpoint(checkpoint)
    if short_side is None:
        short_side = model_short_side(ckpt)
    dev = resolve_device(device)
    model = channels_last(model_from_checkpoint(ckpt).to(dev))
    data = open_dataset(dataset, data_root)
    norm = ckpt["normalization"]
    ds = SegmentationDataset(data.layout, data.splits[split], EvalResize(short_side, full_res), norm["mean"], norm["std"])
    cm = evaluate_model(model, ds, ckpt["model"]["num_classes"], dev, progress=True)
    summary = cm.summary(ckpt["classes"])
    summary.update(
        checkpoint=str(checkpoint), dataset=dataset, split=split, images=len(ds),
        input_short_side=short_side,
        scored_at=("full resolution" if full_res or short_side == 0 else f"short side {short_side}")
        + f", model input {'native' if short_side == 0 else f'short side {short_side}'}",
    )
    return summary


def model_short_side(ckpt: dict) -> int:
    """The input short side a checkpoint's model was validated at in training (0: native), else 256."""
    return int((ckpt.get("config") or {}).get("eval_short_side", 256))
