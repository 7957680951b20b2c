"""Datasets: find them on disk, read their layouts, split them, augment them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import WeedsegError
from .dataset import SeededSampler, SegmentationDataset, channel_stats
from .layouts import DATASETS, Layout, Sample, get_layout
from .locate import find_dataset_root
from .splits import SPLITS, load_split, subset
from .transforms import EvalResize, TrainAugment

__all__ = [
    "DATASETS", "SPLITS", "EvalResize", "Layout", "LabelledData", "Sample", "SeededSampler",
    "SegmentationDataset", "TrainAugment", "channel_stats", "open_dataset",
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


def open_dataset(name: str, data_root: str | Path | None = None, train_fraction: float = 1.0) -> LabelledData:
    """Locate dataset `name`, list its samples and split them (train optionally cut to a fraction)."""
    root = find_dataset_root(name, data_root)
    layout = get_layout(name, root)
    samples = layout.samples()
    by_id = {s.id: s for s in samples}
    split = load_split(name, root, list(by_id))
    split["train"] = subset(split["train"], train_fraction)
    for s in SPLITS:
        if not split[s]:
            raise WeedsegError(f"{name} dataset under {root}: the {s} split is empty ({len(samples)} samples in all)")
    return LabelledData(layout, {s: [by_id[i] for i in split[s]] for s in SPLITS})
