"""The experiment's results: per-method means and spreads, paired differences with 95 % intervals,
convergence of the fine-tuning runs, as JSON, Markdown and a chart.

All IoU numbers are in points (percent). A paired difference compares two methods seed by seed
(same data order, augmentation and head initialisation) over the seeds both have finished; its
95 % interval is mean +- t(0.975, n-1) * sd / sqrt(n).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..curves import best_validation, read_metrics
from ..data import LabelledData
from .mask_content import enrichment, masked_class_shares
from .plan import ExperimentConfig, finetune_folder, finetune_schedule, fraction_tag, pretrain_job

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom; the normal 1.96 beyond
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
PAIRS = (("selective", "random"), ("selective", "scratch"), ("random", "scratch"))


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom."""
    return T975[df - 1] if df <= len(T975) else 1.96


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over pairs, its 95 % interval (None for fewer than 2 pairs) and how often a > b."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    half = t975(n - 1) * d.std(ddof=1) / math.sqrt(n) if n >= 2 else None
    mean = float(d.mean()) if n else float("nan")
    return {"n": n, "mean": mean, "ci95": None if half is None else [float(mean - half), float(mean + half)],
            "wins": int((d > 0).sum())}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def read_run(folder: Path) -> dict | None:
    """One finished fine-tuning run: test metrics, the validation of the weights best.pt holds (chosen as
    `weedseg train` chose them, by the mean of its last --smooth-evals passes), and how much it gained in its
    last fifth."""
    test_file, log_file = folder / "test.json", folder / "metrics.jsonl"
    if not test_file.is_file() or not log_file.is_file():
        return None
    test = json.loads(test_file.read_text())
    log = read_metrics(folder)
    val = [(r["epoch"], 100 * r["val_miou"]) for r in log if "val_miou" in r]
    epochs = log[-1]["epoch"]
    before = [m for e, m in val if e <= 0.8 * epochs]
    last = [m for e, m in val if e > 0.8 * epochs]
    best = best_validation(folder, log)
    return {
        "test_miou": 100 * test["miou"], "test_iou": {k: 100 * v for k, v in test["iou"].items()},
        "best_val_miou": 100 * best["val_miou"], "best_epoch": best["epoch"], "epochs": epochs,
        "last_fifth_gain": max(last) - max(before) if before and last else None,
        "train_minutes": round(sum(r["seconds"] for r in log) / 60, 2),
        "checkpoint": str(folder / "best.pt"),
    }


def collect(cfg: ExperimentConfig, data: LabelledData | None) -> dict:
    """Everything finished so far, summarised (see the module docstring)."""
    runs = []
    for fraction in sorted(cfg.fractions, reverse=True):
        for method in cfg.methods:
            for seed in range(cfg.seeds):
                run = read_run(finetune_folder(cfg, method, seed, fraction))
                if run is not None:
                    runs.append({"fraction": fraction, "method": method, "seed": seed, **run})
    groups = []
    for fraction in sorted(cfg.fractions, reverse=True):
        by_method = {m: {r["seed"]: r for r in runs if r["fraction"] == fraction and r["method"] == m}
                     for m in cfg.methods}
        methods = {}
        for m, seeds in by_method.items():
            if not seeds:
                continue
            rs = list(seeds.values())
            gains = [r["last_fifth_gain"] for r in rs if r["last_fifth_gain"] is not None]
            methods[m] = {"seeds": sorted(seeds), "test_miou": spread([r["test_miou"] for r in rs]),
                          "test_iou": {c: spread([r["test_iou"][c] for r in rs]) for c in rs[0]["test_iou"]},
                          "best_val_miou": spread([r["best_val_miou"] for r in rs]),
                          "last_fifth_gain": spread(gains) if gains else None}
        pairs = []
        for a, b in PAIRS:
            common = sorted(set(by_method.get(a, {})) & set(by_method.get(b, {})))
            if not common:
                continue
            ra, rb = [by_method[a][s] for s in common], [by_method[b][s] for s in common]
            pairs.append({"a": a, "b": b, "seeds": common,
                          "miou": paired_difference([r["test_miou"] for r in ra], [r["test_miou"] for r in rb]),
                          "iou": {c: paired_difference([r["test_iou"][c] for r in ra], [r["test_iou"][c] for r in rb])
                                  for c in ra[0]["test_iou"]}})
        groups.append({"fraction": fraction, "schedule": dict(zip(("epochs", "warmup_epochs", "eval_every"),
                                                                  finetune_schedule(cfg, fraction))),
                       "methods": methods, "pairs": pairs})
    full = [r for r in runs if r["fraction"] == 1.0]
    best = max(full, key=lambda r: r["best_val_miou"]) if full else None
    return {"runs": runs, "groups": groups, "best_by_validation": best, "selective_masks": mask_content(cfg, data)}


