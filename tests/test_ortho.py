"""Orthomosaics streamed window by window (weedseg.infer.ortho): the windows' mask is the whole image's, resume,
nodata, bands, 16-bit, unreadable windows and the COG written."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data.io import read_rgb
from weedseg.infer import ortho, pipeline
from weedseg.infer.geo import GroundOptions
from weedseg.infer.ortho import NODATA, OrthoOptions, segment_ortho
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.tiling import predict_mask

E0, N0, GSD = 500_000.0, 4_100_000.0, 0.01  # UTM 33N, 1 cm pixels
TILE, OVERLAP = 128, 32
TRANSFORM = Affine(GSD, 0.0, E0, 0.0, -GSD, N0)


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter(DEFAULT_MODEL, threads=1)


@pytest.fixture(scope="module")
def field(peanut_root) -> np.ndarray:
    """A 700 x 450 RGB field: two real peanut photos side by side, reduced."""
    import cv2

    photos = [cv2.resize(read_rgb(peanut_root / "images" / f"{i}.jpg"), (350, 450), interpolation=cv2.INTER_AREA)
              for i in ("0001", "0360")]
    return np.concatenate(photos, axis=1)


def write_raster(path, rgb: np.ndarray, **extra) -> rasterio.io.DatasetWriter:
    h, w = rgb.shape[:2]
    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype=rgb.dtype.name, crs="EPSG:32633",
                   transform=TRANSFORM, tiled=True, blockxsize=128, blockysize=128,
                   compress="deflate")
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(rgb.transpose(2, 0, 1))
    return path


def run(seg, path, tmp_path, **options):
    mask = tmp_path / "out" / f"{path.stem}.mask.tif"
    ortho_options = OrthoOptions(input_gsd_cm=100 * GSD, **options)  # native scale unless said
    info = segment_ortho(path, mask, seg, GroundOptions(), ortho_options, TILE, OVERLAP, 2, progress=False)
    with rasterio.open(mask) as ds:
        return ds.read(1), {**ds.profile, "crs": ds.crs, "overviews": ds.overviews(1),
                            "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}, info


def test_windows_make_the_whole_image_mask_and_a_cog(seg, field, tmp_path, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_MODEL_PX", 200)  # windows of two tiles across: several rows and columns
    path = write_raster(tmp_path / "field.tif", field)
    mask, ds, info = run(seg, path, tmp_path)
    whole = predict_mask(seg.model_input(field), seg.run, *field.shape[:2], TILE, OVERLAP, 2, seg.info.size_multiple)
    assert np.array_equal(mask, whole)
    assert (ds["crs"].to_epsg(), ds["transform"], ds["nodata"]) == (32633, TRANSFORM, NODATA)
    assert ds["tiled"] and ds["compress"] == "deflate" and ds["overviews"] and ds["layout"] == "COG"
    assert info["scale"] == 1.0 and not (tmp_path / "out" / "field.mask.tif.partial").exists()


def test_a_killed_run_resumes_by_row_to_the_same_mask(seg, field, tmp_path, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_MODEL_PX", 200)
    monkeypatch.setattr(ortho, "BLOCK", 64)
    path = write_raster(tmp_path / "field.tif", field)
    expected, _, _ = run(seg, path, tmp_path / "a")
    real_band, calls = ortho.OrthoSegmenter.band, []

    def dies_at_row_3(self, r, work, out):
        calls.append(r)
        if len(calls) == 3:
            real_band(self, r, work, out)  # its carried sums are written, the journal is not: as a kill would leave it
            raise KeyboardInterrupt
        return real_band(self, r, work, out)

    monkeypatch.setattr(ortho.OrthoSegmenter, "band", dies_at_row_3)
    with pytest.raises(KeyboardInterrupt):
        run(seg, path, tmp_path / "b")
    monkeypatch.setattr(ortho.OrthoSegmenter, "band", real_band)
    calls.clear()
    resumed, _, _ = run(seg, path, tmp_path / "b")
    assert np.array_equal(resumed, expected)


def test_nodata_alpha_bands_and_16_bit(seg, field, tmp_path):
    h, w = field.shape[:2]
    alpha = np.full((h, w, 1), 255, np.uint8)
    alpha[:, :100] = 0  # outside the field
    rgba = write_raster(tmp_path / "rgba.tif", np.concatenate([field, alpha], axis=2), count=4,
                        photometric="RGB", alpha="YES")
    mask, _, _ = run(seg, rgba, tmp_path)
    assert (mask[:, :100] == NODATA).all() and (mask[:, 100:] < 3).all()

    nir = np.concatenate([field[..., :1], field], axis=2)  # a NIR band first, then R, G, B, 16-bit
    wide = write_raster(tmp_path / "nir.tif", (nir.astype(np.uint16) * 40 + 300), count=4)
    with pytest.raises(WeedsegError, match="--bands"):
        run(seg, wide, tmp_path)
    mask16, _, info = run(seg, wide, tmp_path, bands=(2, 3, 4))
    assert info["stretch"]["low"][0] >= 300 and info["stretch"]["high"][0] <= 255 * 40 + 300
    plain, _, _ = run(seg, write_raster(tmp_path / "plain.tif", field), tmp_path)
    assert (mask16 == plain).mean() > 0.9  # a percentile stretch of the same field


def test_model_scale_from_the_photo_ratio(seg, field, tmp_path):
    path = write_raster(tmp_path / "field.tif", field)
    mask = tmp_path / "out" / "field.mask.tif"
    info = segment_ortho(path, mask, seg, GroundOptions(), OrthoOptions(), 256, 64, 2, progress=False)
    assert info["scale"] == pytest.approx(480 / 720) and "photo-to-input" in info["scale_source"]
    with rasterio.open(mask) as ds:
        assert ds.shape == field.shape[:2] and (ds.read(1) < 3).all()


def test_predict_a_folder_with_an_ortho_over_the_photo_limit(field, tmp_path, monkeypatch):
    monkeypatch.setattr(ortho, "MAX_IMAGE_PIXELS", 200_000)  # the 700 x 450 field is over it, as a real ortho
    monkeypatch.setattr(pipeline, "MAX_IMAGE_PIXELS", 200_000)
    flight = tmp_path / "ortho"
    flight.mkdir()
    write_raster(flight / "field.tif", field)
    out = tmp_path / "out"
    args = ["predict", str(flight), "--out", str(out), "--cell-m", "0.5", "--tile", "256", "--overlap", "64"]
    assert main(args) == 0
    row = next(csv.DictReader((out / "summary.csv").open()))
    assert (row["status"], row["mask"], row["gsd_source"], row["cell_px"]) == ("predicted", "field.mask.tif", "geotiff",
                                                                              "50")
    assert float(row["area_m2"]) == pytest.approx(700 * 450 * GSD ** 2)
    with rasterio.open(out / "field.mask.tif") as ds:
        mask = ds.read(1)
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM
    assert int(row["weed_pixels"]) == (mask == 2).sum()
    with rasterio.open(out / "field.overlay.tif") as ds:
        assert ds.count == 3 and ds.overviews(1) is not None
    field_json = json.loads((out / "field.field.json").read_text())
    assert field_json["scale"] == pytest.approx(480 / 720) and field_json["spray_cells"] == int(row["spray_cells"])

    # the spray map: RFC 7946 zones whose area is the sprayed cells'; a known sprayed cell lies inside them
    doc = json.loads((out / "field.spray.geojson").read_text())
    assert "crs" not in doc and doc["features"]
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    zones = [shapely.transform(shapely.geometry.shape(f["geometry"]), lambda xy: np.column_stack(
        to_utm.transform(xy[:, 0], xy[:, 1]))) for f in doc["features"]]
    assert all(z.is_valid for z in zones)
    grid = list(csv.DictReader((out / "field.grid.csv").open()))
    sprayed = [g for g in grid if g["spray"] == "1"]
    assert len(sprayed) == int(row["spray_cells"])
    g = sprayed[0]
    centre = shapely.Point(E0 + (int(g["x0"]) + 25) * GSD, N0 - (int(g["y0"]) + 25) * GSD)
    assert any(z.contains(centre) for z in zones)
    assert sum(z.area for z in zones) == pytest.approx(float(row["sprayed_m2"]), rel=1e-3)
    for suffix in (".gpkg", ".shp"):
        _, _, geometry, fields = pyogrio.raw.read(out / f"field.spray{suffix}")
        assert pyproj.CRS(pyogrio.read_info(out / f"field.spray{suffix}")["crs"]).to_epsg() == 32633
        polygons = [shapely.from_wkb(b) for b in geometry]
        assert all(p.is_valid for p in polygons)
        assert sum(p.area for p in polygons) == pytest.approx(700 * 450 * GSD ** 2)
        assert any(p.contains(centre) and s == 1 for p, s in zip(polygons, fields[0]))

    # a new threshold on the same outputs: made again from the mask, not segmented
    assert main([*args, "--spray-threshold", "50"]) == 0
    again = next(csv.DictReader((out / "summary.csv").open()))
    assert again["status"] == "done before" and int(again["spray_cells"]) <= int(row["spray_cells"])


def test_without_a_georeference_outputs_are_in_pixels(seg, field, tmp_path, caplog):
    path = tmp_path / "plain.tif"
    write_raster(path, field, crs=None, transform=Affine.identity())
    with caplog.at_level(logging.WARNING):
        mask, ds, info = run(seg, path, tmp_path)
    assert info["ground"].georef is None and "no georeference" in caplog.text and mask.shape == field.shape[:2]


def test_an_unreadable_window_is_reported_and_the_rest_finished(seg, field, tmp_path, monkeypatch, caplog):
    from PIL import Image

    monkeypatch.setattr(ortho, "WINDOW_MODEL_PX", 200)
    path = write_raster(tmp_path / "field.tif", field)
    with Image.open(path) as im:
        offset, size = im.tag_v2[324][7], im.tag_v2[325][7]  # the 8th 128-pixel tile: row 1, column 2
    with open(path, "r+b") as f:
        f.seek(offset + size // 4)
        f.write(b"\xff" * (size // 2))
    with caplog.at_level(logging.WARNING):
        mask, _, info = run(seg, path, tmp_path)
    assert len(info["bad_windows"]) >= 1 and "cannot be read" in caplog.text
    assert (mask == NODATA).any() and (mask[300:] < 3).all()  # the rows below the broken tile were segmented


def test_without_the_geo_extra_an_ortho_says_what_to_install(monkeypatch, tmp_path):
    from weedseg.infer import geo

    monkeypatch.setattr(geo, "HAVE_GEO", False)
    with pytest.raises(WeedsegError, match=r'pip install "weedseg\[geo\]"'):
        geo.require_geo("field.tif is an orthomosaic: streaming it")


def test_a_raster_in_degrees_gets_areas_on_the_ellipsoid(field, tmp_path):
    path = write_raster(tmp_path / "wgs84.tif", field, crs="EPSG:4326", transform=Affine(1e-7, 0, 15.0, 0, -1e-7, 37.0))
    ground = ortho.describe_raster(path, GroundOptions())
    # 1e-7 degrees: 1.109 cm north-south, 0.889 cm east-west at 37 N; never 1e-14 "square degrees"
    assert ground.source == "geotiff" and ground.gsd_cm == pytest.approx((1.109 * 0.889) ** 0.5, rel=2e-3)


def test_a_crs_proj_does_not_know_is_a_clear_error(field, tmp_path, monkeypatch):
    from weedseg.infer import geo

    def unknown(wkt):
        raise pyproj.exceptions.CRSError("Invalid projection")

    monkeypatch.setattr(geo.pyproj.CRS, "from_wkt", unknown)
    with pytest.raises(WeedsegError, match="not one PROJ knows.*gdal_edit.py -a_srs"):
        ortho.describe_raster(write_raster(tmp_path / "odd.tif", field), GroundOptions())
