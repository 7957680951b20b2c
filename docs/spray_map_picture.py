"""Render docs/spray-map.jpg: the shipped model's spray cells over a peanut test photo.

    .venv/bin/python docs/spray_map_picture.py [--data-root ../shared/field_data] [--image 0184]

The photo is segmented as `weedseg predict` does (the model's resolution), then planned with
`weedseg predict`'s defaults except the cell: 80 px cells (the photo has no known GSD, so cells
are in pixels), spray threshold 1 %. The picture shows the overlay with the cells to spray
outlined and the run figures printed on it; the same figures are printed here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from weedseg.data.io import read_rgb
from weedseg.data.locate import find_dataset_root
from weedseg.data.transforms import resize_short_side
from weedseg.infer import atomic, pictures
from weedseg.infer.geo import Ground
from weedseg.infer.image import segment_rgb
from weedseg.infer.pipeline import PredictOptions
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.spray import SpraySettings, draw_spray_cells, plan_spray

OUT = Path(__file__).with_name("spray-map.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder holding peanut/ (default: the usual places)")
    parser.add_argument("--image", default="0184", help="peanut image id (a test-split photo)")
    parser.add_argument("--cell", type=int, default=80, help="grid cell in pixels")
    args = parser.parse_args()
    root = find_dataset_root("peanut", args.data_root)
    rgb = read_rgb(root / "images" / f"{args.image}.jpg")
    seg, opt = Segmenter(DEFAULT_MODEL, device="cpu", engine="onnxruntime"), PredictOptions()
    mask = segment_rgb(seg, rgb, opt.short_side, opt.tile, opt.overlap, opt.batch_size)
    plan = plan_spray(mask, seg.info.classes, Ground(None, "none"), SpraySettings(), args.cell)
    row = plan.row()
    text = (f"spray {row['spray_cells']} of {row['cells']} cells ({row['sprayed_pct']:.0f} % of the area), "
            f"threshold 1 % weed per cell")
    tinted = pictures.overlay(rgb, mask, seg.info.colors, background=seg.info.background)
    small = resize_short_side(tinted, 480)  # a small file for the README
    picture = draw_spray_cells(small, plan)
    cv2.rectangle(picture, (0, 0), (picture.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(picture, text, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 214, 0), 1, cv2.LINE_AA)
    atomic.atomic_write(OUT, pictures.encode_image(picture, ".jpg"))
    print(f"peanut {args.image}: {text}; herbicide saving {row['herbicide_saving_pct_est']:.1f} % (estimate) -> {OUT}")


if __name__ == "__main__":
    main()
