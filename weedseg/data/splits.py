"""Reproducible train / val / test splits by sample id.

A split file is used as it is when one exists: first the one shipped with weedseg
(weedseg/data/split_files/<dataset>.json), then <dataset root>/split.json. It is a JSON object
with lists of ids under any of "train", "val" and "test" (other keys may hold notes); ids are
file stems ("001"), or integers that match numeric stems (1 for "001"). Without "val" (or with
an empty one), a seeded eighth of "train" becomes val; a file with only "test" describes an
evaluate-only dataset. Without a split file the split is made from the sorted ids with a fixed
seed (70 / 10 / 20); a file in the dataset folder that looks like a
misnamed split file stops this, so test images are never mixed into training by accident.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import WeedsegError
from ..resources import SPLIT_FILES_DIR

SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_SEED = 0
SPLIT_FILE = "split.json"


@dataclass
class Split:
    """Sample ids per split and where they came from ("split from FILE ...", "no split file ...")."""

    ids: dict[str, list[str]]
    source: str


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


def split_file_candidates(dataset: str, root: Path) -> list[Path]:
    """Where a split file is looked for, in order."""
    return [SPLIT_FILES_DIR / f"{dataset}.json", root / SPLIT_FILE]


def split_file_for(dataset: str, root: Path) -> Path | None:
    """The split file that applies to this dataset, if any."""
    return next((path for path in split_file_candidates(dataset, root) if path.is_file()), None)


def load_split(dataset: str, root: Path, ids: list[str]) -> Split:
    """The split for these sample ids: from a split file if there is one, else made with the fixed seed."""
    path = split_file_for(dataset, root)
    if path is None:
        lookalikes = sorted(p.name for p in root.iterdir() if "split" in p.name.lower() and p.is_file())
        if lookalikes:
            raise WeedsegError(f"no {root / SPLIT_FILE}, but {root} holds {lookalikes}: weedseg reads a split only "
                               f"from a file named {SPLIT_FILE}; rename yours to that, or move it away to use a "
                               "seeded random split")
        return Split(make_split(ids), f"no split file ({root / SPLIT_FILE} not found), so a random 70/10/20 split "
                                      f"of the {len(ids)} images with seed {SPLIT_SEED}")
    split = read_split_file(path, ids)
    source = f"split from {path}"
    if not split.get("val") and split.get("train"):
        split["train"], split["val"] = carve_val(split["train"], path)
        source += f" (no 'val' list: {len(split['val'])} of its train images, chosen with seed {SPLIT_SEED})"
    return Split({s: split.get(s, []) for s in SPLITS}, source)


def read_split_file(path: Path, ids: list[str]) -> dict[str, list[str]]:
    """The id lists of a split file, checked: known keys, existing ids, no id in two lists."""
    try:
        split = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeedsegError(f"split file {path} is not valid JSON ({exc}); it should look like "
                           '{"train": ["001", ...], "val": [...], "test": [...]}') from None
    if not isinstance(split, dict) or not split:
        raise WeedsegError(f"split file {path} must be a JSON object with lists of ids under some of "
                           f"{list(SPLITS)}; got {'an empty object' if split == {} else type(split).__name__}")
    unknown = sorted(key for key, value in split.items() if key not in SPLITS and isinstance(value, list))
    if unknown:
        raise WeedsegError(f"split file {path}: lists under unknown keys {unknown}; the lists go under {list(SPLITS)}")
    split = {name: listed for name, listed in split.items() if name in SPLITS}
    not_lists = [name for name, listed in split.items() if not isinstance(listed, list)]
    if not_lists:
        raise WeedsegError(f"split file {path}: {not_lists[0]!r} must be a list of ids, such as [\"001\", \"002\"]")
    if not split:
        raise WeedsegError(f"split file {path} has none of the lists {list(SPLITS)}")
    resolve = id_resolver(ids)
    out, missing = {}, []
    for name, listed in split.items():
        out[name] = []
        for item in listed:
            sid = resolve(item)
            if sid is None:
                missing.append(item)
            else:
                out[name].append(sid)
    if missing:
        raise WeedsegError(f"split file {path} lists ids with no image and mask under {path.parent}: "
                           f"{few(missing)}; ids are file stems such as {sorted(ids)[0]!r}")
    check_no_overlap(out, path)
    return out


def id_resolver(ids: list[str]) -> Callable[[Any], str | None]:
    """A function from a split-file entry to a sample id (or None): exact stems, or integers for numeric stems."""
    known = set(ids)
    numeric: dict[int, str | None] = {}
    for sid in ids:
        if sid.isdigit():
            numeric[int(sid)] = None if int(sid) in numeric else sid  # None: ambiguous ("1" and "001")

    def resolve(item: Any) -> str | None:
        if isinstance(item, str):
            return item if item in known else None
        if isinstance(item, int) and not isinstance(item, bool):
            return numeric.get(item)
        return None

    return resolve


def check_no_overlap(split: dict[str, list[str]], path: Path) -> None:
    """Refuse an id listed twice, in one list or in two."""
    for name, listed in split.items():
        twice = sorted({sid for sid in listed if listed.count(sid) > 1})
        if twice:
            raise WeedsegError(f"split file {path}: ids listed twice in {name!r}: {few(twice)}")
    names = list(split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(split[a]) & set(split[b]))
            if both:
                raise WeedsegError(f"split file {path}: {len(both)} ids are in both {a!r} and {b!r}: {few(both)}; "
                                   "an image belongs to one split only")


def carve_val(train: list[str], path: Path) -> tuple[list[str], list[str]]:
    """Split `train` into (train, val): a seeded eighth of it (at least one image) becomes val."""
    if len(train) < 2:
        raise WeedsegError(f"split file {path} has no 'val' list and too few train images to take one from; "
                           "add a 'val' list")
    count = max(1, round(len(train) * FRACTIONS[1] / (FRACTIONS[0] + FRACTIONS[1])))
    chosen = set(np.random.default_rng(SPLIT_SEED).choice(sorted(train), size=count, replace=False).tolist())
    return [sid for sid in train if sid not in chosen], [sid for sid in sorted(train) if sid in chosen]


def subset(ids: list[str], fraction: float) -> list[str]:
    """The first `fraction` of a split's ids (at least one), so smaller subsets nest in larger ones."""
    if not 0 < fraction <= 1:
        raise WeedsegError(f"train fraction must be in (0, 1], got {fraction}")
    return ids[: max(1, round(len(ids) * fraction))]


def few(items: list[Any], limit: int = 5) -> str:
    """The first `limit` items joined by ', ', then how many more there are: for messages about long lists."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

