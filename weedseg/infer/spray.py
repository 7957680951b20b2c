"""Spot-spraying decisions from a class mask: which grid cells to spray, the areas involved, and spray maps.

A cell is sprayed when its weed cover reaches `--spray-threshold` percent after weed patches smaller
than `--min-patch` are dropped as specks. The herbicide saving is an estimate: the share of the
image area outside the sprayed cells, i.e. what spot spraying saves against broadcast spraying of
the whole image at the same dose, ignoring nozzle overlap, boom latency and safety margins.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import WeedsegError
from . import atomic, tables, vector
from .geo import GeoRef, Ground

log = logging.getLogger(__name__)

SAVING_NOTE = ("estimate: share of the image area outside the sprayed cells, against broadcast spraying at the "
               "same dose; ignores nozzle overlap, boom latency and safety margins")
MIN_CELL_PX = 4  # smaller cells say nothing a sprayer can act on
MAX_CELLS = 250_000  # per photo: more cells than this only cost memory (a 1-pixel grid of a 48 MP photo took 5 GB)
LONLAT_NOTE = "RFC 7946: WGS 84 longitude and latitude"
PIXEL_NOTE = ("image pixel coordinates (x to the right, y down, origin at the top-left corner of the image): "
              "the image is not georeferenced")


@dataclass(frozen=True)
class SpraySettings:
    """How cells are chosen for spraying; see `weedseg predict --help`."""

    threshold_pct: float = 1.0  # weed cover per cell that triggers spraying
    min_patch: float = 0.0  # smallest weed patch kept: cm² with a GSD, pixels without
    cell_m: float | None = None  # cell size in metres (with a GSD); otherwise the grid cell in pixels
    patches: bool = False  # also write weed patch polygons into the spray map

    def __post_init__(self) -> None:
        if not 0 <= self.threshold_pct <= 100:
            raise WeedsegError(f"--spray-threshold must be a percentage from 0 to 100, got {self.threshold_pct}")
        if not (self.min_patch >= 0 and math.isfinite(self.min_patch)):
            raise WeedsegError(f"--min-patch must be 0 or more, got {self.min_patch}")
        if self.cell_m is not None and not (self.cell_m > 0 and math.isfinite(self.cell_m)):
            raise WeedsegError(f"--cell-m must be a positive number of metres, got {self.cell_m}")


def cell_pixels(ground: Ground, settings: SpraySettings, grid_cell: int, shape: tuple[int, int],
                max_cells: int = MAX_CELLS) -> int:
    """Grid cell size in image pixels: `cell_m` at the image's GSD when both are known, else `grid_cell`; raised
    (said once per size) to MIN_CELL_PX and to the size that gives an image of `shape` at most `max_cells` cells."""
    asked = grid_cell if settings.cell_m is None or ground.gsd_cm is None else settings.cell_m * 100.0 / ground.gsd_cm
    least = max(MIN_CELL_PX, math.ceil(math.sqrt(shape[0] * shape[1] / max_cells)))
    if asked >= least:
        return max(1, round(asked))
    _say_raised(round(asked, 2), least, ground.gsd_cm)
    return least


@functools.cache
def _say_raised(asked: float, used: int, gsd_cm: float | None) -> None:
    size = f"{asked:g} pixels" if gsd_cm is None else f"{asked:g} pixels ({asked * gsd_cm / 100:g} m)"
    log.warning("grid cells of %s are too small for spray decisions: using %d pixels%s", size, used,
                "" if gsd_cm is None else f" ({used * gsd_cm / 100:.3g} m)")


def min_patch_pixels(ground: Ground, settings: SpraySettings) -> int:
    """The smallest weed patch kept, in pixels (`min_patch` is in cm² when the GSD is known)."""
    if ground.gsd_cm is None:
        return math.ceil(settings.min_patch)
    return math.ceil(settings.min_patch / ground.gsd_cm ** 2)


def drop_specks(weed: np.ndarray, min_pixels: int) -> np.ndarray:
    """The weed mask (uint8 0/1) without 8-connected patches of fewer than `min_pixels` pixels."""
    weed = weed.astype(np.uint8)
    if min_pixels <= 1:
        return weed
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weed, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # background
    return keep[labels].astype(np.uint8) if n > 1 else weed


@dataclass
class SprayPlan:
    """Spray decisions for one image: the weed grid after dropping specks and which cells to spray."""

    ground: Ground
    settings: SpraySettings
    cell_px: int
    min_patch_px: int
    weed: np.ndarray  # uint8 0/1 weed mask without specks
    cells: list[tables.GridCell]  # weed cover after dropping specks
    spray: list[bool]
    class_pixels: dict[str, int]  # pixels of each class but the background (tables.area_classes)

    def cell_area_px(self, c: tables.GridCell) -> int:
        return (c.x1 - c.x0) * (c.y1 - c.y0)

    def row(self) -> dict:
        """Summary row fields: GSD and its source, ground areas per class, cells to spray and the saving."""
        h, w = self.weed.shape
        sprayed_px = sum(self.cell_area_px(c) for c, s in zip(self.cells, self.spray) if s)
        sprayed_pct = round(100.0 * sprayed_px / (h * w), 3)
        row: dict = {"gsd_cm": None if self.ground.gsd_cm is None else round(self.ground.gsd_cm, 4),
                     "gsd_source": self.ground.source, "cell_px": self.cell_px,
                     "cells": len(self.cells), "spray_cells": sum(self.spray), "sprayed_px": sprayed_px,
                     "sprayed_pct": sprayed_pct, "herbicide_saving_pct_est": round(100.0 - sprayed_pct, 3)}
        m2 = self.ground.pixel_m2()
        if m2 is not None:
            row.update(area_m2=round(h * w * m2, 4), cell_m=round(self.cell_px * self.ground.gsd_cm / 100.0, 4),
                       sprayed_m2=round(sprayed_px * m2, 4))
            for name, n in self.class_pixels.items():
                row[f"{name}_m2"] = round(n * m2, 4)
                row[f"{name}_m2_per_ha"] = round(10_000.0 * n / (h * w), 2)
        return row


def plan_spray(mask: np.ndarray, classes: list[str], ground: Ground, settings: SpraySettings,
               grid_cell: int, counts: np.ndarray | None = None) -> SprayPlan | None:
    """The spray plan of a class-index mask (`counts`: its pixels per class, when already counted); None when
    the model has no weed class."""
    if "weed" not in classes:
        return None
    cell = cell_pixels(ground, settings, grid_cell, mask.shape)
    min_px = min_patch_pixels(ground, settings)
    weed = drop_specks(mask == classes.index("weed"), min_px)
    cells = tables.weed_grid(weed, 1, cell)
    spray = [bool(c.weed_pct > 0 and c.weed_pct >= settings.threshold_pct) for c in cells]
    if counts is None:
        counts = tables.class_counts(mask, len(classes))  # in strips: a whole-mask bincount holds 8 bytes a pixel
    areas = tables.area_classes(classes)
    return SprayPlan(ground, settings, cell, min_px, weed, cells, spray,
                     {name: int(n) for name, n in zip(classes, counts) if name in areas})


def summarize_mask(mask: np.ndarray, classes: list[str], ground: Ground, settings: SpraySettings,
                   grid_cell: int) -> tuple[dict, list[tables.GridCell], SprayPlan | None]:
    """Summary-row fields, weed grid and spray plan of a class-index mask, each computed once. The grid is the
    plan's, measured after dropping specks, so grid.csv and the spray cells agree; no weed class: no grid, no plan."""
    counts = tables.class_counts(mask, len(classes))
    plan = plan_spray(mask, classes, ground, settings, grid_cell, counts)
    cells = plan.cells if plan else []
    row = tables.mask_stats(mask.shape, classes, counts, cells)
    return ({**row, **plan.row()} if plan else row), cells, plan


