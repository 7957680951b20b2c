"""How --spray-threshold and --min-patch trade sprayed area against weeds left unsprayed, on labelled photos.

    .venv/bin/python benchmarks/spray_threshold.py [--dataset peanut] [--split test] [--cell 80]

The shipped model segments every photo of the split as `weedseg predict` does; cells are chosen
from its mask (weedseg.infer.spray.plan_spray), and the labels say which weed pixels those cells
cover. Per setting: the share of the image area sprayed, the estimated herbicide saving and the
share of the labelled weed pixels that fall in sprayed cells (weeds reached). Prints a Markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np

from weedseg.data import open_dataset
from weedseg.data.io import read_rgb
from weedseg.infer.geo import Ground
from weedseg.infer.image import segment_rgb
from weedseg.infer.pipeline import PredictOptions
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.spray import SpraySettings, plan_spray

SETTINGS = [(0.0, 0), (0.5, 0), (1.0, 0), (2.0, 0), (5.0, 0), (0.0, 20), (1.0, 20), (1.0, 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="peanut")
    parser.add_argument("--data-root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cell", type=int, default=80, help="grid cell in pixels (the photos have no GSD)")
    args = parser.parse_args()
    data = open_dataset(args.dataset, args.data_root, need=(args.split,))
    seg, opt = Segmenter(DEFAULT_MODEL, device="cpu", engine="onnxruntime"), PredictOptions()
    weed = seg.info.classes.index("weed")
    totals = np.zeros((len(SETTINGS), 3))  # sprayed pixels, image pixels, labelled weed pixels reached
    weed_pixels = 0
    for sample in data.splits[args.split]:
        mask = segment_rgb(seg, read_rgb(sample.image), opt.short_side, opt.tile, opt.overlap, opt.batch_size)
        truth = data.layout.decode_mask(sample.mask) == weed
        weed_pixels += int(truth.sum())
        for i, (threshold, min_patch) in enumerate(SETTINGS):
            plan = plan_spray(mask, seg.info.classes, Ground(None, "none"), SpraySettings(threshold, min_patch),
                              args.cell)
            sprayed = np.zeros_like(truth)
            for c, s in zip(plan.cells, plan.spray):
                sprayed[c.y0:c.y1, c.x0:c.x1] = s
            totals[i] += (sprayed.sum(), sprayed.size, (sprayed & truth).sum())
    print(f"{args.dataset} {args.split}: {len(data.splits[args.split])} photos, {args.cell} px cells, "
          f"{DEFAULT_MODEL.name} at short side {seg.info.input_short_side}\n")
    print("| --spray-threshold | --min-patch (px) | area sprayed | herbicide saving (estimate) | labelled weed pixels in sprayed cells |")
    print("|---|---|---|---|---|")
    for (threshold, min_patch), (sprayed, area, reached) in zip(SETTINGS, totals):
        print(f"| {threshold:g} % | {min_patch} | {100 * sprayed / area:.1f} % | {100 - 100 * sprayed / area:.1f} % "
              f"| {100 * reached / weed_pixels:.1f} % |")


if __name__ == "__main__":
    main()
