"""Ground units, spray decisions and spray maps (weedseg.infer.geo, weedseg.infer.spray, `weedseg predict`)."""

from __future__ import annotations

import csv
import io
import json
import math
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyproj
import pytest
import shapely
from PIL import Image, TiffImagePlugin, TiffTags
from streamlit.testing.v1 import AppTest

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data.io import read_rgb
from weedseg.export import save_with_metadata
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.geo import Ground, GroundOptions, check_resolution, describe_ground
from weedseg.infer.image import SegmentedImage
from weedseg.infer.metadata import background_class
from weedseg.infer.pictures import overlay
from weedseg.infer.tables import summary_columns
from weedseg.infer.pipeline import Job, PredictOptions, Predictor
from weedseg.infer.spray import SpraySettings, plan_spray, spray_geojson, write_run_outputs, write_spray_map
from weedseg.resources import APP_SCRIPT

CLASSES = ["soil", "crop", "weed"]
E0, N0, SCALE = 500_000.0, 4_100_000.0, 0.05  # UTM 33N tie point of the top-left corner; 5 cm pixels


def geokeys(*keys: tuple[int, int]) -> tuple[int, ...]:
    """A GeoKeyDirectory holding short-valued keys."""
    return (1, 1, 0, len(keys), *(v for key, value in keys for v in (key, 0, 1, value)))


