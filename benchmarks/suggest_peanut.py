"""The folder datasets of the `weedseg suggest` experiment on peanut (docs/labelling.md): symlinks to peanut's
images/ and labels/, its colour class map, and a split.json whose train list is the run's photos (val and test
are peanut's own). Each draw is seeded, so the same command gives the same photos.

    python benchmarks/suggest_peanut.py base SEED      # data-base-sSEED (14 random training photos), pool-sSEED/
                                                        # (links to the 266 others) and labelled-sSEED/ (the 14)
    python benchmarks/suggest_peanut.py random SEED    # data-random-sSEED: the 14 + 14 more at random
    python benchmarks/suggest_peanut.py suggest SEED   # data-suggest-sSEED: the 14 + the first 14 of suggest-sSEED.txt
    python benchmarks/suggest_peanut.py again SEED     # another pair on seed 0's base: data-random-sSEED (another
                                                        # random 14) and data-suggest-sSEED (seed 0's suggested 14)

Run in the experiment's folder; --data-root (default $WEEDSEG_DATA/peanut) is the peanut folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SPLIT_FILE = Path(__file__).resolve().parents[1] / "weedseg" / "data" / "split_files" / "peanut.json"
TOML = ('images = "images"\nmasks = "labels"\nmask_format = "color"\n[class_map]\nsoil = [0, 0, 0]\n'
        'crop = [0, 255, 0]\nweed = [255, 0, 0]\n')
FIRST, MORE = 14, 14


def make(name: str, train: list[str], peanut: Path, split: dict) -> None:
    """A folder dataset `name` that trains on `train` and validates and tests as peanut does."""
    root = Path(name)
    root.mkdir(exist_ok=True)
    for sub in ("images", "labels"):
        if not (root / sub).exists():
            (root / sub).symlink_to(peanut / sub)
    (root / "dataset.toml").write_text(TOML)
    (root / "split.json").write_text(json.dumps({"train": train, "val": split["val"], "test": split["test"]}))


def links(folder: str, ids: list[str], peanut: Path) -> None:
    """A folder of links to these peanut photos."""
    Path(folder).mkdir(exist_ok=True)
    for i in ids:
        if not (Path(folder) / f"{i}.jpg").exists():
            (Path(folder) / f"{i}.jpg").symlink_to(peanut / "images" / f"{i}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["base", "random", "suggest", "again"])
    parser.add_argument("seed", type=int)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("WEEDSEG_DATA", "field_data")) / "peanut")
    args = parser.parse_args()
    split = json.loads(SPLIT_FILE.read_text())
    base_seed = 0 if args.what == "again" else args.seed
    base = sorted(np.random.default_rng(base_seed).choice(split["train"], FIRST, replace=False).tolist())
    pool = [i for i in split["train"] if i not in base]
    extra = sorted(np.random.default_rng(1000 + args.seed).choice(pool, MORE, replace=False).tolist())
    s = args.seed
    if args.what == "base":
        make(f"data-base-s{s}", base, args.data_root, split)
        links(f"pool-s{s}", pool, args.data_root)
        links(f"labelled-s{s}", base, args.data_root)
    if args.what in ("random", "again"):
        make(f"data-random-s{s}", base + extra, args.data_root, split)
    if args.what in ("suggest", "again"):
        listed = Path(f"suggest-s{base_seed}.txt").read_text().split()
        make(f"data-suggest-s{s}", base + [Path(p).stem for p in listed[:MORE]], args.data_root, split)


if __name__ == "__main__":
    main()
