"""Prelabels: a run's predicted masks as pre-annotations the labelling tools import, so a user corrects
instead of drawing. One set per `weedseg predict --outputs prelabels` run, under OUT/prelabels/:

- coco.json: COCO with one compressed-RLE annotation (iscrowd 1) per photo and plant class; CVAT imports it
  as "COCO 1.0", and it is what `weedseg dataset import --format coco` reads back.
- labelstudio.json: Label Studio tasks with `predictions` of brush labels (Label Studio's brush RLE), the
  photo named /data/local-files/?d=<its path below the input folder>.
- labelstudio-config.xml: the labelling configuration those predictions fit (BrushLabels "label" on Image "image").

The background class gets no annotation: pixels no label covers import as it. Masks are read back from the
run's mask files one at a time and the JSON is streamed to disk, so memory stays small on large folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ..infer.metadata import background_class
from ..infer.pictures import read_mask
from .brush import encode_brush
from .coco import coco_mask, require_pycocotools

FOLDER = PRELABELS = "prelabels"  # the folder, and the `--outputs` kind that writes it
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under its local-files document root


@dataclass(frozen=True)
class Predicted:
    """One photo of the run: its path below the input folder (as summary.csv names it) and its mask."""

    name: str
    mask: np.ndarray


def plant_classes(classes: list[str]) -> list[int]:
    """The classes that get annotations: all but the background."""
    background = background_class(classes)
    return [i for i in range(len(classes)) if i != background]


def coco_annotation(mask: np.ndarray, value: int) -> dict | None:
    """COCO fields of the pixels of class `value` (compressed RLE), or None when there are none."""
    region = np.asfortranarray(mask == value, dtype=np.uint8)
    if not region.any():
        return None
    rle = coco_mask.encode(region)
    return {"segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 1}


def brush_result(mask: np.ndarray, value: int, label: str, number: int) -> dict | None:
    """One Label Studio brush result for the pixels of class `value`, or None when there are none."""
    region = mask == value
    if not region.any():
        return None
    height, width = mask.shape
    return {"id": f"weedseg-{number}", "from_name": "label", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_brush(region), "brushlabels": [label]}}


def labelstudio_config(classes: list[str], colors: list[list[int]]) -> str:
    """The Label Studio labelling configuration the predictions fit."""
    labels = "".join(f"    <Label value={quoteattr(classes[i])} background=\"#{bytes(colors[i]).hex()}\"/>\n"
                     for i in plant_classes(classes))
    return (f"<View>\n  <Image name=\"image\" value=\"$image\" zoom=\"true\"/>\n"
            f"  <BrushLabels name=\"label\" toName=\"image\">\n{labels}  </BrushLabels>\n</View>\n")


def write_prelabels(out: Path, photos: Iterable[Predicted], classes: list[str], colors: list[list[int]],
                    model: str) -> Path:
    """Write OUT/prelabels/ (see the module docstring) for these photos; returns the folder."""
    require_pycocotools()
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    plants = plant_classes(classes)
    categories = [{"id": k, "name": classes[i], "supercategory": ""} for k, i in enumerate(plants, 1)]
    coco_part, ls_part = folder / f".coco.json.{os.getpid()}.part", folder / f".labelstudio.json.{os.getpid()}.part"
    try:
        with coco_part.open("w", encoding="utf-8") as coco, ls_part.open("w", encoding="utf-8") as ls:
            images, annotations = [], 0
            coco.write('{"info": {"description": "weedseg prelabels", "model": ' + json.dumps(model) + '},\n'
                       '"categories": ' + json.dumps(categories) + ',\n"annotations": [')
            ls.write("[")
            for n, photo in enumerate(photos, 1):
                height, width = photo.mask.shape
                images.append({"id": n, "file_name": photo.name, "width": width, "height": height})
                results = []
                for k, value in enumerate(plants, 1):
                    ann = coco_annotation(photo.mask, value)
                    if ann is not None:
                        annotations += 1
                        coco.write(("," if annotations > 1 else "") + "\n"
                                   + json.dumps({"id": annotations, "image_id": n, "category_id": k, **ann}))
                    result = brush_result(photo.mask, value, classes[value], len(results) + 1)
                    if result is not None:
                        results.append(result)
                task = {"data": {"image": LOCAL_FILES + photo.name},
                        "predictions": [{"model_version": model, "result": results}]}
                ls.write(("," if n > 1 else "") + "\n" + json.dumps(task, separators=(",", ":")))
            coco.write('\n],\n"images": ' + json.dumps(images) + "}\n")
            ls.write("\n]\n")
        os.replace(coco_part, folder / "coco.json")
        os.replace(ls_part, folder / "labelstudio.json")
    finally:
        coco_part.unlink(missing_ok=True)
        ls_part.unlink(missing_ok=True)
    (folder / "labelstudio-config.xml").write_text(labelstudio_config(classes, colors))
    return folder


def run_photos(out: Path, rows: list[dict]) -> Iterable[Predicted]:
    """The photos of a `weedseg predict` run that have a mask (summary rows: image, mask below `out`), read one
    at a time."""
    for row in rows:
        if row.get("status") != "failed" and row.get("mask"):
            yield Predicted(row["image"], read_mask(Path(out) / row["mask"]))