def write_geotiff(path: Path, rgb: np.ndarray, keys: tuple[int, ...], scale: float = SCALE,
                  transform: tuple[float, ...] | None = None, origin: tuple[float, float] = (E0, N0)) -> Path:
    """A GeoTIFF with a pixel scale and tie point (or a ModelTransformation) and the given GeoKeys."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    tags = {34735: (keys, TiffTags.SHORT)}
    if transform:
        tags[34264] = (transform, TiffTags.DOUBLE)
    else:
        tags[33550] = ((scale, scale, 0.0), TiffTags.DOUBLE)
        tags[33922] = ((0.0, 0.0, 0.0, *origin, 0.0), TiffTags.DOUBLE)
    for tag, (value, kind) in tags.items():
        ifd[tag], ifd.tagtype[tag] = value, kind
    Image.fromarray(rgb).save(path, tiffinfo=ifd)
    return path


UTM33 = geokeys((1024, 1), (1025, 1), (3072, 32633))


def hand_mask() -> np.ndarray:
    """100 x 200 mask: a 40 x 20 px weed block over four cells of 20 px, a 2 x 2 patch (1 % of its cell),
    a one-pixel speck (0.25 %) and a crop strip."""
    mask = np.zeros((100, 200), np.uint8)
    mask[10:30, 20:60] = 2
    mask[65:67, 5:7] = 2
    mask[90, 190] = 2
    mask[:, 100:110] = 1
    return mask


def utm33(ring: list[list[float]]) -> list[list[float]]:
    """A GeoJSON ring (WGS 84 longitude/latitude) back in UTM 33N metres."""
    lon, lat = np.asarray(ring).T
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True).transform(lon, lat)
    return np.column_stack([x, y]).tolist()


def polygon_area(ring: list[list[float]]) -> float:
    pts = np.asarray(ring)
    return 0.5 * abs(np.dot(pts[:-1, 0], pts[1:, 1]) - np.dot(pts[1:, 0], pts[:-1, 1]))


def test_geotiff_spray_cells_land_on_map_coordinates_with_matching_areas(tmp_path):
    tif = write_geotiff(tmp_path / "ortho.tif", np.zeros((100, 200, 3), np.uint8), UTM33)
    ground = describe_ground(tif, GroundOptions())
    assert (ground.source, ground.gsd_cm, ground.georef.epsg) == ("geotiff", pytest.approx(5.0), 32633)
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(threshold_pct=1.0, cell_m=1.0), grid_cell=256)
    assert plan.cell_px == 20  # 1 m at 5 cm per pixel
    doc = spray_geojson(plan, "ortho.tif")
    assert "crs" not in doc and doc["weedseg"]["coordinates"] == "lonlat"  # RFC 7946
    cells = {(f["properties"]["row"], f["properties"]["col"]): f for f in doc["features"]}
    assert set(cells) == {(0, 1), (0, 2), (1, 1), (1, 2), (3, 0)}  # the block's cells and the 1 % patch; not the speck
    ring = cells[(0, 1)]["geometry"]["coordinates"][0]
    corners = {(round(x, 2), round(y, 2)) for x, y in utm33(ring[:-1])}  # back in UTM, within a centimetre
    assert corners == {(E0 + 1, N0 - 1), (E0 + 1, N0), (E0 + 2, N0 - 1), (E0 + 2, N0)}
    assert shapely.geometry.shape(cells[(0, 1)]["geometry"]).exterior.is_ccw  # right-hand rule
    assert cells[(0, 1)]["properties"]["weed_pct"] == 50.0
    for f in doc["features"]:
        assert polygon_area(utm33(f["geometry"]["coordinates"][0])) == pytest.approx(f["properties"]["area_m2"],
                                                                                      rel=1e-3)
        assert f["properties"]["area_m2"] == 1.0
    row = plan.row()
    assert row["area_m2"] == pytest.approx(200 * 100 * SCALE ** 2)  # 50 m²
    assert row["weed_m2"] == pytest.approx((800 + 4 + 1) * SCALE ** 2)
    assert row["crop_m2"] == pytest.approx(1000 * SCALE ** 2)
    assert row["weed_m2_per_ha"] == pytest.approx(10_000 * 805 / 20_000)
    assert (row["spray_cells"], row["cells"], row["sprayed_m2"]) == (5, 50, pytest.approx(5.0))
    assert (row["sprayed_pct"], row["herbicide_saving_pct_est"]) == (10.0, 90.0)


def test_georeferencing_variants(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    point = describe_ground(write_geotiff(tmp_path / "p.tif", rgb, geokeys((1024, 1), (1025, 2), (3072, 32633))),
                            GroundOptions())
    assert point.georef.to_map(0, 0) == pytest.approx((E0 - SCALE / 2, N0 + SCALE / 2))  # tie point at pixel centre
    feet = describe_ground(write_geotiff(tmp_path / "f.tif", rgb, geokeys((1024, 1), (3072, 2229), (3076, 9002)),
                                         scale=0.25), GroundOptions())
    assert feet.gsd_cm == pytest.approx(0.25 * 30.48)
    rotated = (0.0, -0.1, 0.0, E0, 0.1, 0.0, 0.0, N0, 0, 0, 0, 0, 0, 0, 0, 1)  # 90 degrees, 10 cm pixels
    rot = describe_ground(write_geotiff(tmp_path / "r.tif", rgb, UTM33, transform=rotated), GroundOptions())
    assert rot.gsd_cm == pytest.approx(10.0) and rot.georef.to_map(20, 10) == pytest.approx((E0 - 1.0, N0 + 2.0))
    degrees = describe_ground(write_geotiff(tmp_path / "d.tif", rgb, geokeys((1024, 2), (2048, 4326)),
                                            scale=1e-6, origin=(15.0, 37.0)), GroundOptions())
    # in degrees, the pixel's area is measured on the ellipsoid: 1e-6 degrees are 11.1 cm north, 8.9 cm east at 37 N
    assert degrees.gsd_cm == pytest.approx(math.sqrt(11.09 * 8.89), rel=2e-3) and degrees.georef.epsg == 4326
    given = describe_ground(tmp_path / "d.tif", GroundOptions(gsd_cm=0.8))
    assert (given.source, given.gsd_cm, given.georef.epsg) == ("--gsd", 0.8, 4326)


def test_gsd_from_exif_focal_length_and_altitude(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({0x920A: 8.8, 0xA405: 24})
    Image.new("RGB", (400, 300)).save(tmp_path / "drone.jpg", exif=exif.tobytes())
    with_sensor = describe_ground(tmp_path / "drone.jpg", GroundOptions(altitude_m=10, sensor_width_mm=13.2))
    assert with_sensor.source == "exif" and with_sensor.gsd_cm == pytest.approx(13.2 * 1000 / (8.8 * 400))
    equivalent = describe_ground(tmp_path / "drone.jpg", GroundOptions(altitude_m=10))
    assert equivalent.gsd_cm == pytest.approx(43.2666 * 1000 / (24 * 500), rel=1e-4)  # full-frame diagonal / 500 px
    assert describe_ground(tmp_path / "drone.jpg", GroundOptions()).source == "none"
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.jpg")
    plain = describe_ground(tmp_path / "plain.jpg", GroundOptions(altitude_m=10))
    assert plain.gsd_cm is None and "no EXIF focal length" in plain.note
    with pytest.raises(WeedsegError, match="--altitude must be a positive number"):
        GroundOptions(altitude_m=-3)


def test_threshold_and_minimum_patch_in_pixels_without_a_gsd(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "photo.png")
    ground = describe_ground(tmp_path / "photo.png", GroundOptions())
    assert ground.gsd_cm is None and ground.source == "none"

    def sprayed(**settings) -> set[tuple[int, int]]:
        plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(**settings), grid_cell=20)
        return {(c.row, c.col) for c, s in zip(plan.cells, plan.spray) if s}

    block = {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert sprayed(threshold_pct=0) == block | {(3, 0), (4, 9)}  # any weed, never an empty cell
    assert sprayed(threshold_pct=0.25) == block | {(3, 0), (4, 9)}  # the threshold is inclusive
    assert sprayed(threshold_pct=1.0) == block | {(3, 0)}
    assert sprayed(threshold_pct=1.01) == block
    assert sprayed(threshold_pct=0, min_patch=2) == block | {(3, 0)}  # the one-pixel speck is dropped
    assert sprayed(threshold_pct=0, min_patch=5) == block  # so is the 4-pixel patch
    assert sprayed(threshold_pct=51) == set()
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(threshold_pct=0, min_patch=5), grid_cell=20)
    row = plan.row()
    assert "area_m2" not in row and (row["sprayed_px"], row["sprayed_pct"]) == (1600, 8.0)
    doc = spray_geojson(plan, "photo.png")
    assert "crs" not in doc and doc["weedseg"]["coordinates"] == "pixels" and "not georeferenced" in \
        doc["weedseg"]["coordinate_note"]
    assert doc["features"][0]["geometry"]["coordinates"][0][:3] == [[20.0, 0.0], [20.0, 20.0], [40.0, 20.0]]
    with pytest.raises(WeedsegError, match="--spray-threshold"):
        SpraySettings(threshold_pct=120)


def test_minimum_patch_in_square_centimetres_and_patch_polygons(tmp_path):
    tif = write_geotiff(tmp_path / "ortho.tif", np.zeros((100, 200, 3), np.uint8), UTM33)
    ground = describe_ground(tif, GroundOptions())  # a pixel is 25 cm²
    plan = plan_spray(hand_mask(), CLASSES, ground, SpraySettings(threshold_pct=0, min_patch=50, patches=True), 20)
    assert plan.min_patch_px == 2
    patches = [f for f in spray_geojson(plan, "ortho.tif")["features"] if f["properties"]["kind"] == "weed_patch"]
    assert sorted(f["properties"]["area_m2"] for f in patches) == [pytest.approx(0.01), pytest.approx(2.0)]
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in patches)
    block = max(patches, key=lambda f: f["properties"]["area_px"])["geometry"]["coordinates"][0]
    xs, ys = zip(*utm33(block))  # the block's pixel edges: columns 20 to 60, rows 10 to 30
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx(
        (E0 + 20 * SCALE, E0 + 60 * SCALE, N0 - 30 * SCALE, N0 - 10 * SCALE), abs=0.01)


@pytest.mark.parametrize("classes", [["crop", "soil", "weed"], ["weed", "crop", "Background"]])
def test_background_is_found_by_name_whatever_the_class_order(classes):
    """A dataset.toml may list its classes in any order: areas, cover columns and overlays follow the names."""
    bg = background_class(classes)
    order = [bg, classes.index("crop"), classes.index("weed")]
    mask = np.asarray(order, np.uint8)[hand_mask()]  # hand_mask's soil, crop and weed as these classes
    background = classes[bg]
    plan = plan_spray(mask, classes, Ground(5.0, "--gsd"), SpraySettings(), grid_cell=20)
    reference = plan_spray(hand_mask(), CLASSES, Ground(5.0, "--gsd"), SpraySettings(), grid_cell=20)
    assert plan.class_pixels == reference.class_pixels == {"crop": 1000, "weed": 805}
    row = plan.row()
    assert row["crop_m2"] == reference.row()["crop_m2"] and f"{background}_m2" not in row
    columns = summary_columns(classes)
    assert "crop_m2" in columns and "weed_m2" in columns and f"{background}_m2" not in columns

    rgb = np.full((*mask.shape, 3), 120, np.uint8)
    colors = [[[0, 0, 0], [0, 255, 0], [255, 0, 0]][order.index(i)] for i in range(3)]  # soil black, crop green ...
    picture = overlay(rgb, mask, colors, background=bg)
    assert (picture[mask == order[0]] == 120).all()  # the background keeps the photo's pixels
    assert (picture[mask == order[1]][:, 1] > 120).all() and (picture[mask == order[2]][:, 0] > 120).all()
    assert background_class(["crop", "weed"]) is None
    assert (overlay(rgb, mask, colors, background=None) != 120).any(axis=-1).all()  # no background: all tinted


def test_grid_csv_agrees_with_the_spray_cells_after_dropping_specks(tmp_path):
    """`predict` and the page both write the grid the decision used: no cell holds weed yet goes unsprayed."""
    settings = SpraySettings(threshold_pct=0, min_patch=5)  # drops the one-pixel speck and the 4-pixel patch
    seg = Segmenter(DEFAULT_MODEL, device="cpu", threads=1)
    job = Job(0, tmp_path / "photo.png", "photo.png", tmp_path / "photo.mask.png", tmp_path / "photo.overlay.jpg",
              tmp_path / "photo.grid.csv")
    row = Predictor(seg, PredictOptions(grid_cell=20, spray=settings)).decide(job, hand_mask(), Ground(None, "none"))
    page = SegmentedImage("photo.png", np.zeros((100, 200, 3), np.uint8), hand_mask())
    page.summarize(CLASSES, 20, spray=settings)
    page_grid = page.files(seg.info.colors, 0.45, background=seg.info.background)["photo.grid.csv"].decode()
    for grid, summary in [(job.grid.read_text(), row), (page_grid, page.row)]:
        cells = list(csv.DictReader(io.StringIO(grid)))
        assert len(cells) == 50 and all((float(c["weed_pct"]) > 0) == (c["spray"] == "1") for c in cells)
        assert {(c["row"], c["col"]) for c in cells if c["spray"] == "1"} == {("0", "1"), ("0", "2"), ("1", "1"),
                                                                              ("1", "2")}
        assert (summary["weed_cells"], summary["spray_cells"], summary["max_cell_weed_pct"]) == (4, 4, 50.0)
        assert summary["weed_pixels"] == 805  # the mask's own count, specks included, as weed_pct


def test_a_rerun_removes_run_outputs_it_does_not_make(tmp_path):
    for name in ("spray_summary.json", "spray_map.geojson"):  # left by an earlier run on georeferenced images
        (tmp_path / name).write_text("{}")
    plan = plan_spray(hand_mask(), CLASSES, Ground(None, "none"), SpraySettings(), grid_cell=20)
    write_spray_map(tmp_path / "photo.spray.geojson", plan, "photo.png")
    row = {"image": "photo.png", "width": 200, "height": 100, **plan.row(), "spray_map": "photo.spray.geojson"}
    totals = write_run_outputs(tmp_path, [row])  # totals, but no georeferenced image to map
    assert totals["spray_cells"] == plan.row()["spray_cells"] > 0
    assert json.loads((tmp_path / "spray_summary.json").read_text()) == totals
    assert not (tmp_path / "spray_map.geojson").exists()
    (tmp_path / "spray_map.geojson").write_text("{}")
    assert write_run_outputs(tmp_path, [{"image": "photo.png", "status": "failed"}]) == {}  # no totals at all
    assert not (tmp_path / "spray_summary.json").exists() and not (tmp_path / "spray_map.geojson").exists()


def test_resolution_check():
    ground = Ground(0.5, "--gsd")
    check = check_resolution(ground, 2.0, (3000, 4000), 750)  # 3000 px short side resized to 750: 2 cm/px
    assert check.image_gsd_cm == pytest.approx(2.0) and not check.far
    check = check_resolution(ground, 2.0, (3000, 4000), 256)
    assert check.far and check.suggested_short_side == 750
    assert check_resolution(ground, None, (3000, 4000), 256) is None


@pytest.fixture()
def model(tmp_path) -> Path:
    """The shipped model, saying it was trained at 2.5 cm per pixel and is run at short side 256."""
    info = Segmenter(DEFAULT_MODEL, device="cpu").info
    path = tmp_path / "model.onnx"
    save_with_metadata(DEFAULT_MODEL, path, replace(info, train_gsd_cm=2.5, input_short_side=256))
    return path


def test_predict_writes_spray_maps_summary_and_run_map(model, peanut_root, tmp_path, caplog):
    flight = tmp_path / "flight"
    flight.mkdir()
    photos = [cv2.resize(read_rgb(peanut_root / "images" / f"{i}.jpg"), (320, 240), interpolation=cv2.INTER_AREA)
              for i in ("0001", "0360")]  # real field photos, about 1 % and 35 % weed
    write_geotiff(flight / "a.tif", photos[0], UTM33)
    write_geotiff(flight / "b.tif", photos[1], UTM33)
    cv2.imwrite(str(flight / "phone.jpg"), photos[0])
    out = tmp_path / "out"
    args = ["predict", str(flight), "--model", str(model), "--out", str(out), "--cell-m", "1", "--spray-threshold", "0"]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    # both photos are 5 cm pixels segmented at 4.7 cm; predict warns once, for whichever is read first
    assert ("a.tif" in caplog.text or "b.tif" in caplog.text) and "--short-side 480" in caplog.text
    rows = {r["image"]: r for r in csv.DictReader((out / "summary.csv").open())}
    a = rows["a.tif"]
    assert (a["gsd_source"], float(a["cell_m"]), a["cell_px"]) == ("geotiff", 1.0, "20")
    assert float(rows["a.tif"]["area_m2"]) == pytest.approx(320 * 240 * SCALE ** 2)
    assert rows["phone.jpg"]["gsd_source"] == "none" and rows["phone.jpg"]["area_m2"] == ""
    assert rows["phone.jpg"]["cell_px"] == "256"
    doc = json.loads((out / rows["a.tif"]["spray_map"]).read_text())
    assert len(doc["features"]) == int(rows["a.tif"]["spray_cells"]) > 0
    for f in doc["features"]:
        xs, ys = zip(*utm33(f["geometry"]["coordinates"][0]))
        assert E0 - 0.01 <= min(xs) < max(xs) <= E0 + 320 * SCALE + 0.01
        assert N0 - 240 * SCALE - 0.01 <= min(ys) < max(ys) <= N0 + 0.01
    assert json.loads((out / rows["phone.jpg"]["spray_map"]).read_text())["weedseg"]["coordinates"] == "pixels"
    run_map = json.loads((out / "spray_map.geojson").read_text())
    assert run_map["weedseg"]["images"] == ["a.tif", "b.tif"] and "crs" not in run_map
    assert len(run_map["features"]) == int(rows["a.tif"]["spray_cells"]) + int(rows["b.tif"]["spray_cells"])
    totals = json.loads((out / "spray_summary.json").read_text())
    assert totals["images"] == 3 and totals["images_with_gsd"] == 2
    assert totals["area_m2"] == pytest.approx(2 * 320 * 240 * SCALE ** 2)

    # a new threshold is applied to the saved masks without segmenting again
    assert main([*args[:-1], "50"]) == 0
    again = {r["image"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert {r["status"] for r in again.values()} == {"done before"}
    assert 0 < int(again["b.tif"]["spray_cells"]) < int(rows["b.tif"]["spray_cells"])
    run_map = json.loads((out / "spray_map.geojson").read_text())
    assert len(run_map["features"]) == int(again["a.tif"]["spray_cells"]) + int(again["b.tif"]["spray_cells"])
    assert all(f["properties"]["weed_pct"] >= 50 for f in run_map["features"])


def test_page_spray_controls_map_and_areas(peanut_root, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / DEFAULT_MODEL.name).symlink_to(DEFAULT_MODEL)
    monkeypatch.setenv("WEEDSEG_MODELS", str(models))
    photo = cv2.resize(read_rgb(peanut_root / "images" / "0360.jpg"), (320, 240), interpolation=cv2.INTER_AREA)
    tif = write_geotiff(tmp_path / "ortho.tif", photo, UTM33).read_bytes()
    png = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))[1].tobytes()  # lossless: the same pixels
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    at.file_uploader[0].set_value([("ortho.tif", tif, "image/tiff"), ("phone.png", png, "image/png")]).run()
    assert not at.exception
    inputs = {n.label: n for n in at.sidebar.number_input}
    assert inputs["Spray threshold (% weed per cell)"].value == 1.0
    inputs["Grid cell (metres)"].set_value(1.0).run()  # offered: the GeoTIFF has a GSD

    def metrics() -> list[dict[str, str]]:
        per_image, current = [], {}
        for m in at.metric:
            if m.label == "Crop cover":
                current = {}
                per_image.append(current)
            current[m.label] = m.value
        return per_image

    tif_m, png_m = metrics()
    assert tif_m["Cells to spray"].endswith("of 192")  # 1 m cells of 20 px at 5 cm: 16 x 12
    assert tif_m["Sprayed area"].endswith("%)") and " m² (" in tif_m["Sprayed area"]
    assert "Weed area" in tif_m and "Weed area" not in png_m and png_m["Cells to spray"].endswith("of 2")
    captions = [c for im in at.image for c in im.captions]
    assert any(c.startswith("Cells to spray (yellow): at least 1 % weed in a 1 m cell") for c in captions)
    labels = [b.label for b in at.download_button]
    assert "Spray map GeoJSON" in labels and labels.count("Prescription map (Shapefile, zip)") == 1  # the GeoTIFF's
    summary = at.dataframe[-1].value
    assert {"Cells to spray", "Sprayed %", "Weed m²", "Crop m²"} <= set(summary.columns)

    inputs = {n.label: n for n in at.sidebar.number_input}
    inputs["Ground sampling distance (cm per pixel)"].set_value(0.5)  # now both images have one
    inputs["Spray threshold (% weed per cell)"].set_value(100.0)
    at.run()
    assert not at.exception
    tif_m, png_m = metrics()
    assert tif_m["Cells to spray"].endswith("of 4") and png_m["Cells to spray"].endswith("of 4")  # 200 px cells
    assert float(png_m["Weed area"].split()[0]) == pytest.approx(float(tif_m["Weed area"].split()[0]), rel=0.01)
    assert any("at least 100 % weed in a 1 m cell" in c for im in at.image for c in im.captions)
