"""The whole-field outputs of a streamed orthomosaic, made from its class mask COG read in strips of rows.

Per class, its share and area of the field (nodata pixels are counted apart and left out of both); the
weed grid and spray decisions per cell (a cell's weed cover is measured over its pixels inside the field);
the spray map (RFC 7946 GeoJSON of the zones to spray), prescription maps (GeoPackage and Shapefile of the
spray and no-spray zones, in the raster's CRS), an optional overlay COG and NAME.field.json, the
whole-field spray summary. Memory holds one strip and the per-cell counts, whatever the field's size.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import atomic, pictures, vector
from .geo import Ground, require_geo
from .metadata import ModelInfo
from .ortho import BLOCK, NODATA, Stretch, describe_raster, gdal_env, is_ortho, quiet, segment_ortho
from .session import Segmenter
from .spray import SAVING_NOTE, SpraySettings, cell_pixels
from .tables import area_classes

if TYPE_CHECKING:  # the pipeline imports this module: its types only, for annotations
    from .pipeline import Job, PredictOptions

try:  # the [geo] extra
    import rasterio
    from rasterio.windows import Window
except ImportError:
    pass

log = logging.getLogger(__name__)

MAX_FIELD_CELLS = 4_000_000  # 0.5 m cells over 100 ha; counted in arrays, not objects
STRIP_ROWS = BLOCK  # rows of the mask read at once
COUNT_ROWS = 32  # rows counted at once
# Tiles of an orthomosaic go to the model one at a time (--batch-size is for photos): on a CPU a batch of four
# 1024-pixel tiles is no faster and holds about 360 MB more in the engine.
ORTHO_BATCH = 1


@dataclass
class Tally:
    """Pixels per mask value over the field, and per grid cell its weed and in-field pixels."""

    counts: np.ndarray  # (256,) int64
    weed: np.ndarray  # (cell rows, cell cols) int64
    inside: np.ndarray  # (cell rows, cell cols) int64
    cell: int


def tally(mask_path: Path, weed_class: int | None, cell: int) -> Tally:
    """Count a class mask COG strip by strip."""
    with quiet(), rasterio.open(mask_path) as ds:
        height, width = ds.height, ds.width
        rows, cols = -(-height // cell), -(-width // cell)
        t = Tally(np.zeros(256, np.int64), np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64), cell)
        starts = np.arange(0, width, cell)
        for y0 in range(0, height, STRIP_ROWS):
            strip = ds.read(1, window=Window(0, y0, width, min(STRIP_ROWS, height - y0)))
            y = 0
            while y < strip.shape[0]:  # rows within one row of cells, COUNT_ROWS at most (bincount: 8 bytes a pixel)
                r = (y0 + y) // cell
                end = min(strip.shape[0], y + COUNT_ROWS, (r + 1) * cell - y0)
                band = strip[y:end]
                t.counts += np.bincount(band.ravel(), minlength=256)
                t.inside[r] += np.add.reduceat((band != NODATA).sum(0, dtype=np.int64), starts)
                if weed_class is not None:
                    t.weed[r] += np.add.reduceat((band == weed_class).sum(0, dtype=np.int64), starts)
                y = end
    return t


def field_row(t: Tally, classes: list[str], ground: Ground, settings: SpraySettings, shape: tuple[int, int]
              ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Summary fields of the field, its weed cover per cell (percent of the cell's in-field pixels) and spray
    decisions per cell (0/1)."""
    h, w = shape
    field = int(t.counts[:NODATA].sum())
    row: dict = {"width": w, "height": h}
    row.update({f"{name}_pct": round(100.0 * t.counts[i] / max(field, 1), 3) for i, name in enumerate(classes)})
    cover = np.divide(100.0 * t.weed, t.inside, out=np.zeros(t.weed.shape), where=t.inside > 0)
    spray = ((t.weed > 0) & (cover >= settings.threshold_pct)).astype(np.uint8)
    if "weed" not in classes:
        return row, cover, spray
    sprayed_px = int(t.inside[spray > 0].sum())
    sprayed_pct = round(100.0 * sprayed_px / max(field, 1), 3)
    row.update(weed_pixels=int(t.counts[classes.index("weed")]), weed_cells=int((t.weed > 0).sum()),
               max_cell_weed_pct=round(float(cover.max(initial=0.0)), 3),
               gsd_cm=None if ground.gsd_cm is None else round(ground.gsd_cm, 4), gsd_source=ground.source,
               cell_px=t.cell, cells=int((t.inside > 0).sum()), spray_cells=int(spray.sum()), sprayed_px=sprayed_px,
               sprayed_pct=sprayed_pct, herbicide_saving_pct_est=round(100.0 - sprayed_pct, 3))
    m2 = ground.pixel_m2()
    if m2 is not None:
        row.update(area_m2=round(field * m2, 4), cell_m=round(t.cell * ground.gsd_cm / 100.0, 4),
                   sprayed_m2=round(sprayed_px * m2, 4))
        for i, name in enumerate(classes):
            if name in area_classes(classes):
                row[f"{name}_m2"] = round(int(t.counts[i]) * m2, 4)
                row[f"{name}_m2_per_ha"] = round(10_000.0 * int(t.counts[i]) / max(field, 1), 2)
    return row, cover, spray


