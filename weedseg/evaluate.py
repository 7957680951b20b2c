"""Evaluation: mIoU, per-class IoU and confusion matrix over a whole split."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import WeedsegError
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import EvalResize, LabelledData, SegmentationDataset, open_dataset
from .metrics import ConfusionMatrix
from .distributed import resolve_device
from .runtime import channels_last, to_device
from .tta import tta_logits


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: SegmentationDataset, num_classes: int,
                   device: torch.device, progress: bool = False, order: list[int] | None = None,
                   tta: str | None = None) -> ConfusionMatrix:
    """Predict every image of `dataset` one at a time (sizes may differ) and accumulate the confusion matrix.

    Logits are resized to the mask's size when they differ (full-resolution scoring). `order[i]`
    is the model output of the dataset's class i, when the two list their classes differently.
    `tta`: a test-time augmentation of weedseg.tta (flip, rotate), or None.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for i in tqdm(range(len(dataset)), desc="evaluating", unit="img",
                  leave=True, disable=not progress):  # leave: the bar ends its line, logs stay readable
        image, mask = dataset[i]
        logits = tta_logits(model, to_device(image.unsqueeze(0), device), tta)
        if order is not None:
            logits = logits[:, order]
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0].cpu(), mask)
    model.train(was_training)
    return cm


def evaluate_checkpoint(checkpoint: str | Path, dataset: str, split: str = "test", data_root: str | None = None,
                        short_side: int | None = None, full_res: bool = False, device: str = "auto",
                        tta: str | None = None, score_short_side: int | None = None) -> dict:
    """Evaluate a saved model on a dataset split; returns the metrics summary plus what was evaluated.

    `short_side` None takes the resolution the model was validated at in training (else 256); 0 is native.
    """
    ckpt = load_checkpoint(checkpoint)
    if short_side is None:
        short_side = model_short_side(ckpt)
    dev = resolve_device(device)
    model = channels_last(model_from_checkpoint(ckpt).to(dev))
    data, ds = evaluation_set(ckpt, dataset, split, data_root, EvalResize(short_side, full_res, score_short_side))
    order = class_order(ckpt["classes"], data.classes)
    cm = evaluate_model(model, ds, len(data.classes), dev, progress=True, order=order, tta=tta)
    summary = cm.summary(data.classes)
    summary.update(
        checkpoint=str(checkpoint), dataset=dataset, split=split, images=len(ds),
        input_short_side=short_side,
        tta=tta,
        scored_at=("full resolution" if full_res or (short_side == 0 and not score_short_side)
                   else f"short side {score_short_side or short_side}")
        + f", model input {'native' if short_side == 0 else f'short side {short_side}'}",
    )
    return summary


def evaluation_set(ckpt: dict, dataset: str, split: str, data_root: str | None,
                   resize: EvalResize) -> tuple[LabelledData, SegmentationDataset]:
    """The dataset and one split of it, resized by `resize` and normalised as the checkpoint's model expects."""
    data = open_dataset(dataset, data_root, need=(split,))
    norm = ckpt["normalization"]
    return data, SegmentationDataset(data.layout, data.splits[split], resize, norm["mean"], norm["std"])


def class_order(model_classes: list[str], data_classes: list[str]) -> list[int] | None:
    """For each dataset class, the model output of that name; None when both list the same classes in the same order.

    The same classes in another order are matched by name (and this is printed); other classes are an error.
    """
    if model_classes == data_classes:
        return None
    if sorted(model_classes) != sorted(data_classes):
        lacks = [c for c in model_classes if c not in data_classes]
        extra = [c for c in data_classes if c not in model_classes]
        raise WeedsegError(
            f"the model's classes {model_classes} differ from the dataset's {data_classes}"
            + (f"; the dataset lacks {lacks}" if lacks else "") + (f"; the model lacks {extra}" if extra else "")
            + ": name the classes alike in dataset.toml ([class_map]), or evaluate a model trained on these classes")
    print(f"the model lists its classes as {model_classes}, the dataset as {data_classes}: matched by name")
    return [model_classes.index(name) for name in data_classes]


def model_short_side(ckpt: dict) -> int:
    """The input short side a checkpoint's model was validated at in training (0: native), else 256."""
    return int((ckpt.get("config") or {}).get("eval_short_side", 256))
