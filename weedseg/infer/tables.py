"""The tables `weedseg predict` writes: the weed grid of each image (grid.csv) and the run's summary.csv."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import printable
from .atomic import atomic_write
from .metadata import background_class
from .pictures import strips


def class_counts(mask: np.ndarray, classes: int) -> np.ndarray:
    """Pixels per class of a uint8 class-index mask, counted in strips (a bincount of the whole mask would
    hold 8 bytes per pixel)."""
    counts = np.zeros(256, np.int64)
    for rows in strips(*mask.shape):
        counts += np.bincount(mask[rows].ravel(), minlength=256)
    return counts[:classes]


@dataclass
class GridCell:
    """One spot-spraying cell: its bounds in pixels (x1, y1 exclusive) and weed cover in percent."""

    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int
    weed_pct: float


def weed_grid(mask: np.ndarray, weed_class: int, cell: int) -> list[GridCell]:
    """Weed cover per cell of a grid of `cell` x `cell` pixels (edge cells are smaller)."""
    h, w = mask.shape
    ys, xs = np.arange(0, h, cell), np.arange(0, w, cell)
    weed = np.stack([np.count_nonzero(mask[y0 : y0 + cell] == weed_class, axis=0) for y0 in ys])  # one band at a time
    weed = np.add.reduceat(weed, xs, axis=1, dtype=np.int64)
    cells = []
    for r, y0 in enumerate(ys):
        for c, x0 in enumerate(xs):
            y1, x1 = min(h, y0 + cell), min(w, x0 + cell)
            cells.append(GridCell(r, c, int(x0), int(y0), int(x1), int(y1),
                                  round(100.0 * weed[r, c] / ((y1 - y0) * (x1 - x0)), 3)))
    return cells


def grid_csv(cells: list[GridCell], spray: list[bool] | None = None) -> bytes:
    """The grid as CSV: row, col, x0, y0, x1, y1, weed_pct, and with `spray` a 0/1 spray column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "col", "x0", "y0", "x1", "y1", "weed_pct", *(["spray"] if spray is not None else [])])
    for i, c in enumerate(cells):
        writer.writerow([c.row, c.col, c.x0, c.y0, c.x1, c.y1, c.weed_pct, *([int(spray[i])] if spray is not None else [])])
    return buf.getvalue().encode()


def mask_stats(shape: tuple[int, int], classes: list[str], counts: np.ndarray, cells: list[GridCell]) -> dict:
    """Summary-row fields of a class-index mask of `shape` from its pixels per class (`class_counts`) and weed grid
    (percent per class, weed pixels and cells)."""
    h, w = shape
    row: dict = {"width": w, "height": h}
    row.update({f"{name}_pct": round(100.0 * n / (h * w), 3) for name, n in zip(classes, counts)})
    if "weed" not in classes:
        return row
    row.update(weed_pixels=int(counts[classes.index("weed")]),
               weed_cells=sum(c.weed_pct > 0 for c in cells),
               max_cell_weed_pct=max(c.weed_pct for c in cells))
    return row


def area_classes(classes: list[str]) -> list[str]:
    """The classes given a ground area (and shown as cover): all but the background, wherever it is listed."""
    background = background_class(classes)
    return [c for i, c in enumerate(classes) if i != background]


def summary_columns(classes: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """Columns of summary.csv; `extra` (fields a pipeline hook adds, see pipeline.Predictor) go before the mask."""
    weed = ["weed_pixels", "weed_cells", "max_cell_weed_pct"] if "weed" in classes else []
    if weed:  # ground units and spray decisions (weedseg.infer.spray)
        areas = [f"{c}_{unit}" for c in area_classes(classes) for unit in ("m2", "m2_per_ha")]
        weed += ["gsd_cm", "gsd_source", "area_m2", *areas, "cell_px", "cell_m", "cells", "spray_cells",
                 "sprayed_px", "sprayed_m2", "sprayed_pct", "herbicide_saving_pct_est"]
    return ["image", "status", "width", "height", *(f"{c}_pct" for c in classes), *weed, *extra, "mask",
            *(["spray_map"] if weed else []), "error"]


def write_summary(path: Path, rows: list[dict], classes: list[str], extra: tuple[str, ...] = ()) -> None:
    """Write summary.csv (one row per input image, in input order) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, summary_columns(classes, extra), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, printable(buf.getvalue()).encode())  # file names that are not UTF-8 as \xNN escapes
