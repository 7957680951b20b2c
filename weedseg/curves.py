"""A run's validation record: which validation best.pt holds (the rule `weedseg train` keeps best.pt by),
and the training curves as a picture: train loss and validation mIoU per iteration, with that validation
marked. `weedseg train` writes <out>/curves.png when a run ends; `weedseg curves RUN...` draws one or
several runs (also while they train) into one picture to compare them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import WeedsegError
from .runtime import read_records

SMOOTH_EVALS = 3  # best.pt = the weights where the mean of the last N validation mIoUs peaks (--smooth-evals)


def best_rank(recent: list[float], window: int) -> tuple[bool, float]:
    """How best.pt ranks a validation: (window full, mean of the last `window` mIoUs). The first validations
    of a run average fewer passes, so they are noisier: they rank below every full window, not only below a
    higher mean (a continued run's first pass would otherwise win on one lucky score)."""
    return len(recent) >= max(1, window), sum(recent) / len(recent)


def best_index(mious: list[float], window: int) -> int:
    """Which of a run's validation mIoUs (in order) best.pt holds under `best_rank`: the first at the peak."""
    ranks = [best_rank(mious[max(0, i + 1 - max(1, window)):i + 1], window) for i in range(len(mious))]
    return max(range(len(mious)), key=lambda i: (ranks[i], -i))


def read_metrics(run: Path) -> list[dict]:
    """The records of <run>/metrics.jsonl; a half-written last line (a run still writing) is left out."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise WeedsegError(f"{run} has no metrics.jsonl: give the folder of a `weedseg train` run (its --out)")
    return [record for _, record in read_records(path, "iteration")]


def smoothing_window(run: Path) -> int:
    """The run's --smooth-evals (from its config.json), which decides where best.pt is."""
    config = run / "config.json"
    if not config.is_file():
        return SMOOTH_EVALS
    return json.loads(config.read_text()).get("smooth_evals", SMOOTH_EVALS)


def best_validation(run: Path, records: list[dict]) -> dict | None:
    """The validation record among `records` (the run's metrics) whose weights best.pt holds; None before any."""
    evals = [r for r in records if "val_miou" in r]
    return evals[best_index([r["val_miou"] for r in evals], smoothing_window(run))] if evals else None


def plot_curves(runs: list[Path], out: Path) -> Path:
    """Draw the runs' train loss and validation mIoU against iterations into the PNG `out`; returns it."""
    try:
        from matplotlib.figure import Figure  # the [train] extra; no pyplot, so no GUI backend is needed
    except ImportError:
        raise WeedsegError("drawing curves needs matplotlib: pip install 'weedseg[train]'") from None

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, val_ax = fig.subplots(1, 2)
    shown: list[float] = []  # every validation mIoU drawn, in percent
    for n, run in enumerate(runs):
        records, colour = read_metrics(run), f"C{n % 10}"
        name = run.name if len(runs) > 1 else None
        loss_ax.plot([r["iteration"] for r in records], [r["train_loss"] for r in records], color=colour, lw=1,
                     label=name)
        evals = [r for r in records if "val_miou" in r]
        if not evals:
            continue
        steps, window = [r["iteration"] for r in evals], smoothing_window(run)
        best = best_validation(run, records)
        where = f"best.pt: iteration {best['iteration']:,}, {100 * best['val_miou']:.2f}"
        shown += [100 * r["val_miou"] for r in evals]
        val_ax.plot(steps, shown[-len(evals):], "o", color=colour, ms=2.5, alpha=0.5)
        val_ax.plot(steps, [100 * r["val_miou_smoothed"] for r in evals], color=colour, lw=1.5,
                    label=f"{name}, {where}" if name else f"mean of the last {window}")
        val_ax.plot(best["iteration"], 100 * best["val_miou"], "*", color=colour, ms=13, mec="black", mew=0.6,
                    label=None if name else where)
    loss_ax.set(xlabel="iteration", ylabel="train loss", title="training loss (mean per epoch)")
    val_ax.set(xlabel="iteration", ylabel="mIoU (%)",
               title="validation mIoU (line: running mean; star: best.pt)")
    if len(shown) >= 10:  # the first passes, far below the rest, would squash the part worth reading
        val_ax.set_ylim(bottom=float(np.percentile(shown, 10)) - 1)
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if len(runs) == 1:
        fig.suptitle(str(runs[0]), fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
