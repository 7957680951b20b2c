"""Where an image lies on the ground: its ground sampling distance (GSD) and, for GeoTIFFs, its map transform.

The GSD (centimetres of ground per image pixel) comes, in this order, from `--gsd`, from a
GeoTIFF's pixel scale when its CRS is projected in metres (or feet), or from the photo's EXIF
focal length with the flying height `--altitude` and the camera's sensor width. Map coordinates
stay in the GeoTIFF's own CRS: nothing is reprojected.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from .. import WeedsegError
from . import outputs

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # what EXIF FocalLengthIn35mmFilm is scaled to
EXIF_IFD, FOCAL_LENGTH, FOCAL_35MM = 0x8769, 0x920A, 0xA405
# GeoKeys (GeoTIFF 1.0): model type, raster type, projected CRS, projected linear units
GT_MODEL_TYPE, GT_RASTER_TYPE, PROJECTED_CRS, PROJ_LINEAR_UNITS = 1024, 1025, 3072, 3076
GEOGRAPHIC_CRS = 2048
MODEL_TYPE_GEOGRAPHIC, RASTER_PIXEL_IS_POINT = 2, 2
METRES_PER_UNIT = {9001: 1.0, 9002: 0.3048, 9003: 1200 / 3937}  # EPSG units: metre, foot, US survey foot
WEB_MERCATOR = {3857, 3785, 900913}  # map metres are not ground metres away from the equator


@dataclass(frozen=True)
class GroundOptions:
    """How to find the ground sampling distance; see `weedseg predict --help`."""

    gsd_cm: float | None = None  # --gsd: centimetres per pixel, used for every image
    altitude_m: float | None = None  # --altitude: camera height above the ground
    sensor_width_mm: float | None = None  # --sensor-width-mm: the long side of the camera's sensor

    def __post_init__(self) -> None:
        for name, value in (("--gsd", self.gsd_cm), ("--altitude", self.altitude_m),
                            ("--sensor-width-mm", self.sensor_width_mm)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise WeedsegError(f"{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class GeoRef:
    """A GeoTIFF's affine map transform: x_map = a*col + b*row + c, y_map = d*col + e*row + f, with
    (col, row) measured from the top-left corner of the top-left pixel; its CRS as an EPSG code."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    epsg: int | None
    metres_per_unit: float | None  # None: degrees, or units not known

    def to_map(self, col: float, row: float) -> tuple[float, float]:
        """Map coordinates of a point given in pixel-corner coordinates."""
        return (self.a * col + self.b * row + self.c, self.d * col + self.e * row + self.f)

    def pixel_area(self) -> float:
        """Area of one pixel in squared map units."""
        return abs(self.a * self.e - self.b * self.d)

    def crs_name(self) -> str | None:
        """The CRS as an OGC URN (what GeoJSON's `crs` member and GDAL understand), if the EPSG code is known."""
        return f"urn:ogc:def:crs:EPSG::{self.epsg}" if self.epsg else None


@dataclass(frozen=True)
class Ground:
    """What is known about an image's footprint on the ground."""

    gsd_cm: float | None  # centimetres per pixel; None: areas stay in pixels
    source: str  # "--gsd", "geotiff", "exif" or "none"
    georef: GeoRef | None = None
    note: str = ""  # why there is no GSD, or how it was worked out

    def pixel_m2(self) -> float | None:
        """Ground area of one pixel in square metres."""
        return None if self.gsd_cm is None else (self.gsd_cm / 100.0) ** 2

    def given(self, gsd_cm: float | None) -> Ground:
        """This ground with a GSD the user gave, which wins over the file's (as `--gsd` does); unchanged for None."""
        return self if gsd_cm is None else Ground(gsd_cm, "--gsd", self.georef)

    def describe(self) -> str:
        """Where the GSD came from, in words (for the log)."""
        if self.gsd_cm is None:
            return f"no ground sampling distance ({self.note}); areas in pixels"
        how = {"--gsd": "given with --gsd", "geotiff": "from the GeoTIFF pixel scale", "exif": f"from {self.note}"}
        return f"{self.gsd_cm:.3g} cm per pixel, {how[self.source]}"


def geo_keys(tags: outputs.GeoTags) -> dict[int, int]:
    """The GeoKeys stored in a GeoKeyDirectory tag itself (the short-valued ones): key -> value."""
    values = [int(v) for v in tags[34735][0]] if 34735 in tags else []
    entries = values[4: 4 + 4 * values[3]] if len(values) >= 4 else []
    return {key: value for key, location, _count, value in zip(*[iter(entries)] * 4) if location == 0}


