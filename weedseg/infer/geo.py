"""Where an image lies on the ground: its ground sampling distance (GSD) and, for GeoTIFFs, its map transform and CRS.

The GSD (centimetres of ground per image pixel) comes, in this order, from `--gsd`, from a GeoTIFF's
pixel size on the ground, or from the photo's EXIF focal length with the flying height `--altitude`
and the camera's sensor width. A GeoTIFF's transform and CRS are read with rasterio and pyproj (the
optional `[geo]` extra), so every EPSG code and WKT CRS GDAL knows gets its units: in a projected CRS
the pixel size is measured in it, in degrees (or Web Mercator, whose metres shrink away from the
equator) on the ellipsoid at the image centre. Without `[geo]`, GeoTIFFs are segmented as photos with
areas in pixels, and the log says what to install. This module also reads and writes the GeoTIFF
tags that a photo-sized GeoTIFF's mask carries over from its input.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, TiffImagePlugin

from .. import WeedsegError

try:  # the [geo] extra
    import pyproj
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.io import MemoryFile

    HAVE_GEO = True
except ImportError:
    HAVE_GEO = False

GEO_INSTALL = 'pip install "weedseg[geo]"'
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # what EXIF FocalLengthIn35mmFilm is scaled to
EXIF_IFD, FOCAL_LENGTH, FOCAL_35MM = 0x8769, 0x920A, 0xA405
# GeoTIFF tags: pixel scale, tie points, transformation, GeoKey directory, double and ASCII params
PIXEL_SCALE, TIE_POINTS, TRANSFORMATION = 33550, 33922, 34264
GEO_TAGS = (PIXEL_SCALE, TIE_POINTS, TRANSFORMATION, 34735, 34736, 34737)
GeoTags = dict[int, tuple[object, int]]  # tag -> (value, TIFF type)
WGS84 = "EPSG:4326"
MIN_GSD_CM, MAX_GSD_CM = 1e-3, 1e5  # 10 micrometres to 1 km per pixel: anything else is a typo
PSEUDO_MERCATOR = "Popular Visualisation Pseudo Mercator"  # map metres are not ground metres away from the equator


def require_geo(what: str) -> None:
    """WeedsegError saying what to install, unless the [geo] extra is installed."""
    if not HAVE_GEO:
        raise WeedsegError(f"{what} needs the geo extra: {GEO_INSTALL}")


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
        if self.gsd_cm is not None and not MIN_GSD_CM <= self.gsd_cm <= MAX_GSD_CM:
            raise WeedsegError(f"--gsd must be from {MIN_GSD_CM:g} to {MAX_GSD_CM:g} cm per pixel, got {self.gsd_cm:g}")


@dataclass(frozen=True)
class GeoRef:
    """A GeoTIFF's affine map transform: x_map = a*col + b*row + c, y_map = d*col + e*row + f, with
    (col, row) measured from the top-left corner of the top-left pixel; its CRS (WKT, and EPSG code where
    it has one) and the metres per map unit of a projected CRS (None: degrees, or Web Mercator)."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    crs_wkt: str
    epsg: int | None
    metres_per_unit: float | None

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """The transform in rasterio's (affine) order."""
        return (self.a, self.b, self.c, self.d, self.e, self.f)

    @property
    def crs(self) -> pyproj.CRS:
        return pyproj.CRS.from_wkt(self.crs_wkt)

    def to_map(self, col: float, row: float) -> tuple[float, float]:
        """Map coordinates of a point given in pixel-corner coordinates."""
        return (self.a * col + self.b * row + self.c, self.d * col + self.e * row + self.f)

    def pixel_area(self) -> float:
        """Area of one pixel in squared map units."""
        return abs(self.a * self.e - self.b * self.d)

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS 84 longitude and latitude of map coordinates."""
        return pyproj.Transformer.from_crs(self.crs, WGS84, always_xy=True).transform(x, y)

    def pixel_m2(self, width: int, height: int) -> float:
        """Ground area of one pixel in m²: in the CRS when it is projected in linear units, else on the
        ellipsoid, for the pixel at the image centre."""
        if self.metres_per_unit:
            return self.pixel_area() * self.metres_per_unit ** 2
        col, row = width // 2, height // 2
        corners = [self.to_map(col + dc, row + dr) for dc, dr in ((0, 0), (0, 1), (1, 1), (1, 0))]
        lon, lat = self.to_lonlat(np.array([p[0] for p in corners]), np.array([p[1] for p in corners]))
        area, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)
        return abs(area)


def crs_metres_per_unit(crs: pyproj.CRS) -> float | None:
    """Metres per unit of a CRS projected in linear units, from pyproj; None for degrees and Web Mercator."""
    if not crs.is_projected:
        return None
    operation = crs.coordinate_operation
    if operation is not None and operation.method_name == PSEUDO_MERCATOR:
        return None
    axis = crs.axis_info[0] if crs.axis_info else None
    return axis.unit_conversion_factor if axis is not None and axis.unit_conversion_factor > 0 else None


def tag_problem(tags: GeoTags) -> str | None:
    """Why a GeoTIFF's georeferencing tags cannot place it (a scale that is NaN or 0, tie points of the
    wrong length, a singular transformation), or None when they can."""
    def numbers(tag: int) -> list[float]:
        value = tags[tag][0]
        return [float(v) for v in (value if isinstance(value, tuple) else (value,))]

    if TRANSFORMATION in tags:
        m = numbers(TRANSFORMATION)
        if len(m) != 16 or not all(math.isfinite(v) for v in m) or m[0] * m[5] - m[1] * m[4] == 0:
            return "its ModelTransformation tag is not an invertible 4 x 4 matrix of finite numbers"
        return None
    tie = numbers(TIE_POINTS)
    if len(tie) < 6 or len(tie) % 6 or not all(math.isfinite(v) for v in tie):
        return f"its tie points tag holds {len(tie)} numbers, not 6 per tie point"
    scale = numbers(PIXEL_SCALE) if PIXEL_SCALE in tags else []
    if len(scale) < 2 or not all(math.isfinite(v) and v > 0 for v in scale[:2]):
        return f"its pixel scale ({', '.join(f'{v:g}' for v in scale[:2]) or 'none'}) is not two positive numbers"
    return None


def georef_of(ds: rasterio.io.DatasetReader, name: str) -> GeoRef:
    """The GeoRef of an open rasterio dataset; WeedsegError when it has no usable transform or CRS."""
    t = ds.transform
    if ds.crs is None or t.is_identity or not all(math.isfinite(v) for v in t[:6]) or t.determinant == 0:
        raise WeedsegError(f"{name} has no usable georeference (a map transform and a CRS)")
    try:
        crs = pyproj.CRS.from_wkt(ds.crs.to_wkt())
    except pyproj.exceptions.CRSError as exc:
        raise WeedsegError(f"{name}: its CRS is not one PROJ knows ({exc}); set a known CRS, e.g. with "
                           "gdal_edit.py -a_srs EPSG:CODE") from exc
    return GeoRef(t.a, t.b, t.c, t.d, t.e, t.f, crs.to_wkt(), crs.to_epsg(), crs_metres_per_unit(crs))


def open_raster(source: str | Path | bytes) -> rasterio.io.DatasetReader:
    """A file or encoded bytes opened with rasterio (warnings about missing georeference silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return MemoryFile(source).open() if isinstance(source, bytes) else rasterio.open(source)


def read_georef(source: str | Path | bytes, tags: GeoTags) -> tuple[GeoRef | None, str]:
    """(GeoRef, "") of a GeoTIFF given its tags (from `geo_tags`), or (None, why it has none: areas in pixels)."""
    problem = tag_problem(tags)
    if problem:
        return None, f"the GeoTIFF cannot be placed on the map: {problem}; outputs in pixels"
    if not HAVE_GEO:
        return None, f"GeoTIFF map coordinates and ground units need the geo extra ({GEO_INSTALL}); outputs in pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(source) as ds:
                return georef_of(ds, "the GeoTIFF"), ""
    except WeedsegError as exc:
        return None, f"{exc}; outputs in pixels"
    except RasterioIOError as exc:
        return None, f"the GeoTIFF's georeference cannot be read ({exc}); outputs in pixels"


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
        how = {"--gsd": "given with --gsd", "geotiff": f"from the GeoTIFF{self.note}", "exif": f"from {self.note}"}
        return f"{self.gsd_cm:.3g} cm per pixel, {how[self.source]}"


def georeferenced_ground(georef: GeoRef, width: int, height: int) -> Ground:
    """The ground of a georeferenced raster of width x height pixels: its GSD from the pixel's ground area."""
    how = "" if georef.metres_per_unit else " (pixel area on the ellipsoid at the image centre)"
    m2 = georef.pixel_m2(width, height)
    if not (math.isfinite(m2) and m2 > 0):  # e.g. degrees out of range
        return Ground(None, "none", georef, "the GeoTIFF's pixels have no area on the ground in its CRS: pass --gsd")
    return Ground(100.0 * math.sqrt(m2), "geotiff", georef, how)


def read_geo_tags(path: Path) -> GeoTags | None:
    """The georeferencing tags of a GeoTIFF, or None for any other image."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with Image.open(path) as im:
            return geo_tags(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # reading the pixels reports the problem


def geo_tags(im: Image.Image) -> GeoTags | None:
    """The georeferencing tags of an opened image, or None unless it is a GeoTIFF."""
    tags = getattr(im, "tag_v2", {})
    geo = {t: (tags[t], tags.tagtype[t]) for t in GEO_TAGS if t in tags}
    return geo if (TIE_POINTS in geo or TRANSFORMATION in geo) else None


def geotiff_bytes(mask: np.ndarray, geo: GeoTags) -> bytes:
    """A deflate-compressed single-band TIFF of `mask` carrying the input's georeferencing tags."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (value, kind) in geo.items():
        ifd[tag] = value
        ifd.tagtype[tag] = kind
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="TIFF", tiffinfo=ifd, compression="tiff_adobe_deflate")
    return buf.getvalue()


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
            return ground_of(im, options, source if isinstance(source, (bytes, str, Path)) else None)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return _unreadable(options)


def _unreadable(options: GroundOptions) -> Ground:
    return Ground(options.gsd_cm, "--gsd" if options.gsd_cm else "none", None, "the image header cannot be read")


def ground_of(im: Image.Image, options: GroundOptions, source: str | Path | bytes | None = None) -> Ground:
    """`describe_ground` of an image already open, from the header read then (GeoTIFF tags, EXIF): predict's
    readers open each file once for its size, its ground and its pixels. A GeoTIFF's transform and CRS are read
    from `source` (default: the file `im` was opened from)."""
    try:
        tags = geo_tags(im)
        exif_gsd, how = exif_gsd_cm(im, options) if options.altitude_m else (None, "")
    except (OSError, ValueError, SyntaxError):
        return _unreadable(options)
    georef = None
    if tags:
        georef, how = read_georef(source if source is not None else im.filename, tags)
    if options.gsd_cm:
        return Ground(None, "none", georef).given(options.gsd_cm)
    if georef:
        return georeferenced_ground(georef, *im.size)
    if exif_gsd:
        return Ground(exif_gsd, "exif", None, how)
    return Ground(None, "none", None, how or "no --gsd, GeoTIFF pixel scale, or --altitude with an EXIF focal length")


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
