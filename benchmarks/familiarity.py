"""Familiarity flag rates on the design sample, and with the statistics fitted on another field (docs/familiarity.md).

    python benchmarks/familiarity.py --checkpoint models/weedseg-peanut-default.pt --data-root ../shared/field_data

Computes the model's pooled encoder features (at its input resolution) of the peanut train / val / test photos
and of a seeded random sample of 150 sesame and 150 DeepWeeds photos (the design sample: the photos left out of
it are the ones docs/familiarity.md measures `weedseg predict` on). Prints the flag rate of the checkpoint's own
statistics on each set, then, per foreign field, of statistics fitted on 100 of its sample photos with the
threshold from 25 others, on its remaining 25 and on every other set.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from weedseg.checkpoint import familiarity_stats, load_checkpoint, model_from_checkpoint
from weedseg.data import open_dataset
from weedseg.data.locate import find_dataset_root
from weedseg.evaluate import model_short_side
from weedseg.familiarity import FamiliarityStats, judge
from weedseg.familiarity.fit import fit_stats, photo_features

SAMPLE = 150  # photos per foreign field in the design sample
FOREIGN = ("sesame", "deepweeds")


def design_sample(unlabeled: Path) -> dict[str, list[Path]]:
    """The seeded random sample of each foreign field (random.Random(0), sesame drawn first)."""
    rng = random.Random(0)
    return {name: rng.sample(sorted((unlabeled / name / "images").glob("*.jpg")), SAMPLE) for name in FOREIGN}


def flag_rate(stats: FamiliarityStats, features: np.ndarray) -> str:
    flagged = sum(v.unfamiliar for v in judge(stats, features))
    return f"{flagged} of {len(features)} ({100 * flagged / len(features):.0f} %)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="models/weedseg-peanut-default.pt")
    parser.add_argument("--data-root", help="folder holding peanut/ and unlabeled/ (default: as weedseg finds them)")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model, side, norm = model_from_checkpoint(ckpt), model_short_side(ckpt), ckpt["normalization"]
    peanut = open_dataset("peanut", args.data_root)
    photos = {f"peanut {s}": [x.image for x in peanut.splits[s]] for s in ("train", "val", "test")}
    photos.update(design_sample(find_dataset_root("peanut", args.data_root).parent / "unlabeled"))
    feats = {k: photo_features(model, v, side, norm["mean"], norm["std"], k) for k, v in photos.items()}
    own = familiarity_stats(ckpt)
    if own is not None:
        print(f"the checkpoint's own statistics ({own.field}, threshold {own.threshold:.2f}): "
              + "; ".join(f"{k} {flag_rate(own, f)}" for k, f in feats.items()))
    rng = np.random.default_rng(0)
    for name in FOREIGN:
        order = rng.permutation(SAMPLE)
        fit, val, held = (feats[name][order[a:b]] for a, b in ((0, 100), (100, 125), (125, SAMPLE)))
        stats = fit_stats(fit, val, name, side)
        print(f"statistics fitted on {name} (100 photos, threshold from 25): held-out {name} {flag_rate(stats, held)}; "
              + "; ".join(f"{k} {flag_rate(stats, f)}" for k, f in feats.items() if k != name))


if __name__ == "__main__":
    main()
