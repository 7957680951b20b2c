"""COCO segmentation JSON (plain COCO, and CVAT's "COCO 1.0" export): polygons, uncompressed RLE and
compressed RLE, decoded with pycocotools (the reference implementation of the format)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import WeedsegError
from ..data.splits import few
from .dataset import Draw, Item, Shape

try:
    from pycocotools import mask as coco_mask
except ImportError:  # the [labels] extra; the command says what to install
    coco_mask = None

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 30  # parsed, an export this large would take many times its size in memory


def require_pycocotools() -> None:
    """WeedsegError with the install line when pycocotools is missing."""
    if coco_mask is None:
        raise WeedsegError("COCO import and prelabels need pycocotools: pip install 'weedseg[labels]'")


def read_json(path: Path) -> Any:
    """A JSON export, refused with one line when missing, too large or not JSON."""
    if not path.is_file():
        raise WeedsegError(f"export not found: {path}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise WeedsegError(f"{path} is {path.stat().st_size / 1e9:.1f} GB; split the export into smaller ones")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeedsegError(f"{path} is not valid JSON ({exc}); give the export file itself") from None


def find_coco_json(export: Path) -> Path:
    """The COCO JSON of an export: the file itself, or the one JSON under a CVAT export's annotations/ folder."""
    if export.is_file():
        return export
    found = sorted((export / "annotations").glob("*.json")) if export.is_dir() else []
    if len(found) != 1:
        what = f"{len(found)} JSON files under {export / 'annotations'}" if found else f"no annotations/*.json in {export}"
        raise WeedsegError(f"{what}: give the COCO JSON file itself")
    return found[0]


def rle_draw(segm: Any, where: str) -> Draw:
    """How to draw a COCO segmentation (polygons or RLE) at a photo's size."""

    def draw(height: int, width: int) -> np.ndarray:
        require_pycocotools()
        try:
            if isinstance(segm, list):
                polygons = [p for p in segm if isinstance(p, list)]
                if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
                    raise ValueError("a polygon needs at least 3 points (x, y pairs)")
                rle = coco_mask.merge(coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
            elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
                h, w = (int(v) for v in segm["size"])
                if isinstance(segm["counts"], list):
                    rle = coco_mask.frPyObjects(segm, h, w)
                else:
                    counts = segm["counts"]
                    rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
            else:
                raise ValueError("expected a list of polygons or an RLE with 'counts' and 'size'")
            return coco_mask.decode(rle).astype(bool)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise WeedsegError(f"{where}: unreadable segmentation ({exc})") from None

    return draw


def coco_items(data: Any, source: Path) -> tuple[list[str], list[Item]]:
    """(class labels in the order the categories list them, one Item per listed photo) of a parsed COCO JSON."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise WeedsegError(f"{source} is not a COCO export: it needs 'images', 'annotations' and 'categories' lists")
    categories = {c["id"]: str(c["name"]) for c in data.get("categories") or [] if isinstance(c, dict) and "id" in c}
    items: dict[Any, Item] = {}
    for image in data["images"]:
        try:
            items[image["id"]] = Item(str(image["file_name"]), (int(image["width"]), int(image["height"])))
        except (KeyError, TypeError, ValueError):
            raise WeedsegError(f"{source}: an image entry lacks id, file_name, width or height: {str(image)[:200]}") from None
    orphans = []
    for ann in data["annotations"]:
        where = f"{source}: annotation {ann.get('id')}"
        item = items.get(ann.get("image_id"))
        if item is None:
            orphans.append(str(ann.get("id")))
            continue
        category = ann.get("category_id")
        if category not in categories:
            listed = ", ".join(f"{i} {n}" for i, n in categories.items())
            raise WeedsegError(f"{where} of {item.name} has category_id {category}, which the export's categories "
                               f"do not list ({listed or 'none'}); export the project again with its labels")
        if "segmentation" not in ann or not ann["segmentation"]:
            raise WeedsegError(f"{where} of {item.name} has no segmentation (a box only?); export masks or polygons")
        item.shapes.append(Shape(categories[category], rle_draw(ann["segmentation"], f"{where} of {item.name}"), where))
    if orphans:
        log.warning("%d annotations name an image id that the export does not list, and were left out: %s",
                    len(orphans), few(orphans))
    return list(dict.fromkeys(categories.values())), list(items.values())
