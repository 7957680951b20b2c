"""Would averaging the logits over all 8 symmetries of a square (4 quarter turns, each also mirrored) beat
flip TTA? A probe for docs/accuracy.md; `weedseg evaluate --tta` offers the mirror only.

    python benchmarks/symmetry_tta.py RUN/best.pt ... [--split val] [--data-root ../shared/field_data]

Scores each checkpoint at full resolution, as `weedseg evaluate --full-res` does, at the model's own input
resolution, and prints its mIoU and per-class IoU. Eight forward passes per photo.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import EvalResize
from weedseg.evaluate import class_order, evaluate_model, evaluation_set, model_short_side


class SymmetryMean(nn.Module):
    """`model`'s logits averaged over the 8 symmetries of the input, each mapped back before the mean."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        for mirrored in (x, x.flip(-1)):
            logits = sum(self.model(mirrored.rot90(k, (-2, -1))).rot90(-k, (-2, -1)) for k in range(4))
            total = total + (logits if mirrored is x else logits.flip(-1))
        return total / 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--dataset", default="peanut")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        data, ds = evaluation_set(ckpt, args.dataset, args.split, args.data_root,
                                  EvalResize(model_short_side(ckpt), full_res_mask=True))
        model = SymmetryMean(model_from_checkpoint(ckpt))
        cm = evaluate_model(model, ds, len(data.classes), torch.device("cpu"), progress=True,
                            order=class_order(ckpt["classes"], data.classes))
        summary = cm.summary(data.classes)
        iou = ", ".join(f"{name} {100 * v:.2f}" for name, v in summary["iou"].items())
        print(f"{path}: {args.split} full res, 8 symmetries: mIoU {100 * summary['miou']:.2f} ({iou})")


if __name__ == "__main__":
    main()