def _cell_geometry(c: tables.GridCell, georef: GeoRef | None) -> dict:
    """A grid cell's polygon: WGS 84 longitude/latitude with a georeference, else pixel coordinates."""
    if georef is not None:
        return vector.box_geometry(c.x0, c.y0, c.x1, c.y1, georef)
    ring = [[float(x), float(y)] for x, y in ((c.x0, c.y0), (c.x0, c.y1), (c.x1, c.y1), (c.x1, c.y0), (c.x0, c.y0))]
    return {"type": "Polygon", "coordinates": [ring]}


def _area(plan: SprayPlan, pixels: int) -> dict:
    m2 = plan.ground.pixel_m2()
    return {"area_px": pixels} if m2 is None else {"area_px": pixels, "area_m2": round(pixels * m2, 4)}


def spray_geojson(plan: SprayPlan, image: str) -> dict:
    """The spray map of one image as a GeoJSON FeatureCollection: one polygon per cell to spray (and per weed
    patch with `settings.patches`), RFC 7946 (WGS 84 longitude/latitude) for a georeferenced image, else in pixel
    coordinates, as the file says."""
    georef, s = plan.ground.georef, plan.settings
    features = [{"type": "Feature", "geometry": _cell_geometry(c, georef),
                 "properties": {"image": image, "kind": "spray_cell", "row": c.row, "col": c.col,
                                "weed_pct": c.weed_pct, **_area(plan, plan.cell_area_px(c))}}
                for c, sprayed in zip(plan.cells, plan.spray) if sprayed]
    if s.patches:
        features += [{"type": "Feature", "geometry": geometry,
                      "properties": {"image": image, "kind": "weed_patch", **_area(plan, pixels)}}
                     for geometry, pixels in vector.patch_features(plan.weed, georef)]
    doc: dict = {"type": "FeatureCollection", "name": f"{image} spray cells"}
    doc["weedseg"] = {
        "image": image, "coordinates": "pixels" if georef is None else "lonlat",
        "coordinate_note": PIXEL_NOTE if georef is None else LONLAT_NOTE,
        "gsd_cm": plan.ground.gsd_cm, "gsd_source": plan.ground.source, "cell_px": plan.cell_px,
        "spray_threshold_pct": s.threshold_pct, "min_patch_px": plan.min_patch_px,
        **{k: v for k, v in plan.row().items() if k in ("cells", "spray_cells", "sprayed_pct", "sprayed_m2",
                                                        "herbicide_saving_pct_est")},
        "herbicide_saving_note": SAVING_NOTE}
    doc["features"] = features
    return doc


