"""Tables for docs/research/accuracy.md from run folders scored by `weedseg evaluate` (eval-val-full.json,
eval-test-full.json, eval-test-256.json in each), grouped by name: RUNS/<group>-s<seed>.

    python benchmarks/accuracy_report.py RUNS [--pair A B ...]

Prints per group the mean over seeds (and each seed) of val and test mIoU at full resolution, test weed IoU
and test mIoU at short side 256, and the validation mIoU that training logged for best.pt (metrics.jsonl, at
the run's --eval-short-side: the one figure of runs whose checkpoints stayed on a GPU machine); then, for each
--pair A B, the paired difference A - B over the seeds both have, with its 95 % interval (Student's t), for
each of those figures. A figure a run lacks is shown as "-".
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from weedseg.experiment.report import fmt_ci, paired_difference
from weedseg.curves import best_validation, read_metrics

FIGURES = {"val full": ("val-full", None), "test full": ("test-full", None),
           "test weed": ("test-full", "weed"), "test 256": ("test-256", None)}
TRAINING_VAL = "val in training"
COLUMNS = [*FIGURES, TRAINING_VAL]


def figures(run: Path) -> dict[str, float]:
    """The figures of one run folder that it has, in percent."""
    out = {}
    for name, (split, cls) in FIGURES.items():
        path = run / f"eval-{split}.json"
        if path.is_file():
            scores = json.loads(path.read_text())
            out[name] = 100 * (scores["iou"][cls] if cls else scores["miou"])
    if (run / "metrics.jsonl").is_file():
        best = best_validation(run, read_metrics(run))
        if best is not None:
            out[TRAINING_VAL] = 100 * best["val_miou"]
    return out


def groups(root: Path) -> dict[str, dict[int, dict[str, float]]]:
    """{group: {seed: figures}} for every run folder named <group>-s<seed> under `root` with a figure."""
    found: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for run in sorted(root.iterdir()):
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if match and run.is_dir() and (scores := figures(run)):
            found[match[1]][int(match[2])] = scores
    return dict(found)


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    args = parser.parse_args()
    found = groups(args.root)
    print("| runs | seeds | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name, seeds in found.items():
        means = [mean([s[f] for s in seeds.values() if f in s]) for f in COLUMNS]
        key = "val full" if all("val full" in s for s in seeds.values()) else TRAINING_VAL
        each = " / ".join(f"{seeds[k].get(key, float('nan')):.2f}" for k in sorted(seeds))
        print(f"| {name} | {len(seeds)} ({key} {each}) | " + " | ".join(means) + " |")
    for a, b in args.pair:
        diffs = []
        for f in COLUMNS:
            common = sorted(s for s in set(found.get(a, {})) & set(found.get(b, {}))
                            if f in found[a][s] and f in found[b][s])
            diffs.append(fmt_ci(paired_difference([found[a][s][f] for s in common], [found[b][s][f] for s in common]))
                         if common else "-")
        seeds = sorted(set(found.get(a, {})) & set(found.get(b, {})))
        print(f"\n{a} - {b} over seeds {seeds}: " + "; ".join(f"{f} {d}" for f, d in zip(COLUMNS, diffs)))

if __name__ == "__main__":
    main()
