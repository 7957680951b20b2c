"""`weedseg predict`: folder trees, bad files, resume, tiling, odd inputs, GeoTIFF, atomic outputs."""

from __future__ import annotations

import csv
import logging
import struct
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, TiffImagePlugin, TiffTags

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint
from weedseg.cli import main
from weedseg.data.io import read_rgb
from weedseg.export import export_onnx
from weedseg.infer import session
from weedseg.infer.geo import GroundOptions, describe_ground, read_geo_tags
from weedseg.infer.metadata import ModelInfo
from weedseg.infer.outputs import read_mask
from weedseg.infer.pipeline import Job, PredictOptions, Predictor, predict_path
from weedseg.infer.session import Segmenter
from weedseg.infer.tiling import predict_logits, predict_tiled, upsample_argmax


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory) -> Path:
    """The trained test model exported to ONNX (input short side 128, to keep the tests fast)."""
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(load_checkpoint(trained_run / "best.pt"), path, input_short_side=128)
    return path


@pytest.fixture(scope="module")
def field_image(peanut) -> np.ndarray:
    """A real field photo, downsized to 320 x 240."""
    return cv2.resize(read_rgb(peanut.splits["val"][0].image), (320, 240), interpolation=cv2.INTER_AREA)


class FakeSegmenter:
    """A Segmenter without a model, for tests of the pipeline around it: 'weed' where red dominates, else soil."""

    def __init__(self, folder: Path, short_side: int = 64) -> None:
        self.path = folder / "fake.onnx"
        self.path.write_bytes(b"not a model: only hashed for the run record")
        self.info = ModelInfo("fake", ["soil", "crop", "weed"], [[0, 0, 0], [0, 255, 0], [255, 0, 0]], [0.5] * 3,
                              [0.25] * 3, 32, short_side, "test")
        self.calls = 0
        self.tta = None

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / 255.0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        logits = np.empty((len(batch), 3, *batch.shape[2:]), np.float32)  # nothing else: no model's working memory
        np.subtract(batch[:, 0], batch[:, 1], out=logits[:, 2])
        np.negative(logits[:, 2], out=logits[:, 0])
        logits[:, 1] = -1.0
        return logits


def job_for(path: Path, out: Path) -> Job:
    return Job(0, path, path.name, out / f"{path.stem}.mask.png", out / f"{path.stem}.overlay.jpg",
               out / f"{path.stem}.grid.csv")


