"""Would a per-class logit offset, chosen on val, raise a model's full-resolution mIoU? (docs/research/accuracy.md)

    python benchmarks/logit_offsets.py RUN/best.pt ... [--data-root ../shared/field_data] [--dataset peanut]

For each checkpoint and split, every pixel's (crop - soil, weed - soil) logit differences at full
resolution (logits upsampled from the model's input resolution, as `weedseg evaluate --full-res` does) go
into one 2-D histogram per true class; the confusion matrix for any pair of offsets added to the crop and
weed logits is then a sum over histogram cells, exact up to the 0.025 bin width. Offsets are chosen on val;
test is only reported. Prints a Markdown table. Classes must be soil, crop, weed in this order.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import EvalResize
from weedseg.evaluate import evaluation_set, model_short_side

LIMIT, BINS = 12.0, 960  # logit differences clipped to +-LIMIT, in BINS bins of 0.025
CROP_OFFSETS = np.round(np.arange(-1.0, 1.51, 0.125), 3)
WEED_OFFSETS = np.round(np.arange(-1.0, 3.01, 0.125), 3)


def histograms(ckpt_path: str, dataset: str, data_root: str | None, split: str) -> np.ndarray:
    """(3, BINS, BINS) pixel counts per true class over (crop - soil, weed - soil) logit differences."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["classes"] != ["soil", "crop", "weed"]:
        raise SystemExit(f"{ckpt_path}: classes {ckpt['classes']}, this probe needs soil, crop, weed")
    model = model_from_checkpoint(ckpt).eval()
    _, ds = evaluation_set(ckpt, dataset, data_root=data_root, split=split,
                           resize=EvalResize(model_short_side(ckpt), full_res_mask=True))
    counts = np.zeros((3, BINS, BINS), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            image, mask = ds[i]
            logits = F.interpolate(model(image[None]), size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
            diff = (logits[1:] - logits[0]).numpy().reshape(2, -1)
            cell = np.clip(((diff + LIMIT) / (2 * LIMIT) * BINS).astype(np.int64), 0, BINS - 1)
            flat, truth = cell[0] * BINS + cell[1], mask.numpy().ravel()
            for k in range(3):
                counts[k] += np.bincount(flat[truth == k], minlength=BINS * BINS).reshape(BINS, BINS)
    return counts


def confusions(counts: np.ndarray) -> np.ndarray:
    """(crop offsets, weed offsets, 3, 3) confusion matrices (true, predicted) for every offset pair."""
    centres = -LIMIT + (np.arange(BINS) + 0.5) * 2 * LIMIT / BINS
    d_crop, d_weed = np.meshgrid(centres, centres, indexing="ij")
    out = np.zeros((len(CROP_OFFSETS), len(WEED_OFFSETS), 3, 3), np.int64)
    for a, c in enumerate(CROP_OFFSETS):
        for b, w in enumerate(WEED_OFFSETS):
            crop, weed = d_crop + c, d_weed + w
            pred = np.where((weed > crop) & (weed > 0), 2, np.where(crop > 0, 1, 0))
            for p in range(3):
                out[a, b, :, p] = (counts * (pred == p)).sum((1, 2))
    return out


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU in percent over the last two axes."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    return 100 * tp / (cm.sum(-1) + cm.sum(-2) - tp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--dataset", default="peanut")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    torch.set_num_threads(1)
    zero = (list(CROP_OFFSETS).index(0.0), list(WEED_OFFSETS).index(0.0))
    print("| checkpoint | offsets chosen on val (crop, weed) | val mIoU: none / chosen | "
          "test mIoU: none / chosen | test weed IoU: none / chosen |")
    print("|---|---|---|---|---|")
    for path in args.checkpoints:
        val, test = (iou(confusions(histograms(path, args.dataset, args.data_root, s))) for s in ("val", "test"))
        best = np.unravel_index(val.mean(-1).argmax(), val.shape[:2])
        print(f"| {path} | {CROP_OFFSETS[best[0]]:+.3f}, {WEED_OFFSETS[best[1]]:+.3f} | "
              f"{val[zero].mean():.2f} / {val[best].mean():.2f} | {test[zero].mean():.2f} / {test[best].mean():.2f} | "
              f"{test[zero][2]:.2f} / {test[best][2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
