"""Spray maps and weed patches as GIS vector data (the `[geo]` extra: rasterio, shapely, pyproj, pyogrio).

Polygons are traced on pixel edges with rasterio.features.shapes, so they are valid, keep their holes
and cover exactly the pixels they stand for. GeoJSON follows RFC 7946: WGS 84 longitude/latitude, no
`crs` member, exterior rings counter-clockwise. Shapefile and GeoPackage prescription maps stay in the
raster's own CRS, where sprayer terminals and farm-management systems expect them.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .geo import WGS84, GeoRef, require_geo

try:  # the [geo] extra
    import pyogrio.raw
    import pyproj
    import rasterio.features
    import shapely
    import shapely.affinity
    from affine import Affine
    from shapely.geometry import MultiPolygon, Polygon, mapping, shape
    from shapely.geometry.polygon import orient
except ImportError:
    pass

logging.getLogger("pyogrio").setLevel(logging.WARNING)  # it logs "Created N records" for every file written
LONLAT_DIGITS = 8  # about 1 mm: finer than any drone pixel
PRESCRIPTION_DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def affine_of(georef: GeoRef | None, scale: float = 1.0) -> Affine:
    """The raster's transform for cells of `scale` pixels (the identity, pixel coordinates, without a georeference)."""
    base = Affine.identity() if georef is None else Affine(*georef.transform)
    return base @ Affine.scale(scale)


def region_polygons(values: np.ndarray, georef: GeoRef | None, scale: float = 1.0,
                    mask: np.ndarray | None = None) -> list[tuple[Polygon, int]]:
    """(polygon, value) for every 8-connected region of equal value in a uint8 raster (where `mask` is true):
    map coordinates with a georeference, else pixel coordinates; `scale`: raster pixels per value."""
    require_geo("polygons")
    found = rasterio.features.shapes(values, mask=mask, connectivity=8, transform=affine_of(georef, scale))
    return [(valid(shape(geom)), int(value)) for geom, value in found]


def valid(polygon: Polygon) -> Polygon | MultiPolygon:
    """The polygon itself, or where its ring touches itself (pixels meeting at a corner), the valid MultiPolygon
    of its parts."""
    if polygon.is_valid:
        return polygon
    parts = shapely.get_parts(shapely.make_valid(polygon))
    return MultiPolygon([p for part in parts for p in shapely.get_parts(part) if isinstance(p, Polygon)])


def patch_polygons(weed: np.ndarray, georef: GeoRef | None) -> list[Polygon]:
    """One valid polygon (with its holes) per 8-connected weed patch of a 0/1 mask."""
    weed = weed.astype(np.uint8)
    return [p for p, _ in region_polygons(weed, georef, mask=weed.astype(bool))]


def to_map(polygon: Polygon, georef: GeoRef | None) -> Polygon:
    """A polygon in pixel coordinates in the raster's map coordinates (unchanged without a georeference)."""
    if georef is None:
        return polygon
    return shapely.affinity.affine_transform(polygon, [georef.a, georef.b, georef.d, georef.e, georef.c, georef.f])


def box_geometry(x0: float, y0: float, x1: float, y1: float, georef: GeoRef | None) -> dict:
    """The GeoJSON geometry of a pixel box (a grid cell)."""
    return geojson_geometry(to_map(shapely.box(x0, y0, x1, y1), georef), georef)


def patch_features(weed: np.ndarray, georef: GeoRef | None) -> list[tuple[dict, int]]:
    """(GeoJSON geometry, pixels) of every 8-connected weed patch of a 0/1 mask, holes kept."""
    return [(geojson_geometry(to_map(p, georef), georef), round(p.area)) for p in patch_polygons(weed, None)]


def prescription_zones(spray: np.ndarray, cell_px: int, width: int, height: int, georef: GeoRef | None,
                       pixel_m2: float | None, inside: np.ndarray | None = None) -> list[tuple[Polygon, dict]]:
    """Spray and no-spray zones of a grid of spray decisions (rows x cols, 0/1; only the cells `inside` the field
    when given): the cells of each decision merged where they touch, cut to the raster, in map coordinates (pixels
    without a georeference), with `spray` (0/1) and their area (m² with a GSD, else pixels)."""
    footprint = shapely.box(0, 0, width, height)
    zones = []
    for polygon, value in region_polygons(spray.astype(np.uint8), None, cell_px, inside):
        polygon = polygon.intersection(footprint)
        if polygon.is_empty:
            continue
        area = {"area_m2": round(polygon.area * pixel_m2, 3)} if pixel_m2 else {"area_px": round(polygon.area)}
        zones.append((to_map(polygon, georef), {"spray": value, **area}))
    return zones


def to_lonlat(polygon: Polygon, georef: GeoRef) -> Polygon:
    """A polygon in map coordinates as WGS 84 longitude/latitude to LONLAT_DIGITS decimals, exterior
    counter-clockwise and holes clockwise (RFC 7946)."""
    transformer = pyproj.Transformer.from_crs(georef.crs, WGS84, always_xy=True)
    lonlat = shapely.transform(polygon, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    return orient(shapely.set_precision(lonlat, 10.0 ** -LONLAT_DIGITS), 1.0)


def geojson_geometry(polygon: Polygon, georef: GeoRef | None) -> dict:
    """A GeoJSON geometry: WGS 84 longitude/latitude with a georeference, else pixel coordinates."""
    if georef is None:
        return mapping(orient(polygon, 1.0))
    return mapping(to_lonlat(polygon, georef))


def write_prescription(path: Path, zones: list[tuple[Polygon, dict]], georef: GeoRef) -> None:
    """Write zones (polygon in map coordinates, attributes) as a GeoPackage or Shapefile (by `path`'s suffix) in
    the raster's CRS, through a temporary name renamed into place."""
    require_geo("prescription maps")
    driver = PRESCRIPTION_DRIVERS[path.suffix]
    fields = list(zones[0][1]) if zones else ["spray"]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        part = Path(tmp) / path.name
        pyogrio.raw.write(part, np.array([shapely.to_wkb(p) for p, _ in zones], dtype=object),
                          [np.array([z[1][f] for z in zones]) for f in fields], fields, layer=path.stem,
                          driver=driver, geometry_type="MultiPolygon", promote_to_multi=True, crs=georef.crs_wkt)
        for made in sorted(Path(tmp).iterdir()):
            made.replace(path.with_suffix(made.suffix))


def shapefile_zip(path: Path) -> bytes:
    """The parts of the Shapefile at `path` zipped together (how web pages and e-mail carry one)."""
    buf = tempfile.SpooledTemporaryFile()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for suffix in SHAPEFILE_PARTS:
            if path.with_suffix(suffix).is_file():
                zf.write(path.with_suffix(suffix), path.with_suffix(suffix).name)
    buf.seek(0)
    return buf.read()
