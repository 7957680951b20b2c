"""Would averaging the logits of several trained models (an ensemble) beat the best of them? A probe for
docs/research/accuracy.md; weedseg ships one model.

    python benchmarks/ensemble.py A/best.pt B/best.pt [...] [--split val] [--data-root ../shared/field_data]

Scores each checkpoint alone, then their mean, at full resolution as `weedseg evaluate --full-res`
does, every model at the first one's input resolution. The models must list the same classes.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import EvalResize
from weedseg.evaluate import class_order, evaluate_model, evaluation_set, model_short_side


class LogitMean(nn.Module):
    """The mean of the models' logits."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(m(x) for m in self.models) / len(self.models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--dataset", default="peanut")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    ckpts = [load_checkpoint(p) for p in args.checkpoints]
    if any(c["classes"] != ckpts[0]["classes"] for c in ckpts):
        parser.error("the checkpoints list different classes")
    data, ds = evaluation_set(ckpts[0], args.dataset, args.split, args.data_root,
                              EvalResize(model_short_side(ckpts[0]), full_res_mask=True))
    order = class_order(ckpts[0]["classes"], data.classes)
    models = [model_from_checkpoint(c) for c in ckpts]
    named = list(zip(args.checkpoints, models)) + [(f"mean of {len(models)}", LogitMean(models))]
    for name, model in named:
        cm = evaluate_model(model, ds, len(data.classes), torch.device("cpu"), progress=True, order=order)
        summary = cm.summary(data.classes)
        iou = ", ".join(f"{c} {100 * v:.2f}" for c, v in summary["iou"].items())
        print(f"{name}: {args.split} full res: mIoU {100 * summary['miou']:.2f} ({iou})", flush=True)


if __name__ == "__main__":
    main()
