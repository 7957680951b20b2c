"""`weedseg predict`: folder trees, bad files, resume, tiling, odd inputs, GeoTIFF, atomic outputs, portable names.

Runs on the inference-only install: nothing here imports torch or the trainer (the shipped ONNX model serves)."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, TiffImagePlugin, TiffTags

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data.io import read_rgb
from weedseg.infer import atomic, outdir, pictures, pipeline, session
from weedseg.infer.geo import GroundOptions, describe_ground, read_geo_tags
from weedseg.infer.metadata import ModelInfo
from weedseg.infer.pictures import read_mask
from weedseg.infer.pipeline import Job, PredictOptions, Predictor, plan_jobs, predict_path
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.spray import SpraySettings
from weedseg.infer.tiling import predict_logits, predict_tiled, upsample_argmax


@pytest.fixture(scope="module")
def model() -> Path:
    """The shipped model (no trainer needed)."""
    return DEFAULT_MODEL


@pytest.fixture(scope="module")
def field_image(peanut_root) -> np.ndarray:
    """A real field photo, downsized to 320 x 240 (found without opening the dataset, which needs torch)."""
    photo = sorted((peanut_root / "images").glob("*.jpg"))[0]
    return cv2.resize(read_rgb(photo), (320, 240), interpolation=cv2.INTER_AREA)


class FakeSegmenter:
    """A Segmenter without a model, for tests of the pipeline around it: 'weed' where red dominates, else soil."""

    def __init__(self, folder: Path, short_side: int = 64) -> None:
        self.path = folder / "fake.onnx"
        self.path.write_bytes(b"not a model: only hashed for the run record")
        self.info = ModelInfo("fake", ["soil", "crop", "weed"], [[0, 0, 0], [0, 255, 0], [255, 0, 0]], [0.5] * 3,
                              [0.25] * 3, 32, short_side, "test")
        self.calls = 0
        self.tta = None
        self.familiarity = None  # no familiarity statistics

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / 255.0

    def run(self, batch: np.ndarray, features: list[np.ndarray] | None = None) -> np.ndarray:
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
    seg = Segmenter(model, device="cpu", engine="onnxruntime")
    x = seg.model_input(field_image)  # 320 x 240 at native resolution
    whole = predict_logits(x, seg.run, tile=512, overlap=0, batch_size=1, multiple=32)
    tiled = predict_logits(x, seg.run, tile=128, overlap=48, batch_size=3, multiple=32)
    assert tiled.shape == whole.shape == (3, 240, 320)
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.97


def test_flip_tta_averages_the_mirror_image_and_is_mirror_symmetric(model, field_image):
    plain = Segmenter(model, device="cpu", engine="onnxruntime")
    tta = Segmenter(model, device="cpu", engine="onnxruntime", tta="flip")
    x = plain.model_input(field_image)[None]
    mirror = np.ascontiguousarray(x[..., ::-1])
    np.testing.assert_allclose(tta.run(x), (plain.run(x) + plain.run(mirror)[..., ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(tta.run(mirror), tta.run(x)[..., ::-1], atol=1e-4)
    assert not np.allclose(plain.run(mirror), plain.run(x)[..., ::-1], atol=1e-4)  # the model alone is not


def test_rotate_tta_runs_the_exported_model_on_quarter_turned_inputs(model, field_image):
    """Quarter turns swap height and width: the ONNX model takes them, and the mean treats a turned photo alike."""
    seg = Segmenter(model, device="cpu", engine="onnxruntime", tta="rotate")
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
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(1).normal(size=(3, 29, 37)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=(301, 333), mode="bilinear", align_corners=False)
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
    Image.new("RGB", (32, 32)).save(tmp_path / "2.png")  # replaced since: predicted again
    row = predict_path(tmp_path, out, seg, PredictOptions(), progress=False).rows[2]
    assert row["status"] == "predicted" and read_mask(out / "2.mask.png").shape == (32, 32)


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


# --- portable names and imports

def test_output_names_are_compared_ignoring_case(tmp_path):
    """a.jpg and A.JPG (and a.png beside them, SUB/e.png beside sub/e.png) never share an output on a
    case-insensitive volume."""
    names = ["a.jpg", "A.JPG", "a.png", "b.png", "c.jpg", "C.JPG.png", "d.jpg", "sub/e.png", "SUB/e.png"]
    jobs = plan_jobs([tmp_path / n for n in names], tmp_path, tmp_path / "out", "jpg")
    for kind in ("mask", "overlay", "grid"):
        paths = [str(getattr(j, kind)).casefold() for j in jobs]
        assert len(set(paths)) == len(paths), paths
    by_name = {j.name: j.mask.relative_to(tmp_path / "out").as_posix() for j in jobs}
    assert by_name["d.jpg"] == "d.mask.png" and by_name["b.png"] == "b.mask.png"
    assert by_name["a.png"] == "a.png.mask.png"  # its stem is a.jpg's and A.JPG's: suffix kept
    assert by_name["C.JPG.png"] == "C.JPG.png.mask.png" and by_name["c.jpg"] == "c.mask.png"  # named as c.jpg's stem
    assert by_name["a.jpg"].startswith("a.jpg-") and by_name["A.JPG"].startswith("A.JPG-")  # still equal but for case
    assert plan_jobs([tmp_path / "a.jpg"], tmp_path, tmp_path / "out", "jpg")[0].mask.name == "a.mask.png"


def test_paths_with_spaces_and_non_ascii_names(tmp_path):
    root = tmp_path / "Feld 3 – Süd" / "Erdnüsse 2026"
    root.mkdir(parents=True)
    names = ["föto 1.png", "写真.png", "a b.PNG"]
    for i, name in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 40, 3), np.uint8)).save(root / name)
    seg, out = FakeSegmenter(tmp_path), tmp_path / "Ausgabe ü"
    summary = predict_path(root, out, seg, PredictOptions(), progress=False)
    assert sorted(r["image"] for r in summary.rows) == sorted(names)
    assert all(r["status"] == "predicted" and (out / r["mask"]).is_file() for r in summary.rows)
    assert set(read_summary(out)) == set(names)
    again = predict_path(root, out, seg, PredictOptions(), progress=False)
    assert {r["status"] for r in again.rows} == {"done before"}


def test_import_and_predict_without_fcntl_or_torch(tmp_path, field_image):
    """What Windows lacks (fcntl) and the inference-only install lacks (torch): weedseg.infer and predict need neither."""
    Image.fromarray(field_image).save(tmp_path / "a photo.jpg")
    script = ("import sys; sys.modules['fcntl'] = None; sys.modules['torch'] = None\n"
              "import weedseg.infer\n"
              "from weedseg.cli import main\n"
              f"code = main(['predict', {str(tmp_path / 'a photo.jpg')!r}, '--out', {str(tmp_path / 'out')!r},"
              " '--outputs', 'mask', '--engine', 'onnxruntime'])\n"
              "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert read_mask(tmp_path / "out" / "a photo.mask.png").shape == (240, 320)


# --- resume from the run journal

def photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)).save(folder / f"{i}.png")
    return folder


def test_a_rerun_reuses_the_journal_rows_and_reads_no_mask(tmp_path, monkeypatch):
    seg, out = FakeSegmenter(tmp_path), tmp_path / "out"
    first = predict_path(photos(tmp_path / "in"), out, seg, PredictOptions(), progress=False).rows
    journal = [json.loads(line) for line in (out / outdir.JOURNAL).read_text().splitlines()]
    assert sorted(e["image"] for e in journal) == ["0.png", "1.png", "2.png"]
    seg.calls = 0
    monkeypatch.setattr(pictures, "read_mask", lambda path: pytest.fail(f"{path} was read"))
    again = predict_path(tmp_path / "in", out, seg, PredictOptions(), progress=False).rows
    assert seg.calls == 0 and [r["status"] for r in again] == ["done before"] * 3
    assert [{**r, "status": ""} for r in again] == [{**r, "status": ""} for r in first]
    os.utime(tmp_path / "in" / "1.png", ns=(1, 1))  # the photo changed since: done-ness is from the journal
    rows = predict_path(tmp_path / "in", out, seg, PredictOptions(), progress=False).rows
    assert [r["status"] for r in rows] == ["done before", "predicted", "done before"] and seg.calls == 1


def test_a_killed_run_loses_at_most_the_image_in_flight(tmp_path):
    """The journal line of an image is appended after its outputs; a line cut by a kill is dropped, and an image
    without a whole line is predicted again, even though its mask is there."""
    seg, out = FakeSegmenter(tmp_path), tmp_path / "out"
    predict_path(photos(tmp_path / "in"), out, seg, PredictOptions(), progress=False)
    journal = out / outdir.JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # killed while appending the third line
    (out / "summary.csv").unlink()
    rows = predict_path(tmp_path / "in", out, seg, PredictOptions(), progress=False).rows
    last = lines[2].decode()
    redone = next(r for r in rows if f'"{r["image"]}"' in last)
    assert redone["status"] == "predicted" and sum(r["status"] == "done before" for r in rows) == 2
    assert journal.read_bytes().endswith(b"\n") and len(journal.read_bytes().splitlines()) == 3
    assert set(read_summary(out)) == {"0.png", "1.png", "2.png"}


def test_other_spray_settings_redo_rows_and_grids_from_the_masks(tmp_path):
    seg, out = FakeSegmenter(tmp_path), tmp_path / "out"
    predict_path(photos(tmp_path / "in"), out, seg, PredictOptions(), progress=False)
    masks = {p: p.stat().st_mtime_ns for p in out.glob("*.mask.png")}
    seg.calls = 0
    rows = predict_path(tmp_path / "in", out, seg, PredictOptions(grid_cell=16, spray=SpraySettings(5.0)),
                        progress=False).rows
    assert seg.calls == 0 and {r["status"] for r in rows} == {"done before"}
    assert {r["cells"] for r in rows} == {12} and len(list(csv.DictReader(open(out / "0.grid.csv")))) == 12
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.mask.png")} == masks
    predict_path(tmp_path / "in", out, seg, PredictOptions(overwrite=True), progress=False)
    assert len((out / outdir.JOURNAL).read_text().splitlines()) == 3  # emptied, then one line per image


# --- the stages and their extension points

def test_rows_are_reported_from_one_thread(tmp_path):
    seg, threads = FakeSegmenter(tmp_path), []
    predictor = Predictor(seg, PredictOptions(batch_size=2, workers=3))
    folder = photos(tmp_path / "in", 7)
    jobs = plan_jobs(sorted(folder.glob("*.png")), folder, tmp_path / "out", "jpg")
    predictor.run(jobs, tmp_path / "out", lambda job, row: threads.append(threading.current_thread().name), False)
    assert len(threads) == 7 and set(threads) == {"weedseg-report"}


def test_extension_points_add_outputs_routes_and_fields(tmp_path, monkeypatch):
    """Another output kind (IMAGE_OUTPUTS), a file handled whole by another path (routes) and summary fields from
    the model call (model_fields, extra_columns) plug in without touching the stages."""
    def write_count(result, info):
        atomic.atomic_write(result.job.sibling(".count.txt"), str(int(result.mask.sum())).encode())

    monkeypatch.setitem(pipeline.IMAGE_OUTPUTS, "count",
                        pipeline.ImageOutput(lambda job, row: [job.sibling(".count.txt")], write_count))
    folder = photos(tmp_path / "in", 2)
    (folder / "huge.png").write_bytes(b"too large to read at once")
    seg = FakeSegmenter(tmp_path)
    predictor = Predictor(seg, PredictOptions(outputs=("mask", "count")))
    predictor.routes.append(lambda job: (lambda j: {"width": 1, "height": 1}) if job.name == "huge.png" else None)
    predictor.model_fields.append(lambda x, logits: [{"score": round(float(lg.mean()), 3)} for lg in logits])
    predictor.extra_columns = ("score",)
    jobs = plan_jobs(sorted(folder.glob("*.png")), folder, tmp_path / "out", "jpg")
    rows = {}
    predictor.run(jobs, tmp_path / "out", lambda job, row: rows.__setitem__(job.name, row), False)
    assert rows["huge.png"]["status"] == "predicted" and rows["huge.png"]["width"] == 1
    assert all("score" in rows[n] and (tmp_path / "out" / f"{n[0]}.count.txt").is_file() for n in ("0.png", "1.png"))
    assert not (tmp_path / "out" / "0.overlay.jpg").exists()


def test_kill_9_mid_run_then_a_rerun_predicts_only_the_rest(tmp_path, field_image):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.roll(field_image, 7 * i, axis=1)).save(folder / f"{i:02d}.jpg")
    out = tmp_path / "out"
    args = ["predict", str(folder), "--out", str(out), "--engine", "onnxruntime", "--short-side", "96",
            "--threads", "1", "--workers", "1", "--batch-size", "1"]
    run = subprocess.Popen([sys.executable, "-m", "weedseg.cli", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    journal = out / outdir.JOURNAL
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
            run.kill()  # SIGKILL
        time.sleep(0.02)
    run.wait()
    finished = {json.loads(line)["image"] for line in journal.read_text().splitlines() if line.endswith("}")}
    assert run.returncode == -9 and 3 <= len(finished) < 40
    assert main(args) == 0
    rows = read_summary(out)
    assert {n for n, r in rows.items() if r["status"] == "done before"} == finished
    assert len(rows) == 40 and all(read_mask(out / r["mask"]).shape == (240, 320) for r in rows.values())


def test_a_jpeg_seen_at_half_size_or_less_is_decoded_reduced_unless_drawn_on(tmp_path, field_image, monkeypatch):
    opened = []
    big = cv2.resize(field_image, (1280, 960))
    Image.fromarray(big).save(tmp_path / "a.jpg", quality=92)
    seg = FakeSegmenter(tmp_path, short_side=240)
    job = plan_jobs([tmp_path / "a.jpg"], tmp_path, tmp_path / "out", "jpg")[0]
    reduced = Predictor(seg, PredictOptions(outputs=("mask",))).prepare(job)
    full = Predictor(seg, PredictOptions()).prepare(job)  # the overlay is drawn on the full photo
    assert reduced.rgb is None and full.rgb.shape == (960, 1280, 3)
    assert reduced.size == full.size == (960, 1280) and reduced.x.shape == full.x.shape == (3, 240, 320)
    assert np.abs(reduced.x - full.x).mean() < 0.02  # DCT scaling by 1/4, against an area resize alone
    with monkeypatch.context() as m:
        real = JpegImagePlugin.JpegImageFile.draft
        m.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda im, mode, size: opened.append(size) or real(im, mode, size))
        Predictor(seg, PredictOptions(outputs=("mask",))).prepare(job)
    assert opened == [(320, 240)]
    summary = predict_path(tmp_path / "a.jpg", tmp_path / "out", seg, PredictOptions(outputs=("mask",)), progress=False)
    assert summary.rows[0]["status"] == "predicted" and read_mask(tmp_path / "out" / "a.mask.png").shape == (960, 1280)