def mask_content(cfg: ExperimentConfig, data: LabelledData | None) -> dict | None:
    """Class shares in the selective masks of each finished selective pretraining, and their mean over seeds
    (None without selective runs or without the labelled dataset)."""
    if "selective" not in cfg.methods or data is None:
        return None
    per_seed = {}
    for seed in range(cfg.seeds):
        job = pretrain_job(cfg, "selective", seed)
        if job.done:
            shares = masked_class_shares(job.folder, data)
            if shares is not None:
                per_seed[seed] = shares
    if not per_seed:
        return None
    mean = {k: np.mean([v[k] for v in per_seed.values()], axis=0).tolist() for k in ("masked_share", "all_share")}
    mean["enrichment"] = enrichment(mean["masked_share"], mean["all_share"])
    return {"classes": list(data.classes), "seeds": sorted(per_seed), "mean": mean, "per_seed": per_seed}


def fmt_ci(diff: dict) -> str:
    if diff["ci95"] is None:
        return f"{diff['mean']:+.2f}"
    lo, hi = diff["ci95"]
    return f"{diff['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def markdown(results: dict, cfg: ExperimentConfig) -> str:
    """The results as Markdown tables (per fraction: methods, then paired differences)."""
    lines = [f"# Experiment: {cfg.dataset}, budget `{cfg.budget}`, model `{cfg.model}`", "",
             f"Pretraining on the train images"
             f"{' and ' + ', '.join(cfg.pretrain_images) if cfg.pretrain_images else ''}: "
             f"{cfg.pretrain_epochs} epochs per selective step, batch {cfg.pretrain_batch_size} "
             f"(random masking: the same iterations). Fine-tuning with all labels: {cfg.finetune_epochs} epochs, "
             f"batch {cfg.finetune_batch_size}. Test mIoU and IoU in points, mean +- sample sd over seeds; "
             "paired differences are means over seeds with their 95 % t interval. best.pt val mIoU: the "
             "validation of the weights each run kept (where the mean of its last passes peaked).", ""]
    for g in results["groups"]:
        s = g["schedule"]
        lines += [f"## {100 * g['fraction']:g} % of the labelled training images ({fraction_tag(g['fraction'])})", "",
                  f"Fine-tuning: {s['epochs']} epochs, warm-up {s['warmup_epochs']}, validation every "
                  f"{s['eval_every']} epochs.", "",
                  "| method | seeds | test mIoU | soil IoU | crop IoU | weed IoU | best.pt val mIoU | val gain in last fifth |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, r in g["methods"].items():
            cells = [f"{r['test_miou']['mean']:.2f} +- {r['test_miou']['sd']:.2f}"]
            cells += [f"{v['mean']:.2f} +- {v['sd']:.2f}" for v in r["test_iou"].values()]
            gain = r["last_fifth_gain"]
            cells += [f"{r['best_val_miou']['mean']:.2f}", "-" if gain is None else f"{gain['mean']:+.2f}"]
            lines.append(f"| {m} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
        if g["pairs"]:
            classes = list(g["pairs"][0]["iou"])
            lines += ["", "| comparison | seeds | mIoU difference [95 % CI] | "
                      + " | ".join(f"{c} IoU difference" for c in classes) + " | seeds won (mIoU) |",
                      "|---|---|---|" + "---|" * len(classes) + "---|"]
            for p in g["pairs"]:
                lines.append(f"| {p['a']} - {p['b']} | {len(p['seeds'])} | {fmt_ci(p['miou'])} | "
                             + " | ".join(fmt_ci(p["iou"][c]) for c in classes)
                             + f" | {p['miou']['wins']} of {p['miou']['n']} |")
        lines.append("")
    masks = results.get("selective_masks")
    if masks:
        lines += ["## What selective masking hides", "",
                  f"Pixel share of each class in the cells selective pretraining masked (its highest-loss cells) "
                  f"and in the whole scored images, over every selective step; mean over seeds {masks['seeds']}. "
                  "Enrichment above 1: the model found that class harder to reconstruct than average.", "",
                  "| class | share of masked pixels | share of all pixels | enrichment |", "|---|---|---|---|"]
        m = masks["mean"]
        for i, c in enumerate(masks["classes"]):
            ratio = m["enrichment"][i]
            lines.append(f"| {c} | {100 * m['masked_share'][i]:.2f} % | {100 * m['all_share'][i]:.2f} % | "
                         + ("-" if ratio is None else f"{ratio:.2f}") + " |")
        lines.append("")
    lines += ["## Every run", "", "| labels | method | seed | test mIoU | " + "weed IoU | best.pt val mIoU (epoch) | minutes |",
              "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {100 * r['fraction']:g} % | {r['method']} | {r['seed']} | {r['test_miou']:.2f} | "
                     f"{r['test_iou'].get('weed', float('nan')):.2f} | {r['best_val_miou']:.2f} ({r['best_epoch']}) | "
                     f"{r['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def chart(results: dict, cfg: ExperimentConfig, path: Path) -> None:
    """Test mIoU and weed IoU per method and label fraction: one dot per seed, seeds joined across methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in results["groups"] if g["methods"]]
    if not groups:
        return
    fig, axes = plt.subplots(2, len(groups), figsize=(3.6 * len(groups) + 0.6, 6.4), squeeze=False)
    for col, g in enumerate(groups):
        methods = list(g["methods"])
        runs = [r for r in results["runs"] if r["fraction"] == g["fraction"]]
        for row, (label, value) in enumerate([("test mIoU", lambda r: r["test_miou"]),
                                              ("test weed IoU", lambda r: r["test_iou"].get("weed", math.nan))]):
            ax = axes[row][col]
            for seed in sorted({r["seed"] for r in runs}):
                pts = [(methods.index(r["method"]), value(r)) for r in runs if r["seed"] == seed]
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, "-o", color="0.6", lw=0.8, ms=4, zorder=1)
            means = [np.mean([value(r) for r in runs if r["method"] == m]) for m in methods]
            ax.scatter(range(len(methods)), means, marker="_", s=900, color="C3", zorder=2, label="mean")
            ax.set_xticks(range(len(methods)), methods)
            ax.set_xlim(-0.5, len(methods) - 0.5)
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"{label} (points)")
            if row == 0:
                ax.set_title(f"{100 * g['fraction']:g} % of the labels")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{cfg.dataset}: from scratch vs random vs selective masking pretraining "
                 f"(grey lines join runs of one seed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(cfg: ExperimentConfig, data: LabelledData | None) -> dict:
    """Write OUT/results.json, OUT/results.md and OUT/results.png from the finished runs; returns the results.
    `data`, the experiment's labelled dataset, shows what the selective masks hid (skipped when None)."""
    out = Path(cfg.out)
    results = collect(cfg, data)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results, cfg))
    chart(results, cfg, out / "results.png")
    return results
