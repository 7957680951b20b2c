"""What selective masking hides: the class make-up of the highest-loss cells, read against the labels.

Pretraining never sees labels, but when it runs on a labelled dataset's training images the labels
tell what the selected cells contain. If the model finds weeds hard to reconstruct, the masked cells
hold a larger share of weed pixels than the images do ("enrichment" above 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..data import LabelledData
from ..ssl.pretrain import masks_from_record


def enrichment(masked_share: list[float], all_share: list[float]) -> list[float | None]:
    """Per class: its share of the masked pixels over its share of all pixels (None for an absent class)."""
    return [m / a if a else None for m, a in zip(masked_share, all_share)]


def masked_class_shares(run: Path, data: LabelledData) -> dict | None:
    """Pixel share of each class in the masked cells and in the whole scored views, over every
    selective step of the pretraining run in `run` (None when it has no masks.json). Cached in
    run/mask_content.json."""
    cache = run / "mask_content.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    records = sorted(run.glob("step*/masks.json"))
    if not records:
        return None
    samples = {s.image.name: s for s in data.splits["train"]}
    n = len(data.classes)
    masked, total = np.zeros(n, np.int64), np.zeros(n, np.int64)
    labels: dict[str, np.ndarray] = {}
    for path in records:
        record = json.loads(path.read_text())
        paths = {item["index"]: Path(item["path"]).name for item in record["images"]}
        for index, (grid, cell_mask) in masks_from_record(record).items():
            sample = samples.get(paths[index])
            if sample is None:
                continue
            if sample.id not in labels:
                labels[sample.id] = data.layout.decode_mask(sample.mask)
            view = cv2.resize(labels[sample.id], (grid.x[-1], grid.y[-1]), interpolation=cv2.INTER_NEAREST)
            hidden = grid.expand(cell_mask)
            masked += np.bincount(view[hidden].ravel(), minlength=n)[:n]
            total += np.bincount(view.ravel(), minlength=n)[:n]
    if not total.sum():
        return None
    masked_share, all_share = masked / max(1, masked.sum()), total / total.sum()
    result = {"classes": list(data.classes), "masked_share": masked_share.tolist(), "all_share": all_share.tolist(),
              "enrichment": enrichment(masked_share.tolist(), all_share.tolist()),
              "steps": len(records), "images": len(labels)}
    cache.write_text(json.dumps(result, indent=2))
    return result
