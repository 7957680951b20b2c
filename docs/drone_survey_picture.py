"""Make docs/drone-survey.jpg: the spray map over the orthomosaic, as `weedseg predict` makes them.

A small georeferenced orthomosaic (UTM 33N, 1 cm pixels) is tiled from 3 x 2 peanut test photos, streamed
through `weedseg predict --stream` with 0.5 m cells, and the prescription map it writes (the GeoPackage, read
back with pyogrio) is drawn over the overlay it writes: spray zones outlined in yellow, no-spray zones dimmed.

    .venv/bin/python docs/drone_survey_picture.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine

from weedseg.cli import main
from weedseg.data.io import read_rgb
from weedseg.data.locate import find_dataset_root

PHOTOS = ("0184", "0360", "0001", "0212", "0097", "0290")
HERE = Path(__file__).parent


def make_ortho(path: Path) -> None:
    photos = [read_rgb(find_dataset_root("peanut") / "images" / f"{p}.jpg") for p in PHOTOS]
    mosaic = np.concatenate([np.concatenate(photos[:3], axis=1), np.concatenate(photos[3:], axis=1)], axis=0)
    h, w = mosaic.shape[:2]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(0.01, 0, 500_000.0, 0, -0.01, 4_100_000.0), tiled=True, compress="deflate",
                       photometric="RGB") as ds:
        ds.write(mosaic.transpose(2, 0, 1))


def picture(out: Path, dest: Path) -> None:
    with rasterio.open(out / "field.overlay.tif") as ds:
        overlay = ds.read().transpose(1, 2, 0).copy()
        inverse = ~ds.transform
    _, _, geometry, fields = pyogrio.raw.read(out / "field.spray.gpkg")
    shaded = overlay.copy()
    for wkb, spray in zip(geometry, fields[0]):
        for part in shapely.get_parts(shapely.from_wkb(wkb)):
            rings = [part.exterior, *part.interiors]
            pts = [np.array([inverse * xy for xy in ring.coords], np.int32) for ring in rings]
            if spray:
                cv2.polylines(overlay, pts, True, (255, 214, 0), 6)
            else:
                cv2.fillPoly(shaded, pts, (255, 255, 255))
    drawn = cv2.addWeighted(shaded, 0.35, overlay, 0.65, 0)
    small = cv2.resize(drawn, (drawn.shape[1] // 2, drawn.shape[0] // 2), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(dest), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ortho"
        folder.mkdir()
        make_ortho(folder / "field.tif")
        assert main(["predict", str(folder), "--out", f"{tmp}/out", "--stream", "--cell-m", "0.5"]) == 0
        print((Path(tmp) / "out" / "summary.csv").read_text())
        picture(Path(tmp) / "out", HERE / "drone-survey.jpg")