def write_grid_csv(path: Path, t: Tally, cover: np.ndarray, spray: np.ndarray, shape: tuple[int, int]) -> None:
    """The weed grid of the cells inside the field (row, col, pixel bounds, weed_pct, spray), written atomically."""
    h, w = shape
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["row", "col", "x0", "y0", "x1", "y1", "weed_pct", "spray"])
        c = t.cell
        for r, col in zip(*np.nonzero(t.inside)):
            writer.writerow([r, col, col * c, r * c, min(w, (col + 1) * c), min(h, (r + 1) * c),
                             round(float(cover[r, col]), 3), int(spray[r, col])])
    os.replace(tmp, path)


def write_spray_maps(base: Path, image: str, t: Tally, spray: np.ndarray, ground: Ground, row: dict,
                     shape: tuple[int, int], settings: SpraySettings) -> Path:
    """BASE.spray.geojson (the zones to spray; WGS 84 with a georeference, else pixels) and, georeferenced,
    BASE.spray.gpkg and BASE.spray.shp (spray and no-spray zones in the raster's CRS); returns the GeoJSON."""
    h, w = shape
    georef, m2 = ground.georef, ground.pixel_m2()
    zones = vector.prescription_zones(spray, t.cell, w, h, georef, m2, inside=t.inside > 0)
    features = [{"type": "Feature", "geometry": vector.geojson_geometry(p, georef),
                 "properties": {"image": image, "kind": "spray_zone", **attrs}} for p, attrs in zones if attrs["spray"]]
    doc = {"type": "FeatureCollection", "name": f"{image} spray zones",
           "weedseg": {"image": image, "coordinates": "pixels" if georef is None else "lonlat",
                       "gsd_cm": ground.gsd_cm, "gsd_source": ground.source, "cell_px": t.cell,
                       "spray_threshold_pct": settings.threshold_pct,
                       **{k: row[k] for k in ("cells", "spray_cells", "sprayed_pct", "herbicide_saving_pct_est")},
                       "herbicide_saving_note": SAVING_NOTE},
           "features": features}
    path = base.with_name(base.name + ".spray.geojson")
    atomic.atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())
    if georef is not None:
        for suffix in (".gpkg", ".shp"):
            vector.write_prescription(base.with_name(base.name + ".spray" + suffix), zones, georef)
    return path


