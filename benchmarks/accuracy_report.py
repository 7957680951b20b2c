"""Tables for docs/accuracy.md from run folders scored by `weedseg evaluate` (eval-val-full.json,
eval-test-full.json, eval-test-256.json in each), grouped by name: RUNS/<group>-s<seed>.

    python benchmarks/accuracy_report.py RUNS [--pair A B ...]

Prints per group the mean over seeds (and each seed) of val and test mIoU at full resolution, test weed IoU
and test mIoU at short side 256; then, for each --pair A B, the paired difference A - B over the seeds both
have, with its 95 % interval (Student's t), for each of those figures.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from weedseg.experiment.report import fmt_ci, paired_difference

FIGURES = {"val full": ("val-full", None), "test full": ("test-full", None),
           "test weed": ("test-full", "weed"), "test 256": ("test-256", None)}


def figures(run: Path) -> dict[str, float] | None:
    """The four figures of one scored run, in percent; None when one of its eval files is missing."""
    out = {}
    for name, (split, cls) in FIGURES.items():
        path = run / f"eval-{split}.json"
        if not path.is_file():
            return None
        scores = json.loads(path.read_text())
        out[name] = 100 * (scores["iou"][cls] if cls else scores["miou"])
    return out


def groups(root: Path) -> dict[str, dict[int, dict[str, float]]]:
    """{group: {seed: figures}} for every scored run folder named <group>-s<seed> under `root`."""
    found: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for run in sorted(root.iterdir()):
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if match and run.is_dir() and (scores := figures(run)) is not None:
            found[match[1]][int(match[2])] = scores
    return dict(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    args = parser.parse_args()
    found = groups(args.root)
    print("| runs | seeds | " + " | ".join(FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for name, seeds in found.items():
        means = [sum(s[f] for s in seeds.values()) / len(seeds) for f in FIGURES]
        each = " / ".join(f"{seeds[k]['val full']:.2f}" for k in sorted(seeds))
        print(f"| {name} | {len(seeds)} (val {each}) | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    for a, b in args.pair:
        common = sorted(set(found.get(a, {})) & set(found.get(b, {})))
        diffs = [fmt_ci(paired_difference([found[a][s][f] for s in common], [found[b][s][f] for s in common]))
                 for f in FIGURES]
        print(f"\n{a} - {b} over seeds {common}: " + "; ".join(f"{f} {d}" for f, d in zip(FIGURES, diffs)))


if __name__ == "__main__":
    main()