def spray_grid(plan: SprayPlan) -> np.ndarray:
    """The plan's spray decisions as a (rows, cols) uint8 0/1 grid."""
    grid = np.zeros((plan.cells[-1].row + 1, plan.cells[-1].col + 1), np.uint8)
    for c, sprayed in zip(plan.cells, plan.spray):
        grid[c.row, c.col] = sprayed
    return grid


def shapefile_zip_bytes(plan: SprayPlan, stem: str) -> bytes:
    """The plan's prescription map as a zipped Shapefile STEM.spray.* (the page's download)."""
    with tempfile.TemporaryDirectory() as tmp:
        [shp] = write_prescription_maps(Path(tmp) / f"{stem}.spray", plan, (".shp",))
        return vector.shapefile_zip(shp)


def write_prescription_maps(base: Path, plan: SprayPlan, suffixes: tuple[str, ...] = (".gpkg", ".shp")) -> list[Path]:
    """Write the plan's spray / no-spray zones as prescription maps BASE.gpkg and BASE.shp in the image's CRS."""
    georef = plan.ground.georef
    if georef is None:
        raise WeedsegError("prescription maps need a georeferenced image (a GeoTIFF)")
    h, w = plan.weed.shape
    zones = vector.prescription_zones(spray_grid(plan), plan.cell_px, w, h, georef, plan.ground.pixel_m2())
    paths = [base.with_name(base.name + suffix) for suffix in suffixes]
    for path in paths:
        vector.write_prescription(path, zones, georef)
    return paths


def draw_spray_cells(picture: np.ndarray, plan: SprayPlan, color: tuple[int, int, int] = (255, 214, 0),
                     alpha: float = 0.2) -> np.ndarray:
    """A copy of `picture` (the image or its overlay, at any size) with the cells to spray lightly filled and
    outlined in `color` (RGB)."""
    sy, sx = picture.shape[0] / plan.weed.shape[0], picture.shape[1] / plan.weed.shape[1]
    boxes = [((round(c.x0 * sx), round(c.y0 * sy)), (round(c.x1 * sx) - 1, round(c.y1 * sy) - 1))
             for c, s in zip(plan.cells, plan.spray) if s]
    filled = picture.copy()
    for p0, p1 in boxes:
        cv2.rectangle(filled, p0, p1, color, -1)
    drawn = cv2.addWeighted(filled, alpha, picture, 1 - alpha, 0)
    width = max(1, round(min(picture.shape[:2]) / 360))
    for p0, p1 in boxes:
        cv2.rectangle(drawn, p0, p1, color, width)
    return drawn


