"""Datasets: find them on disk, read their layouts, split them, augment them.

The torch datasets and samplers (weedseg.data.dataset) are imported on first use, so that inference,
which reads images only, runs without torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import WeedsegError
from .layouts import DATASETS, IGNORE_INDEX, Layout, Sample, get_layout
from .locate import find_dataset_root
from .splits import SPLITS, load_split, subset
from .transforms import CopyPaste, EvalResize, TrainAugment

_NEEDS_TORCH = {"SeededSampler": "dataset", "SegmentationDataset": "dataset", "channel_stats": "dataset"}


def __getattr__(name: str) -> Any:
    """The torch-based names, imported when first asked for."""
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(f".{_NEEDS_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS", "IGNORE_INDEX", "SPLITS", "EvalResize", "Layout", "LabelledData", "Sample", "SeededSampler",
    "CopyPaste", "SegmentationDataset", "TrainAugment", "channel_stats", "open_dataset",
]


@dataclass
class LabelledData:
    """A dataset's layout and its samples per split."""

    layout: Layout
    splits: dict[str, list[Sample]]

    @property
    def classes(self) -> list[str]:
        return self.layout.classes

    @property
    def colors(self) -> list[list[int]]:
        return self.layout.colors


def open_dataset(name: str, data_root: str | Path | None = None, train_fraction: float = 1.0,
                 need: tuple[str, ...] = ("train", "val")) -> LabelledData:
    """Locate dataset `name`, list its samples and split them (train optionally cut to a fraction).

    The splits in `need` must not be empty. Where the split came from and its sizes are printed
    (by the main process only).
    """
    root = find_dataset_root(name, data_root)
    layout = get_layout(name, root)
    samples = layout.samples()
    by_id = {s.id: s for s in samples}
    split = load_split(name, root, list(by_id))
    ids = split.ids
    ids["train"] = subset(ids["train"], train_fraction) if ids["train"] else []
    sizes = " / ".join(f"{len(ids[s])} {s}" for s in SPLITS)
    cut = f" (train cut to {train_fraction:.0%})" if train_fraction < 1 else ""
    from ..distributed import is_main  # torch: imported only where a dataset is opened

    if is_main():
        print(f"{name} dataset at {root}: {sizes}{cut}; {split.source}", flush=True)
    for s in need:
        if not ids[s]:
            what = ("only test images, an evaluate-only dataset for `weedseg evaluate`"
                    if not ids["train"] and ids["test"] else sizes)
            raise WeedsegError(f"{name} dataset under {root}: the {s} split is empty ({split.source}: {what})")
    return LabelledData(layout, {s: [by_id[i] for i in ids[s]] for s in SPLITS})