def georef_from_tags(tags: outputs.GeoTags) -> GeoRef:
    """The affine transform and CRS of a GeoTIFF's tags (ModelTransformation, or pixel scale and tie point)."""
    keys = geo_keys(tags)
    if 34264 in tags:
        m = [float(v) for v in tags[34264][0]]
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    else:
        sx, sy = (float(v) for v in tags[33550][0][:2]) if 33550 in tags else (1.0, 1.0)
        i, j, _k, x, y = (float(v) for v in tags[33922][0][:5])
        a, b, c, d, e, f = sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy
    if keys.get(GT_RASTER_TYPE) == RASTER_PIXEL_IS_POINT:  # tie point at pixel centres: shift by half a pixel
        c, f = c - 0.5 * (a + b), f - 0.5 * (d + e)
    epsg = keys.get(PROJECTED_CRS) or keys.get(GEOGRAPHIC_CRS)
    epsg = epsg if epsg and epsg != 32767 else None  # 32767: user-defined
    return GeoRef(a, b, c, d, e, f, epsg, metres_per_unit(keys))


def metres_per_unit(keys: dict[int, int]) -> float | None:
    """Metres per map unit of a projected CRS: from its linear-units key, or for UTM zones (always metres)."""
    if keys.get(GT_MODEL_TYPE) == MODEL_TYPE_GEOGRAPHIC or keys.get(PROJECTED_CRS) in WEB_MERCATOR:
        return None
    if PROJ_LINEAR_UNITS in keys:
        return METRES_PER_UNIT.get(keys[PROJ_LINEAR_UNITS])
    code = keys.get(PROJECTED_CRS, 0)
    utm = 32601 <= code <= 32660 or 32701 <= code <= 32760 or 25828 <= code <= 25838 or 26901 <= code <= 26923
    return 1.0 if utm else None  # WGS 84, ETRS89 and NAD83 UTM zones


def exif_gsd_cm(im: Image.Image, options: GroundOptions) -> tuple[float | None, str]:
    """GSD from EXIF focal length and the flying height: (cm per pixel, how), or (None, why not)."""
    exif = im.getexif().get_ifd(EXIF_IFD)
    focal, focal35 = exif.get(FOCAL_LENGTH), exif.get(FOCAL_35MM)
    width, height = im.size
    altitude_cm = options.altitude_m * 100.0  # type: ignore[operator]  # the caller checked it is set
    if focal and options.sensor_width_mm:
        return (options.sensor_width_mm * altitude_cm / (float(focal) * max(width, height)),
                f"EXIF focal length {float(focal):g} mm, sensor width {options.sensor_width_mm:g} mm, "
                f"altitude {options.altitude_m:g} m")
    if focal35:
        return (FULL_FRAME_DIAGONAL_MM * altitude_cm / (float(focal35) * math.hypot(width, height)),
                f"EXIF 35 mm equivalent focal length {int(focal35)} mm, altitude {options.altitude_m:g} m")
    if focal:
        return None, "the photo gives its focal length but not its 35 mm equivalent: pass --sensor-width-mm"
    return None, "the photo has no EXIF focal length: pass --gsd"


def describe_ground(source: str | Path | BinaryIO | bytes, options: GroundOptions) -> Ground:
    """The GSD and map transform of an image file (only its header is read)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return ground_of(im, options)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return _unreadable(options)


def _unreadable(options: GroundOptions) -> Ground:
    return Ground(options.gsd_cm, "--gsd" if options.gsd_cm else "none", None, "the image header cannot be read")


def ground_of(im: Image.Image, options: GroundOptions) -> Ground:
    """`describe_ground` of an image already open, from the header read then (GeoTIFF tags, EXIF): predict's
    readers open each file once for its size, its ground and its pixels."""
    try:
        tags = outputs.geo_tags(im)
        georef = georef_from_tags(tags) if tags else None
        exif_gsd, how = exif_gsd_cm(im, options) if options.altitude_m else (None, "")
    except (OSError, ValueError, SyntaxError):
        return _unreadable(options)
    if options.gsd_cm:
        return Ground(None, "none", georef).given(options.gsd_cm)
    if georef and georef.metres_per_unit:
        return Ground(100.0 * georef.metres_per_unit * math.sqrt(georef.pixel_area()), "geotiff", georef)
    if exif_gsd:
        return Ground(exif_gsd, "exif", georef, how)
    if georef:
        how = "the GeoTIFF's CRS is not projected in metres or feet: pass --gsd"
    return Ground(None, "none", georef, how or "no --gsd, GeoTIFF pixel scale, or --altitude with an EXIF focal length")


@dataclass(frozen=True)
class ResolutionCheck:
    """The GSD an image is segmented at, against the GSD the model was trained at."""

    image_gsd_cm: float  # after resizing to the model's input
    model_gsd_cm: float
    suggested_short_side: int  # --short-side that would match the model

    @property
    def far(self) -> bool:
        """More than 1.5 x finer or coarser than the model saw in training."""
        return not 1 / 1.5 <= self.image_gsd_cm / self.model_gsd_cm <= 1.5


def check_resolution(ground: Ground, model_gsd_cm: float | None, image_hw: tuple[int, int],
                     short_side: int) -> ResolutionCheck | None:
    """Compare the GSD at inference (after resizing to `short_side`, 0 = native) with the model's; None
    unless both are known."""
    if ground.gsd_cm is None or not model_gsd_cm:
        return None
    native = min(image_hw)
    scale = native / short_side if short_side else 1.0
    return ResolutionCheck(ground.gsd_cm * scale, model_gsd_cm, max(1, round(native * ground.gsd_cm / model_gsd_cm)))