def spray_map_bytes(plan: SprayPlan, image: str) -> bytes:
    """The image's spray map as compact GeoJSON bytes."""
    return json.dumps(spray_geojson(plan, image), separators=(",", ":")).encode()


def write_spray_map(path: Path, plan: SprayPlan, image: str) -> None:
    """Write the image's spray map GeoJSON atomically."""
    atomic.atomic_write(path, spray_map_bytes(plan, image))


def write_run_map(path: Path, maps: list[Path]) -> int:
    """Merge the georeferenced per-image spray maps (all in WGS 84) into one GeoJSON at `path`, or remove a
    previous run's `path` when none is georeferenced; returns the number of images merged."""
    docs = [json.loads(p.read_text()) for p in maps if p.is_file()]
    docs = [d for d in docs if d["weedseg"]["coordinates"] == "lonlat"]
    if not docs:
        path.unlink(missing_ok=True)
        return 0
    merged = {"type": "FeatureCollection", "name": "spray cells of all georeferenced images",
              "weedseg": {"images": [d["weedseg"]["image"] for d in docs], "coordinate_note": LONLAT_NOTE,
                          "herbicide_saving_note": SAVING_NOTE},
              "features": [f for d in docs for f in d["features"]]}
    atomic.atomic_write(path, json.dumps(merged, separators=(",", ":")).encode())
    return len(docs)


def write_run_outputs(out: Path, rows: list[dict]) -> dict:
    """Write the run's spray totals (spray_summary.json) and merged map (spray_map.geojson), log them and
    return the totals; without totals, a previous run's files are removed, so none outlives its run."""
    totals = run_totals(rows)
    if not totals:
        for stale in ("spray_summary.json", "spray_map.geojson"):
            (out / stale).unlink(missing_ok=True)
        return totals
    atomic.atomic_write(out / "spray_summary.json", json.dumps(totals, indent=1).encode())
    maps = [out / r["spray_map"] for r in rows if r.get("spray_map")]
    merged = write_run_map(out / "spray_map.geojson", maps)
    log.info("spray %d of %d cells: %.1f %% of the area; herbicide saving %.1f %% (estimate); %s",
             totals["spray_cells"], totals["cells"], totals["sprayed_pct"], totals["herbicide_saving_pct_est"],
             f"map of {merged} georeferenced images: {out / 'spray_map.geojson'}" if merged else
             "no georeferenced image, so no run-level map")
    return totals


def run_totals(rows: list[dict]) -> dict:
    """Run-level spray figures from the summary rows of the images that have them. Areas in m² sum the
    images with a GSD; the sprayed share is area-weighted (m² when every image has a GSD, else pixels)."""
    done = [r for r in rows if r.get("cells") not in (None, "")]
    if not done:
        return {}
    ground = [r for r in done if r.get("area_m2") not in (None, "")]
    if len(ground) == len(done):
        sprayed, total = sum(r["sprayed_m2"] for r in done), sum(r["area_m2"] for r in done)
    else:
        sprayed, total = sum(r["sprayed_px"] for r in done), sum(r["width"] * r["height"] for r in done)
    share = round(100.0 * sprayed / total, 3) if total else 0.0
    totals: dict = {"images": len(done), "images_with_gsd": len(ground), "cells": sum(r["cells"] for r in done),
                    "spray_cells": sum(r["spray_cells"] for r in done), "sprayed_pct": share,
                    "herbicide_saving_pct_est": round(100.0 - share, 3), "herbicide_saving_note": SAVING_NOTE}
    if ground:
        for key in sorted({k for r in ground for k in r if k.endswith("_m2")}):
            totals[key] = round(sum(r.get(key) or 0.0 for r in ground), 4)
    return totals
