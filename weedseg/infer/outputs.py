"""GeoTIFF tags of the inputs `weedseg predict` reads and of the masks it writes for them.

(Atomic writes are in weedseg.infer.atomic, masks and overlays in pictures, grid and summary tables in tables.)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin

# GeoTIFF tags: pixel scale, tie points, transformation, GeoKey directory, double and ASCII params
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
GeoTags = dict[int, tuple[object, int]]  # tag -> (value, TIFF type)


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
    return geo if (33922 in geo or 34264 in geo) else None


def geotiff_bytes(mask: np.ndarray, geo: GeoTags) -> bytes:
    """A deflate-compressed single-band TIFF of `mask` carrying the input's georeferencing tags."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (value, kind) in geo.items():
        ifd[tag] = value
        ifd.tagtype[tag] = kind
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="TIFF", tiffinfo=ifd, compression="tiff_adobe_deflate")
    return buf.getvalue()
