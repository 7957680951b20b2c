"""Reproducible train / val / test splits by sample id.

A split file (JSON with "train", "val", "test" id lists) is used when one exists: first the one
shipped with weedseg (weedseg/data/split_files/<dataset>.json), then <dataset root>/split.json. Otherwise the
split is made from the sorted ids with a fixed seed (about 70 / 10 / 20).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import WeedsegError
from ..resources import SPLIT_FILES_DIR

SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_SEED = 0


def make_split(ids: list[str], seed: int = SPLIT_SEED, fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, list[str]]:
    """Shuffle the sorted ids with `seed` and cut them into train / val / test by `fractions`."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = round(len(ids) * fractions[0])
    n_val = round(len(ids) * fractions[1])
    shuffled = [ids[i] for i in order]
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }


def split_file_for(dataset: str, root: Path) -> Path | None:
    """The split file that applies to this dataset, if any."""
    for path in (SPLIT_FILES_DIR / f"{dataset}.json", root / "split.json"):
        if path.is_file():
            return path
    return None


def load_split(dataset: str, root: Path, ids: list[str]) -> dict[str, list[str]]:
    """The split for these sample ids: from a split file if there is one, else made with the fixed seed."""
    path = split_file_for(dataset, root)
    if path is None:
        return make_split(ids)
    split = json.loads(path.read_text())
    missing = sorted(set().union(*(split.get(s, []) for s in SPLITS)) - set(ids))
    if missing or any(s not in split for s in SPLITS):
        raise WeedsegError(
            f"split file {path} needs 'train', 'val' and 'test' lists of ids that exist under {root}"
            + (f"; not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "")
        )
    return {s: list(split[s]) for s in SPLITS}


def subset(ids: list[str], fraction: float) -> list[str]:
    """The first `fraction` of a split's ids (at least one), so smaller subsets nest in larger ones."""
    if not 0 < fraction <= 1:
        raise WeedsegError(f"train fraction must be in (0, 1], got {fraction}")
    return ids[: max(1, round(len(ids) * fraction))]
