"""The upload page (app/weedseg_app.py) run headless with Streamlit's AppTest, its image helpers
(weedseg.infer.image) against `weedseg predict`, and `weedseg app`."""

from __future__ import annotations

import csv
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint
from weedseg.cli import build_parser, main
from weedseg.export import export_onnx
from weedseg.infer.image import csv_bytes, decode_image, safe_name, segment_upload, summary_columns, zip_bytes
from weedseg.infer.pictures import read_mask
from weedseg.infer.pipeline import PredictOptions, predict_path
from weedseg.infer.session import Segmenter
from weedseg.resources import APP_SCRIPT

APP = APP_SCRIPT
OPTIONS = PredictOptions()  # the page's defaults


@pytest.fixture()
def models(tmp_path, random_checkpoint) -> Path:
    """A models folder holding the untrained test model (input short side 128)."""
    folder = tmp_path / "models"
    folder.mkdir()
    export_onnx(load_checkpoint(random_checkpoint), folder / "test.onnx", input_short_side=128)
    return folder


@pytest.fixture()
def photo(peanut) -> Path:
    """A real 960 x 720 peanut field photo (read in place, never copied into the repository)."""
    return peanut.splits["val"][0].image


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def start_app(models: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("WEEDSEG_MODELS", str(models))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_upload_shows_results_and_bad_files_their_message(models, photo, monkeypatch):
    at = start_app(models, monkeypatch)
    assert "soil" in at.markdown[-1].value and "weed" in at.markdown[-1].value  # the legend
    jpg = photo.read_bytes()
    _, tif = cv2.imencode(".tif", cv2.imread(str(photo))[:300, :400])
    at.file_uploader[0].set_value([("../../etc/field 1.jpg", jpg, "image/jpeg"),
                                   ("notes.jpg", b"these are not pixels", "image/jpeg"),
                                   ("half.jpg", jpg[: len(jpg) // 3], "image/jpeg"),
                                   ("huge.png", png_header(9000, 6000), "image/png"),
                                   ("crop.tif", tif.tobytes(), "image/tiff")]).run()
    assert not at.exception
    assert [s.value for s in at.subheader] == ["field_1.jpg", "notes.jpg", "half.jpg", "huge.png", "crop.tif",
                                               "All images"]
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    assert errors[0].startswith("`notes.jpg` could not be segmented: not an image")
    assert errors[1].startswith("`half.jpg` could not be segmented: damaged or unreadable image")
    assert "54.0 megapixels, over the limit of 50" in errors[2]
    captions = [c for im in at.image for c in im.captions]
    assert captions.count("Original") == captions.count("Overlay") == captions.count("Mask") == 2
    assert sum(c.startswith("Weed cover per 256 px cell") for c in captions) == 2
    labels = [m.label for m in at.metric]
    assert labels == ["Crop cover", "Weed cover", "Weed : crop", "Cells with weeds",
                      "Cells to spray", "Sprayed area", "Herbicide saving (estimate)"] * 2  # no GSD: no m² areas
    assert at.metric[3].value.endswith("of 12")  # 960 x 720 in 256 px cells: 4 x 3
    summary = at.dataframe[-1].value
    assert list(summary["Image"]) == ["field_1.jpg", "notes.jpg", "half.jpg", "huge.png", "crop.tif"]
    assert list(summary["Status"]) == ["predicted", "failed", "failed", "failed", "predicted"]
    crop = float(at.metric[0].value.rstrip(" %"))
    assert summary["Crop %"][0] == pytest.approx(crop, abs=0.05)
    assert {b.label for b in at.download_button} >= {"Mask PNG", "Overlay JPG", "Weed grid CSV", "Summary CSV",
                                                      "Everything (zip)"}

    results = dict(at.session_state["results"])
    at.slider[0].set_value(0.9).run()  # a new opacity re-colours the overlay but does not segment again
    at.sidebar.number_input[0].set_value(128).run()
    assert not at.exception
    assert at.session_state["results"].keys() == results.keys()
    assert all(at.session_state["results"][k] is v for k, v in results.items())
    assert at.metric[3].value.endswith("of 48")  # 8 x 6 cells of 128 px


@pytest.mark.parametrize("choice, mode, caption", [("Flip (2x the time)", "flip", "with flip TTA"),
                                                   ("Flip and quarter turns (8x the time)", "rotate",
                                                    "with flip and quarter-turn TTA")])
def test_tta_choice_segments_again_with_the_mirrored_and_turned_copies(models, photo, monkeypatch, choice, mode,
                                                                       caption):
    at = start_app(models, monkeypatch)
    at.file_uploader[0].set_value([("field.jpg", photo.read_bytes(), "image/jpeg")]).run()
    (plain_key, _), = at.session_state["results"].items()
    assert plain_key[1] is None and "TTA" not in at.sidebar.caption[0].value
    tta_box, = [b for b in at.sidebar.selectbox if b.label == "Test-time augmentation"]
    tta_box.set_value(choice).run()
    assert not at.exception
    (tta_key, tta), = at.session_state["results"].items()  # the plain result is dropped, not shown twice
    assert tta_key[1] == mode and tta_key[2:] == plain_key[2:] and caption in at.sidebar.caption[0].value
    seg = Segmenter(models / "test.onnx", engine="auto", tta=mode)
    expected = segment_upload(seg, photo.read_bytes(), "field.jpg", OPTIONS.short_side, OPTIONS.tile,
                              OPTIONS.overlap, OPTIONS.batch_size)
    np.testing.assert_array_equal(tta.mask, expected.mask)  # (the untrained model may give one class everywhere,
    # so the plain mask can equal it; tests/test_tta.py checks the mean over the copies)


def test_without_a_usable_model_the_page_says_what_to_do(tmp_path, monkeypatch):
    at = start_app(tmp_path, monkeypatch)
    assert "No model found" in at.error[0].value and "weedseg export" in at.error[0].value
    assert not at.file_uploader
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    at = start_app(tmp_path, monkeypatch)
    assert at.error[0].value.startswith("Cannot use the model broken.onnx: cannot load ONNX model")
    assert not at.file_uploader


@pytest.mark.parametrize("options", [PredictOptions(), PredictOptions(short_side=0, tile=256, overlap=64)],
                         ids=["model-resolution", "native-tiled"])
def test_segment_upload_matches_weedseg_predict(models, photo, tmp_path, options):
    seg = Segmenter(models / "test.onnx", device="cpu")
    summary = predict_path(photo, tmp_path / "out", seg, options, progress=False)
    res = segment_upload(seg, photo.read_bytes(), "p.jpg", options.short_side, options.tile, options.overlap,
                         options.batch_size)
    expected = read_mask(tmp_path / "out" / f"{photo.stem}.mask.png")
    np.testing.assert_array_equal(res.mask, expected)
    res.summarize(seg.info.classes, options.grid_cell)
    cli_row = summary.rows[0]
    for key in ["width", "height", "soil_pct", "crop_pct", "weed_pct", "weed_pixels", "weed_cells"]:
        assert res.row[key] == cli_row[key]
    files = res.files(seg.info.colors, 0.45, background=seg.info.background)
    assert files["p.grid.csv"] == (tmp_path / "out" / f"{photo.stem}.grid.csv").read_bytes()
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(files["p.mask.png"], np.uint8), cv2.IMREAD_UNCHANGED),
                                  expected)


def test_downloads_hold_every_file(models, photo):
    seg = Segmenter(models / "test.onnx", device="cpu")
    res = segment_upload(seg, photo.read_bytes(), "a.jpg", None, 1024, 128, 4)
    res.summarize(seg.info.classes, 256)
    rows = [res.row, {"image": "b.png", "status": "failed", "error": "not an image"}]
    summary = csv_bytes(rows, summary_columns(seg.info.classes))
    parsed = list(csv.DictReader(io.StringIO(summary.decode())))
    assert [r["status"] for r in parsed] == ["predicted", "failed"]
    ratio = float(parsed[0]["weed_crop_ratio"]) if parsed[0]["weed_crop_ratio"] else None
    crop, weed = float(parsed[0]["crop_pct"]), float(parsed[0]["weed_pct"])
    assert ratio == (None if crop == 0 else pytest.approx(weed / crop, abs=1e-3))
    files = res.files(seg.info.colors, 0.5, background=seg.info.background)
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes({"summary.csv": summary, **files})))
    assert sorted(archive.namelist()) == ["a.grid.csv", "a.mask.png", "a.overlay.jpg", "a.spray.geojson", "summary.csv"]