def png_bomb(path: Path) -> None:
    """A tiny PNG whose header claims 30000 x 30000 pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


BAD_FILES = ["bad/empty.jpg", "bad/text.png", "bad/truncated.jpg", "bad/corrupt.png", "bad/bomb.png"]
GREY_FILES = ["row2/grey.png", "row2/grey16.png"]  # no colour: refused, a colour model would find no weeds


@pytest.fixture()
def tree(tmp_path, field_image) -> Path:
    """A field-image folder tree with odd formats and every kind of bad file."""
    root = tmp_path / "flight"
    (root / "row1").mkdir(parents=True)
    (root / "row2" / "deep").mkdir(parents=True)
    (root / "bad").mkdir()
    Image.fromarray(field_image).save(root / "row1" / "a.jpg", quality=92)
    Image.fromarray(field_image[:, ::-1]).save(root / "row1" / "a.png")  # same stem, other format
    Image.fromarray(field_image[:200, :150]).save(root / "row2" / "deep" / "b.tiff")
    Image.fromarray(cv2.cvtColor(field_image, cv2.COLOR_RGB2GRAY)).save(root / "row2" / "grey.png")
    Image.fromarray(np.dstack([field_image, np.full(field_image.shape[:2], 200, np.uint8)])).save(root / "row2" / "rgba.png")
    Image.fromarray(cv2.cvtColor(field_image, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257).save(root / "row2" / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 240 wide, 320 high
    Image.fromarray(field_image).save(root / "row2" / "rotated.jpg", exif=exif.tobytes())

    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "text.png").write_text("this is not an image")
    jpeg = (root / "row1" / "a.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = bytearray((root / "row1" / "a.png").read_bytes())
    png[png.find(b"IDAT") + 40 : png.find(b"IDAT") + 60] = bytes(20)
    (root / "bad" / "corrupt.png").write_bytes(bytes(png))
    png_bomb(root / "bad" / "bomb.png")
    (root / "notes.txt").write_text("not an image suffix: ignored")
    return root


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def test_folder_tree_with_bad_files(tree, model, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(tree), "--model", str(model), "--out", str(out)])
    assert code == 1  # some images failed
    err = capsys.readouterr().err
    rows = read_summary(out)
    good = {"row1/a.jpg": (320, 240), "row1/a.png": (320, 240), "row2/deep/b.tiff": (150, 200),
            "row2/rgba.png": (320, 240), "row2/rotated.jpg": (240, 320)}
    assert set(rows) == set(good) | set(BAD_FILES) | set(GREY_FILES)
    for name, (w, h) in good.items():
        row = rows[name]
        assert row["status"] == "predicted", row
        assert (int(row["width"]), int(row["height"])) == (w, h)
        assert abs(sum(float(row[f"{c}_pct"]) for c in ("soil", "crop", "weed")) - 100) < 0.01
        mask = read_mask(out / row["mask"])
        assert mask.shape == (h, w) and mask.max() <= 2
        assert int(row["weed_pixels"]) == int((mask == 2).sum())
        base = out / row["mask"].removesuffix(".mask.png")
        assert Image.open(f"{base}.overlay.jpg").size == (w, h)
        grid = list(csv.DictReader(open(f"{base}.grid.csv")))
        assert len(grid) == -(-w // 256) * -(-h // 256)
    assert rows["row1/a.jpg"]["mask"] == "row1/a.jpg.mask.png"  # same stem as a.png: suffix kept
    assert rows["row2/deep/b.tiff"]["mask"] == "row2/deep/b.mask.png"
    for name in BAD_FILES:
        assert rows[name]["status"] == "failed" and rows[name]["error"], rows[name]
        assert name in err
    assert "decompression bomb" in rows["bad/bomb.png"]["error"]
    assert all("no colour" in rows[name]["error"] for name in GREY_FILES)
    assert not list(out.rglob("*.part")), "temporary files left behind"


def test_resume_skips_done_images_and_overwrite_redoes_them(tree, model, tmp_path):
    for bad in BAD_FILES + GREY_FILES:
        (tree / bad).unlink()
    out = tmp_path / "out"
    args = ["predict", str(tree), "--model", str(model), "--out", str(out)]
    assert main(args) == 0
    first = read_summary(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mask.png")}
    (out / "row2" / "rgba.mask.png").unlink()  # as if the run had been interrupted there

    assert main(args) == 0
    rows = read_summary(out)
    assert rows["row2/rgba.png"]["status"] == "predicted"
    assert {r["status"] for n, r in rows.items() if n != "row2/rgba.png"} == {"done before"}
    assert all(rows[n]["weed_pct"] == first[n]["weed_pct"] for n in rows)  # rows rebuilt from the masks
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.name != "rgba.mask.png")

    assert main(args + ["--overwrite"]) == 0
    assert {r["status"] for r in read_summary(out).values()} == {"predicted"}


def test_tiled_prediction_agrees_with_whole_image(model, field_image):
    seg = Segmenter(model, device="cpu")
    x = seg.model_input(field_image)  # 320 x 240 at native resolution
    whole = predict_logits(x, seg.run, tile=512, overlap=0, batch_size=1, multiple=32)
    tiled = predict_logits(x, seg.run, tile=128, overlap=48, batch_size=3, multiple=32)
    assert tiled.shape == whole.shape == (3, 240, 320)
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.97


def test_flip_tta_averages_the_mirror_image_and_is_mirror_symmetric(model, field_image):
    plain, tta = Segmenter(model, device="cpu"), Segmenter(model, device="cpu", tta="flip")
    x = plain.model_input(field_image)[None]
    mirror = np.ascontiguousarray(x[..., ::-1])
    np.testing.assert_allclose(tta.run(x), (plain.run(x) + plain.run(mirror)[..., ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(tta.run(mirror), tta.run(x)[..., ::-1], atol=1e-4)
    assert not np.allclose(plain.run(mirror), plain.run(x)[..., ::-1], atol=1e-4)  # the model alone is not


def test_rotate_tta_runs_the_exported_model_on_quarter_turned_inputs(model, field_image):
    """Quarter turns swap height and width: the ONNX model takes them, and the mean treats a turned photo alike."""
    seg = Segmenter(model, device="cpu", tta="rotate")
    x = seg.model_input(field_image)[None]
    assert x.shape[-2] != x.shape[-1]
    turned = np.ascontiguousarray(np.rot90(x, 1, axes=(-2, -1)))
    np.testing.assert_allclose(seg.run(turned), np.rot90(seg.run(x), 1, axes=(-2, -1)), atol=1e-4)


def test_tile_blending_is_exact_and_streams_bounded_bands():
    """With a per-pixel 'model' every tiling must give exactly the whole-image result."""
    x = np.random.default_rng(0).normal(size=(3, 301, 419)).astype(np.float32)
    pixelwise = lambda b: np.concatenate([b, -b], axis=1)  # noqa: E731
    bands = []
    predict_tiled(x, pixelwise, lambda y, band: bands.append((y, band)), tile=96, overlap=32, batch_size=2, multiple=32)
    assert [y for y, _ in bands] == sorted(y for y, _ in bands) and bands[0][0] == 0
    assert all(band.shape[1] <= 96 and band.shape[2] == 419 for _, band in bands)
    blended = np.concatenate([band for _, band in bands], axis=1)
    np.testing.assert_allclose(blended, pixelwise(x[None])[0], atol=1e-5)


def test_native_resolution_large_image_is_tiled(model, field_image, tmp_path):
    big = cv2.resize(field_image, (700, 500))
    Image.fromarray(big).save(tmp_path / "big.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "big.png"), "--model", str(model), "--out", str(out),
                 "--short-side", "0", "--tile", "256", "--overlap", "64"]) == 0
    assert read_mask(out / "big.mask.png").shape == (500, 700)


def test_upsample_argmax_matches_torch_bilinear():
    logits = np.random.default_rng(1).normal(size=(3, 29, 37)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(logits)[None], size=(301, 333), mode="bilinear", align_corners=False)
    got = upsample_argmax(logits, 301, 333, strip_rows=64)
    assert (got == ref[0].argmax(0).numpy()).mean() > 0.999


GEO_TAGS = {33550: ((0.05, 0.05, 0.0), TiffTags.DOUBLE),
            33922: ((0.0, 0.0, 0.0, 500000.0, 4100000.0, 0.0), TiffTags.DOUBLE),
            34735: ((1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), TiffTags.SHORT),
            34737: ("WGS 84 / UTM zone 33N|", TiffTags.ASCII)}  # 5 cm pixels in UTM zone 33N


def write_geotiff(path: Path, rgb: np.ndarray) -> Path:
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (value, kind) in GEO_TAGS.items():
        ifd[tag], ifd.tagtype[tag] = value, kind
    Image.fromarray(rgb).save(path, tiffinfo=ifd)
    return path


def test_geotiff_input_gives_georeferenced_mask(model, field_image, tmp_path):
    geo = GEO_TAGS
    write_geotiff(tmp_path / "ortho.tif", field_image)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "ortho.tif"), "--model", str(model), "--out", str(out)]) == 0
    mask_path = out / "ortho.mask.tif"
    assert read_mask(mask_path).shape == (240, 320)
    assert read_geo_tags(mask_path) == read_geo_tags(tmp_path / "ortho.tif") == geo


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "DEFAULT_MODEL", tmp_path / "absent.onnx")
    with pytest.raises(WeedsegError, match="no --model given.*weedseg export"):
        session.resolve_model_path(None)
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_each_ground_message_is_logged_once_whatever_the_threads(tmp_path, caplog):
    """Reader and writer threads both log ground units: the check and the note of a message are one step."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    predictor = Predictor(FakeSegmenter(tmp_path), PredictOptions())

    class SlowSet(set):
        def __contains__(self, key: object) -> bool:
            found = super().__contains__(key)
            time.sleep(0.05)  # widens the gap between looking a message up and noting it
            return found

    predictor.told = SlowSet()
    job = job_for(tmp_path / "a.png", tmp_path / "out")
    ground = describe_ground(job.path, GroundOptions())
    with caplog.at_level(logging.INFO, logger="weedseg.infer.pipeline"), ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: predictor.note_ground(job, ground), range(8)))
    assert sum("no ground sampling distance" in r.getMessage() for r in caplog.records) == 1


