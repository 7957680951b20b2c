"""The geo stack (weedseg.infer.geo, weedseg.infer.vector): CRSs and units from pyproj, broken georeferences,
cell and GSD limits, and prescription maps read back with pyogrio."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from test_spray import CLASSES, E0, N0, SCALE, geokeys, hand_mask, write_geotiff

from weedseg import WeedsegError
from weedseg.infer import spray
from weedseg.infer.geo import Ground, GroundOptions, describe_ground
from weedseg.infer.spray import SpraySettings, cell_pixels, plan_spray, write_prescription_maps
from weedseg.infer.vector import patch_polygons, shapefile_zip

RGB = np.zeros((100, 200, 3), np.uint8)


@pytest.mark.parametrize("epsg", [28355, 2154, 27700])  # GDA94 / MGA 55, Lambert-93, British National Grid
def test_any_projected_epsg_gets_its_units_without_a_units_key(tmp_path, epsg):
    ground = describe_ground(write_geotiff(tmp_path / "g.tif", RGB, geokeys((1024, 1), (3072, epsg)),
                                           origin=(400_000.0, 300_000.0)), GroundOptions())
    assert (ground.source, ground.gsd_cm, ground.georef.epsg) == ("geotiff", pytest.approx(100 * SCALE), epsg)


@pytest.mark.parametrize("scale, tie, said", [
    ((math.nan, math.nan, 0.0), None, "pixel scale (nan, nan)"),
    ((0.0, 0.0, 0.0), None, "pixel scale (0, 0)"),
    ((SCALE, SCALE, 0.0), (0.0, 0.0, 0.0), "tie points tag holds 3 numbers"),
])
def test_a_broken_georeference_gives_pixel_outputs_and_one_line(tmp_path, scale, tie, said):
    from PIL import Image, TiffImagePlugin, TiffTags

    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    tags = {34735: (geokeys((1024, 1), (3072, 32633)), TiffTags.SHORT), 33550: (scale, TiffTags.DOUBLE),
            33922: (tie or (0.0, 0.0, 0.0, E0, N0, 0.0), TiffTags.DOUBLE)}
    for tag, (value, kind) in tags.items():
        ifd[tag], ifd.tagtype[tag] = value, kind
    Image.fromarray(RGB).save(tmp_path / "bad.tif", tiffinfo=ifd)
    for source in (tmp_path / "bad.tif", (tmp_path / "bad.tif").read_bytes()):  # predict, the page
        ground = describe_ground(source, GroundOptions())
        assert (ground.gsd_cm, ground.georef) == (None, None) and said in ground.note and "\n" not in ground.note
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(), 20)
    assert spray.spray_geojson(plan, "bad.tif")["weedseg"]["coordinates"] == "pixels"


def test_tiny_cells_are_raised_once_and_impossible_gsds_refused(caplog):
    ground = Ground(1000.0, "geotiff")  # 10 m pixels: 0.5 m cells would be a twentieth of a pixel
    spray._say_raised.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert cell_pixels(ground, SpraySettings(cell_m=0.5), 256, (1000, 1000)) == spray.MIN_CELL_PX
        assert cell_pixels(ground, SpraySettings(cell_m=0.5), 256, (1000, 1000)) == spray.MIN_CELL_PX
    assert caplog.text.count("too small") == 1
    assert cell_pixels(Ground(None, "none"), SpraySettings(), 1, (6000, 8000)) == 14  # at most 250,000 cells
    for gsd in (1e-300, math.inf, 0.0, -1.0):
        with pytest.raises(WeedsegError, match="--gsd"):
            GroundOptions(gsd_cm=gsd)


def test_patches_are_valid_polygons_with_holes():
    weed = np.zeros((40, 40), np.uint8)
    weed[5:25, 5:25] = 1
    weed[10:15, 10:15] = 0  # a hole
    weed[25, 25] = weed[26, 26] = 1  # diagonal pixels touch the patch's corner (8-connected)
    polygons = patch_polygons(weed, None)
    assert all(p.is_valid for p in polygons) and sum(p.area for p in polygons) == weed.sum()
    parts = [part for p in polygons for part in shapely.get_parts(p)]
    assert sorted(len(part.interiors) for part in parts) == [0, 0, 1]  # the square with its hole, two corner pixels


def test_prescription_maps_read_back_in_the_raster_crs(tmp_path):
    ground = describe_ground(write_geotiff(tmp_path / "ortho.tif", RGB, geokeys((1024, 1), (3072, 32633))),
                             GroundOptions())
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(threshold_pct=1.0, cell_m=1.0), 256)
    paths = write_prescription_maps(tmp_path / "ortho.spray", plan)
    assert [p.name for p in paths] == ["ortho.spray.gpkg", "ortho.spray.shp"]
    for path in paths:
        meta = pyogrio.read_info(path)
        assert pyproj.CRS(meta["crs"]).to_epsg() == 32633
        _, _, geometry, fields = pyogrio.raw.read(path)
        polygons = [shapely.from_wkb(g) for g in geometry]
        spray_zone = shapely.union_all([p for p, s in zip(polygons, fields[0]) if s == 1])
        assert all(p.is_valid for p in polygons)
        assert sum(p.area for p in polygons) == pytest.approx(200 * 100 * SCALE ** 2)  # the whole image, once
        assert spray_zone.area == pytest.approx(plan.row()["sprayed_m2"])
        # the top-left sprayed cell (row 0, col 1) is 1 m east of the corner: known pixels within one pixel
        assert spray_zone.contains(shapely.Point(E0 + 1 + SCALE / 2, N0 - SCALE / 2))
        assert not spray_zone.contains(shapely.Point(E0 + 1 - SCALE / 2, N0 - SCALE / 2))
    assert len(shapefile_zip(paths[1])) > 100


def test_the_page_prescription_download_is_a_zipped_shapefile(tmp_path):
    import io
    import zipfile

    ground = describe_ground(write_geotiff(tmp_path / "ortho.tif", RGB, geokeys((1024, 1), (3072, 32633))),
                             GroundOptions())
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(cell_m=1.0), 256)
    archive = zipfile.ZipFile(io.BytesIO(spray.shapefile_zip_bytes(plan, "ortho")))
    assert {".shp", ".shx", ".dbf", ".prj"} <= {n[n.rindex("."):] for n in archive.namelist()}
    archive.extractall(tmp_path / "zip")
    assert pyogrio.read_info(tmp_path / "zip" / "ortho.spray.shp")["features"] >= 2  # spray and no-spray zones
