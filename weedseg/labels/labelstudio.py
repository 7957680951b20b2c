"""Label Studio's JSON export (a list of tasks): brush labels (brush RLE) and polygon labels (points in percent
of the photo's width and height). Each task's last annotation that was not cancelled is used."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import WeedsegError
from ..data.splits import few
from .brush import decode_brush
from .coco import rle_draw
from .dataset import Draw, Item, Shape

log = logging.getLogger(__name__)

KINDS = {"brushlabels": "brush", "polygonlabels": "polygon"}


def task_photo(task: dict, where: str) -> str:
    """The photo a task labels: data["image"], else its one text field."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise WeedsegError(f"{where} has no 'data'; give Label Studio's JSON export (not JSON-MIN or CSV)")
    if isinstance(data.get("image"), str):
        return data["image"]
    texts = [v for v in data.values() if isinstance(v, str)]
    if len(texts) != 1:
        raise WeedsegError(f"{where}: cannot tell which field of 'data' is the photo ({', '.join(data)})")
    return texts[0]


def result_shape(result: dict, where: str) -> tuple[list[str], Draw, tuple[int, int]]:
    """(labels, how to draw it, (width, height) the result was drawn on) of one brush or polygon result."""
    value = result.get("value") or {}
    kind = KINDS[result["type"].lower()]
    try:
        width, height = int(result["original_width"]), int(result["original_height"])
    except (KeyError, TypeError, ValueError):
        raise WeedsegError(f"{where}: no original_width / original_height; export the project again") from None
    labels = value.get(result["type"].lower()) or value.get("labels") or []
    if kind == "brush":
        rle = value.get("rle", result.get("rle"))
        if value.get("format", "rle") != "rle" or rle is None:
            raise WeedsegError(f"{where}: a brush result without an 'rle' mask")
        return labels, lambda h, w: decode_brush(rle, width, height, where), (width, height)
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise WeedsegError(f"{where}: a polygon needs at least 3 points")
    flat = [c for x, y in points for c in (float(x) * width / 100.0, float(y) * height / 100.0)]
    return labels, rle_draw([flat], where), (width, height)


def labelstudio_items(data: Any, source: Path) -> tuple[list[str], list[Item]]:
    """(labels in order of first use, one Item per annotated task) of a parsed Label Studio JSON export."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise WeedsegError(f"{source} is not a Label Studio JSON export (a list of tasks)")
    labels: dict[str, None] = {}
    items, several, unused, skipped_types = [], [], [], {}
    for n, task in enumerate(data):
        where = f"{source}: task {task.get('id', n)}"
        photo = task_photo(task, where)
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            unused.append(Path(photo).name)
            continue
        if len(annotations) > 1:
            several.append(Path(photo).name)
        item = Item(photo, None)
        for k, result in enumerate(annotations[-1].get("result") or []):
            kind = str(result.get("type", "")).lower()
            if kind not in KINDS:
                skipped_types[kind] = skipped_types.get(kind, 0) + 1
                continue
            at = f"{where}, result {result.get('id', k)}"
            names, draw, size = result_shape(result, at)
            if len(names) != 1:
                raise WeedsegError(f"{at} carries {len(names)} labels ({', '.join(names) or 'none'}); give each "
                                   "region exactly one")
            if item.size is not None and item.size != size:
                raise WeedsegError(f"{at} was drawn on a {size[0]}x{size[1]} photo, other results of the task on "
                                   f"{item.size[0]}x{item.size[1]}")
            item.size = size
            labels.setdefault(names[0])
            item.shapes.append(Shape(names[0], draw, at))
        items.append(item)
    if several:
        log.warning("%d tasks have several annotations; the last one of each is used: %s", len(several), few(several))
    if skipped_types:
        kinds = ", ".join(f"{count} {kind or 'untyped'}" for kind, count in skipped_types.items())
        log.warning("results that are not brush or polygon labels were left out: %s", kinds)
    if unused:
        log.warning("%d tasks have no annotation and were left out (predictions alone are not labels): %s", len(unused), few(unused))
    return list(labels), items