def test_decode_image_refuses_bad_and_huge_files(photo):
    assert decode_image(photo.read_bytes()).shape == (720, 960, 3)
    for data, message in [(b"", "empty"), (b"GIF89a nonsense", "not an image"),
                          (photo.read_bytes()[:5000], "damaged or unreadable"),
                          (png_header(8000, 7000), "56.0 megapixels, over the limit of 50"),
                          (png_header(30000, 30000), "far larger than the limit")]:
        with pytest.raises(WeedsegError, match=message):
            decode_image(data)


def test_safe_name_never_keeps_folders_or_odd_characters():
    taken: set[str] = set()
    names = [safe_name(n, taken) for n in ["../../etc/passwd", "C:\\fields\\IMG 01.JPG", "a.jpg", "a.png",
                                           "<b>x</b>.tif", "", "..", "a.b.%%"]]
    assert names == ["passwd", "IMG_01.JPG", "a.jpg", "a-2.png", "b.tif", "image", "image-2", "a_b"]


def test_weedseg_app_runs_streamlit_on_the_page(models, monkeypatch):
    calls = []
    monkeypatch.setattr("os.execv", lambda exe, argv: calls.append(argv))
    monkeypatch.delenv("WEEDSEG_MODELS", raising=False)
    assert main(["app", "--port", "8642", "--models", str(models)]) is None
    argv = calls[0]
    assert argv[1:4] == ["-m", "streamlit", "run"] and Path(argv[4]) == APP
    assert argv[argv.index("--server.port") + 1] == "8642" and argv[argv.index("--server.headless") + 1] == "true"
    assert os.environ["WEEDSEG_MODELS"] == str(models.resolve())
    assert build_parser().parse_args(["app"]).port == 8501
    assert main(["app", "--models", str(models / "missing")]) == 2