def test_a_geotiff_is_opened_once_to_decode_it(tmp_path, monkeypatch):
    """The reader takes the pixels, the GeoTIFF tags and the ground units from one opening of the file."""
    tif = write_geotiff(tmp_path / "ortho.tif", np.full((48, 64, 3), 90, np.uint8))
    job = Job(0, tif, "ortho.tif", tmp_path / "ortho.mask.tif", tmp_path / "ortho.overlay.jpg",
              tmp_path / "ortho.grid.csv")
    predictor = Predictor(FakeSegmenter(tmp_path), PredictOptions())
    opened, real_open = [], Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    item = predictor.prepare(job)
    assert len(opened) == 1
    assert item.rgb.shape == (48, 64, 3) and item.geo == GEO_TAGS
    assert (item.ground.source, item.ground.gsd_cm) == ("geotiff", pytest.approx(5.0))


def test_missing_grid_or_overlay_is_made_from_the_saved_mask_without_predicting(tmp_path):
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)).save(tmp_path / f"{i}.png")
    seg, out = FakeSegmenter(tmp_path), tmp_path / "out"
    predict_path(tmp_path, out, seg, PredictOptions(), progress=False)
    overlay = (out / "1.overlay.jpg").read_bytes()
    masks = {p: p.stat().st_mtime_ns for p in out.glob("*.mask.png")}
    (out / "0.grid.csv").unlink()
    (out / "1.overlay.jpg").unlink()
    seg.calls = 0
    summary = predict_path(tmp_path, out, seg, PredictOptions(), progress=False)
    assert [r["status"] for r in summary.rows] == ["done before"] * 3 and seg.calls == 0
    assert (out / "0.grid.csv").is_file() and (out / "1.overlay.jpg").read_bytes() == overlay
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.mask.png")} == masks
    Image.new("RGB", (32, 32)).save(tmp_path / "2.png")  # replaced since: its mask no longer fits it
    (out / "2.overlay.jpg").unlink()
    row = predict_path(tmp_path, out, seg, PredictOptions(), progress=False).rows[2]
    assert row["status"] == "failed" and "the image changed since it was predicted" in row["error"]


def test_the_memory_budget_counts_what_a_job_holds(tmp_path):
    """Predictor.cost, in bytes, covers what predict allocates for an image (numpy arrays, traced): here a small
    photo enlarged to the model's short side of 480, so the float32 input, its batch copy and the logits dominate."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    seg = FakeSegmenter(tmp_path, short_side=480)
    cost = Predictor(seg, PredictOptions()).cost(job_for(tmp_path / "a.png", tmp_path / "out"))
    tracemalloc.start()
    try:
        predict_path(tmp_path / "a.png", tmp_path / "out", seg, PredictOptions(workers=1), progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seg.calls == 1 and 640 * 480 * 24 < peak <= cost  # measured 36 bytes a model pixel: input, batch, logits