def write_overlay(src: Path, mask_path: Path, dest: Path, bands: tuple[int, int, int], stretch: Stretch,
                  info: ModelInfo) -> None:
    """The orthomosaic with its classes tinted (nodata left as it is), as a JPEG-compressed COG, strip by strip."""
    partial = dest.with_name(f".{dest.name}.strips.tif")
    with quiet(), rasterio.open(src) as ds, rasterio.open(mask_path) as masks:
        profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=3, dtype="uint8", tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", BIGTIFF="IF_SAFER",
                       crs=ds.crs, transform=ds.transform, photometric="RGB")
        with rasterio.open(partial, "w", **profile) as out:
            for y0 in range(0, ds.height, BLOCK):
                win = Window(0, y0, ds.width, min(BLOCK, ds.height - y0))
                rgb = stretch.apply(ds.read(bands, window=win))
                mask = masks.read(1, window=win)
                picture = pictures.overlay(rgb, mask, info.colors, background=info.background)
                picture[mask == NODATA] = rgb[mask == NODATA]
                out.write(picture.transpose(2, 0, 1), window=win)
    try:
        tmp = dest.with_name(f".{dest.name}.part")
        rasterio.shutil.copy(partial, tmp, driver="COG", COMPRESS="JPEG", QUALITY=85, BLOCKSIZE=BLOCK,
                             OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER")
        os.replace(tmp, dest)
    finally:
        partial.unlink(missing_ok=True)


def field_outputs(base: Path, image: str, mask_path: Path, classes: list[str], ground: Ground,
                  settings: SpraySettings, grid_cell: int, outputs: tuple[str, ...], facts: dict) -> dict:
    """Count the mask, write the grid, spray and prescription maps (with "grid" in `outputs`) and BASE.field.json;
    returns the summary fields. `facts`: what segmenting recorded (scale, bands, stretch, unreadable windows)."""
    with quiet(), rasterio.open(mask_path) as ds:
        shape = (ds.height, ds.width)
    cell = cell_pixels(ground, settings, grid_cell, shape, MAX_FIELD_CELLS)
    if settings.min_patch:
        log.warning("%s: --min-patch is not applied to orthomosaics (patches are not traced over a whole field)",
                    image)
    t = tally(mask_path, classes.index("weed") if "weed" in classes else None, cell)
    row, cover, spray = field_row(t, classes, ground, settings, shape)
    if "grid" in outputs and "weed" in classes:
        write_grid_csv(base.with_name(base.name + ".grid.csv"), t, cover, spray, shape)
        write_spray_maps(base, image, t, spray, ground, row, shape, settings)
    total = shape[0] * shape[1]
    summary = {"image": image, "nodata_pct": round(100.0 * int(t.counts[NODATA]) / total, 3), **facts, **row}
    if facts.get("bad_windows"):
        row["error"] = (f"{len(facts['bad_windows'])} window(s) could not be read and are nodata: "
                        f"{facts['bad_windows'][0]}")
    atomic.atomic_write(base.with_name(base.name + ".field.json"), json.dumps(summary, indent=1).encode())
    return row


class OrthoRoute:
    """`Predictor.routes` entry for orthomosaics: a GeoTIFF over the photo limit (or any, with --stream) is streamed
    (`segment_ortho`), its whole-field outputs made from the mask; one whose mask and NAME.field.json were made with
    the same options gets its outputs made again from the mask without segmenting."""

    def __init__(self, seg: Segmenter, options: PredictOptions) -> None:
        self.seg, self.opt = seg, options

    def __call__(self, job: Job) -> Callable[[Job], dict] | None:
        if job.mask.suffix != ".tif" or not is_ortho(job.path, self.opt.ortho):
            return None
        return self.handle

    def handle(self, job: Job) -> dict:
        require_geo(f"{job.name} is an orthomosaic: streaming it")
        with gdal_env():  # GDAL's block cache would otherwise grow to 5 % of the machine's memory
            return self.segment_and_map(job)

    def segment_and_map(self, job: Job) -> dict:
        o = self.opt
        base = job.grid.with_name(job.grid.name.removesuffix(".grid.csv"))
        options = {"ortho": asdict(o.ortho), "tile": o.tile, "overlap": o.overlap, "model": str(self.seg.path)}
        facts = self.recorded(base, job, options)
        status = "done before" if facts else "predicted"
        if facts is None:
            if o.overwrite:
                shutil.rmtree(job.mask.with_name(job.mask.name + ".partial"), ignore_errors=True)
            made = segment_ortho(job.path, job.mask, self.seg, o.ground, o.ortho, o.tile, o.overlap, ORTHO_BATCH)
            ground = made.pop("ground")
            facts = {**made, "options": options}
        else:
            ground = describe_raster(job.path, o.ground)
        if "overlay" in o.outputs and (status == "predicted" or not job.overlay.is_file()):
            write_overlay(job.path, job.mask, job.overlay.with_suffix(".tif"), tuple(facts["bands"]),
                          Stretch(**facts["stretch"]), self.seg.info)
        row = field_outputs(base, job.name, job.mask, self.seg.info.classes, ground, o.spray, o.grid_cell,
                            o.outputs, facts)
        return {**row, "status": status}

    def recorded(self, base: Path, job: Job, options: dict) -> dict | None:
        """What segmenting recorded in BASE.field.json, when its mask is there and was made with `options`."""
        if self.opt.overwrite or not job.mask.is_file():
            return None
        try:
            facts = json.loads(base.with_name(base.name + ".field.json").read_text())
        except (OSError, ValueError):
            return None
        return facts if facts.get("options") == options else None
