"""Hostile inputs, round three: files in the wrong encoding, lying headers, options out of range, model files
that describe themselves wrongly, odd folder trees. Each gets one clear line (or a correct result), never a
traceback or a silently wrong mask; docs/reliability.md says what each class of input gets.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data.check import check_dataset
from weedseg.data.io import read_rgb, scan_images
from weedseg.data.layouts import FOLDER_TOML_EXAMPLE, folder_layout
from weedseg.export import ParityReport, export_checkpoint, part_path, save_with_metadata
from weedseg.infer.metadata import ModelInfo
from weedseg.infer.session import Segmenter
from weedseg.resources import APP_SCRIPT

from train_fixtures import COLORS, SOIL_CROP_WEED as CLASSES

TOML = "\n".join(line[2:] for line in FOLDER_TOML_EXAMPLE.splitlines())


def jpeg_bytes(size: tuple[int, int] = (96, 64), seed: int = 0) -> bytes:
    """A small colour JPEG (random pixels) of `size` (width, height)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def lying_jpeg(width: int = 7000, height: int = 7000) -> bytes:
    """A complete 96 x 64 JPEG whose frame header claims `width` x `height`: its data ends long before its rows do."""
    data = bytearray(jpeg_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def folder_dataset(root: Path, images: dict[str, bytes], masks: list[str], toml: bytes | None = None) -> Path:
    """A folder dataset: the given image files, an all-soil colour mask per name in `masks`, and dataset.toml."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    for name in masks:
        Image.new("RGB", (96, 64)).save(root / "masks" / name)
    (root / "dataset.toml").write_bytes(TOML.encode() if toml is None else toml)
    return root


# --- dataset.toml in another encoding ------------------------------------------------------------------------

@pytest.mark.parametrize("kind, data, message", [
    ("cp1252", ("# parcelle de l'été\n" + TOML).encode("cp1252"), "is not UTF-8 text (byte 0xe9"),
    ("utf-16", TOML.encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    ("binary", bytes(range(256)) * 4, "is not UTF-8 text (byte 0x80")])
def test_dataset_toml_in_another_encoding_is_one_line(kind, data, message, checkpoint, tmp_path, capsys):
    root = folder_dataset(tmp_path / kind, {"0001.jpg": jpeg_bytes()}, ["0001.png"], data)
    with pytest.raises(WeedsegError, match=re.escape(message)):
        folder_layout(root)
    assert main(["dataset", "check", "--data-root", str(root)]) == 1
    assert message in capsys.readouterr().out
    assert main(["train", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "run")]) == 2
    assert main(["evaluate", str(checkpoint), "--dataset", "folder", "--data-root", str(root),
                 "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(message) == 2


def test_dataset_toml_with_a_utf8_byte_order_mark_is_read(tmp_path):
    root = folder_dataset(tmp_path / "bom", {"0001.jpg": jpeg_bytes()}, ["0001.png"],
                          ("\ufeff# parcelle de l'été\n" + TOML).encode())
    assert folder_layout(root).classes == CLASSES


# --- dataset check reads what training reads ------------------------------------------------------------------

def test_dataset_check_decodes_photos_whole_as_training_does(tmp_path):
    good = jpeg_bytes()
    root = folder_dataset(tmp_path / "d", {"0001.jpg": good, "0002.jpg": good[: len(good) // 2],
                                           "0003.jpg": lying_jpeg(96, 640)}, ["0001.png", "0002.png", "0003.png"])
    problems = check_dataset("folder", root).problems
    assert any("0002.jpg: damaged or unreadable image" in p for p in problems)
    assert any("0003.jpg" in p and "data ends before its 96 x 640 pixels do" in p for p in problems)
    assert not any("0001.jpg" in p for p in problems)


def test_images_differing_only_in_letter_case_are_reported_not_taken_for_unpaired(tmp_path):
    root = folder_dataset(tmp_path / "d", {"0003.jpg": jpeg_bytes(), "0003.JPG": jpeg_bytes(seed=1),
                                           "0004.jpg": jpeg_bytes(seed=2)}, ["0003.png", "0004.png", "0004.PNG"])
    problems = check_dataset("folder", root).problems
    assert "images 0003.JPG and 0003.jpg differ only in letter case, so the mask 0003.png would pair with each: " \
           "keep one of them" in problems
    assert "masks 0004.PNG and 0004.png differ only in letter case and both fit the image 0004.jpg: keep one " \
           "of them" in problems
    assert not any("has no mask" in p or "has no image" in p for p in problems)
    with pytest.raises(WeedsegError, match="0003.JPG and 0003.jpg differ only in letter case.*and 1 more"):
        folder_layout(root).samples()


def test_dataset_check_reads_and_prints_names_that_are_not_utf8(tmp_path, capsys):
    root = folder_dataset(tmp_path / "d", {os.fsdecode(b"\xff.jpg"): jpeg_bytes()}, [os.fsdecode(b"\xff.png")])
    (root / "images" / os.fsdecode(b"\xfe.jpg")).write_bytes(jpeg_bytes(seed=1))
    assert main(["dataset", "check", "--data-root", str(root)]) == 1  # OpenCV crashed on such a mask's path
    out = capsys.readouterr().out
    assert "1 images with masks" in out and "\\udcfe.jpg has no mask" in out


# --- images whose data does not fill their header --------------------------------------------------------------

def test_jpeg_whose_header_is_larger_than_its_data_is_refused(tmp_path):
    (tmp_path / "lie.jpg").write_bytes(lying_jpeg())
    with pytest.raises(WeedsegError, match="data ends before its 7000 x 7000 pixels do: truncated or with a wrong "
                                           "size in its header"):
        read_rgb(tmp_path / "lie.jpg")
    with pytest.raises(WeedsegError, match="data ends before"):
        read_rgb(io.BytesIO(lying_jpeg(96, 640)), name="")  # as the page reads uploads
    assert read_rgb(io.BytesIO(jpeg_bytes())).shape == (64, 96, 3)


# --- options out of range: the parser says so, exit status 2 -----------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train", "--crop", "0"], "--crop: must be from 32 to 4096, got 0"),
    (["train", "--iterations", "-5"], "--iterations: must be at least 1, got -5"),
    (["train", "--lr", "inf"], "--lr: must be a finite number above 0, got inf"),
    (["train", "--train-fraction", "0"], "--train-fraction: must be a finite number above 0"),
    (["pretrain", "--cells", "0"], "--cells: must be at least 1, got 0"),
    (["pretrain", "--mask-ratio", "1"], "--mask-ratio: must be above 0 and below 1, got 1"),
    (["evaluate", "x.pt", "--score-short-side", "-5"], "--score-short-side: must be from 1 to 4096, got -5"),
    (["experiment", "--seeds", "0"], "--seeds: must be at least 1, got 0"),
    (["export", "x.pt", "--out", "m.onnx", "--tolerance", "nan"], "--tolerance: must be a number at least 0, got nan"),
    (["predict", "x", "--out", "o", "--spray-threshold", "-1"], "--spray-threshold: must be a number from 0 to 100"),
    (["app", "--port", "99999"], "--port: must be from 1 to 65535, got 99999")])
def test_options_out_of_range_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_run_out_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    assert main([command, "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert f"--out {tmp_path / 'run'} is a file; give the folder for the run" in capsys.readouterr().err


def test_pretrain_resume_is_refused_only_for_options_given(tmp_path, capsys):
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "run")]) == 2  # no resume point there
    err = capsys.readouterr().err
    assert "cannot change them" not in err and "last.pt" in err
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "run"), "--method", "random"]) == 2
    assert "--method cannot change them" in capsys.readouterr().err


# --- export: folders, stale INT8 models, temporary names -----------------------------------------------------------

def test_export_to_a_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    import weedseg.export
    monkeypatch.setattr(weedseg.export, "load_checkpoint", lambda *a: pytest.fail("the export started"))
    with pytest.raises(WeedsegError, match="is a folder; give the model file to write"):
        export_checkpoint("x.pt", tmp_path, data=None)


def test_export_without_int8_removes_the_int8_model_of_the_one_it_replaces(checkpoint, model, peanut, tmp_path,
                                                                           capsys, monkeypatch):
    import weedseg.export

    def exported(ckpt, path, *args) -> ModelInfo:  # the same model, exported once for all tests
        Path(path).write_bytes(model.read_bytes())
        return Segmenter(model).info

    monkeypatch.setattr(weedseg.export, "export_onnx", exported)
    monkeypatch.setattr(weedseg.export, "check_parity", lambda *a: ParityReport(1, 0.0, 1.0))  # their own tests
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an older model")
    (tmp_path / "m.int8.onnx").write_bytes(b"its INT8 model")
    export_checkpoint(checkpoint, out, peanut, 64, check_images=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert "removed " + str(tmp_path / "m.int8.onnx") in capsys.readouterr().out
    assert out.read_bytes() == model.read_bytes()


def test_page_lists_no_export_leftovers_and_escapes_names_not_utf8(model, tmp_path, monkeypatch):
    temp = part_path(tmp_path / "model.onnx")
    assert temp.name.startswith(".model.onnx.") and temp.suffix == ".part"
    (tmp_path / "good.onnx").write_bytes(model.read_bytes())
    (tmp_path / os.fsdecode(b"\xff.onnx")).write_bytes(model.read_bytes())  # broke the whole page
    (tmp_path / ".model.4242.part.onnx").write_bytes(b"half a model")  # what older exports left
    monkeypatch.setenv("WEEDSEG_MODELS", str(tmp_path))
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox[0].options == ["good.onnx", "\\xff.onnx"]
    at.sidebar.selectbox[0].set_value("\\xff.onnx").run()
    assert not at.exception
    assert at.error[0].value == (f"Cannot use the model \\xff.onnx: {tmp_path}/\\xff.onnx: the model's path is not "
                                 "valid UTF-8, which the inference engines cannot open; rename the file (or its folder)")


# --- ONNX models that describe themselves wrongly ----------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"weedseg.normalization": '{"mean": [NaN, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}'}, "3 finite means"),
    ({"weedseg.normalization": '{"mean": [0.5, 0.5, 0.5], "std": [Infinity, 0.25, 0.25]}'}, "finite positive stds"),
    ({"weedseg.classes": '["soil", "weed", "weed"]'}, "names the class 'weed' twice"),
    ({"weedseg.classes": json.dumps([f"c{i}" for i in range(300)]),
      "weedseg.colors": json.dumps([[0, 0, 0]] * 300)}, "300 classes; weedseg masks are 8-bit, so at most 255")])
def test_onnx_metadata_that_would_give_wrong_masks_is_refused(change, message):
    props = {**ModelInfo("m", CLASSES, COLORS, [0.5] * 3, [0.25] * 3, 32, 64, "1").to_props(), **change}
    with pytest.raises(WeedsegError, match=message):
        ModelInfo.from_props(props, "m.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter, as weedseg export uses it
def test_onnx_model_whose_output_is_not_its_input_size_is_refused_at_load(model, tmp_path):
    raw = tmp_path / "raw.onnx"
    larger = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Upsample(scale_factor=2))
    dynamic = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(larger, torch.zeros(1, 3, 32, 32), str(raw), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": dynamic, "logits": {0: "batch"}})
    save_with_metadata(raw, tmp_path / "m.onnx", Segmenter(model).info)
    with pytest.raises(WeedsegError, match="model outputs 1 x 3 x 128 x 192, not 1 x 3 x 64 x 96"):
        Segmenter(tmp_path / "m.onnx")


# --- scanning odd folder trees -------------------------------------------------------------------------------------

def test_links_are_followed_once_and_broken_ones_reported(tmp_path):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.jpg").write_bytes(jpeg_bytes())
    (root / "linked").symlink_to(root / "real")  # read here (first in name order) ...
    (root / "x").mkdir()
    (root / "x" / "again").symlink_to(root / "real")  # ... not again
    (root / "real" / "up").symlink_to(root)  # a loop
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    found, skipped = scan_images(root)
    assert found == [root / "linked" / "a.jpg"]
    assert sorted(skipped) == sorted([
        f"{root / 'gone.jpg'}: a link to {tmp_path / 'nowhere.jpg'}, which does not exist; skipped",
        f"{root / 'loop.jpg'}: a link in a loop ({root / 'loop.jpg'}); skipped",
        f"{root / 'linked' / 'up'}: links to {root}, a folder it is inside (a loop); skipped",
        f"{root / 'real'}: the same folder as {root / 'linked'}, whose images are read there; skipped",
        f"{root / 'x' / 'again'}: the same folder as {root / 'linked'}, whose images are read there; skipped"])


# --- predict over hostile names and folders ----------------------------------------------------------------------

def read_summary(out: Path) -> dict[str, dict]:
    """summary.csv by image, read as strict UTF-8."""
    return {row["image"]: row for row in csv.DictReader(io.StringIO((out / "summary.csv").read_bytes().decode()))}


def test_predict_names_not_utf8_long_or_named_as_outputs(model, tmp_path, capsys):
    photos = tmp_path / "in"
    for name in ["a.jpg", "a.mask.png/b.jpg", "summary.csv/c.jpg", os.fsdecode(b"\xff\xfe.jpg"), "x" * 236 + ".jpg"]:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(jpeg_bytes())
    (photos / "lie.jpg").write_bytes(lying_jpeg())
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(photos), "--model", str(model), "--out", str(out)]) == 1
    rows = read_summary(out)
    assert {name: row["status"] for name, row in rows.items()} == {
        "a.jpg": "predicted", "a.mask.png/b.jpg": "predicted", "\\xff\\xfe.jpg": "predicted",
        "x" * 236 + ".jpg": "predicted", "lie.jpg": "failed", str(photos / "gone.jpg"): "failed",
        str(photos / "summary.csv"): "failed"}
    assert rows["a.jpg"]["mask"] == "a.jpg.mask.png" and rows["a.mask.png/b.jpg"]["mask"] == "a.mask.png/b.mask.png"
    assert "data ends before its 7000 x 7000 pixels do" in rows["lie.jpg"]["error"]
    assert "a folder named as summary.csv" in rows[str(photos / "summary.csv")]["error"]
    assert (out / os.fsdecode(b"\xff\xfe.mask.png")).is_file() and (out / ("x" * 236 + ".spray.geojson")).is_file()
    assert not list(out.rglob("*.part")) and "Traceback" not in capsys.readouterr().err


def test_photo_deeper_than_the_recursion_limit_is_predicted(model, tmp_path):
    folder = str(tmp_path / "in")
    os.mkdir(folder)
    for _ in range(400):  # os.makedirs and Path.mkdir(parents=True) recurse once per level
        folder += "/a"
        os.mkdir(folder)
    Path(folder, "x.jpg").write_bytes(jpeg_bytes())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # below the depth: a tree quick to make, which pytest can still remove
    try:
        assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "out")]) == 0
    finally:
        sys.setrecursionlimit(limit)


def test_overwrite_leaves_only_this_runs_outputs(model, tmp_path):
    for name in ["a.jpg", "b.jpg", "sub/c.jpg"]:
        (tmp_path / "first" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "first" / name).write_bytes(jpeg_bytes())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "z.jpg").write_bytes(jpeg_bytes(seed=1))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "first"), "--model", str(model), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("the user's own")
    (out / "prelabels").mkdir()
    (out / "prelabels" / "coco.json").write_text("{}")  # as `--outputs prelabels` writes them
    assert main(["predict", str(tmp_path / "other"), "--model", str(model), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "notes.txt", "spray_summary.json", "summary.csv", "weedseg-run.json", "z.grid.csv", "z.mask.png",
        "z.overlay.jpg", "z.spray.geojson"]
    assert list(read_summary(out)) == ["z.jpg"]


# --- the page ----------------------------------------------------------------------------------------------------

def test_one_upload_failing_after_segmentation_leaves_the_others_and_the_summary(model, tmp_path, monkeypatch):
    from weedseg.infer.image import SegmentedImage

    summarize = SegmentedImage.summarize

    def fails_for_bad(self, *args, **kwargs):
        if self.name == "bad.jpg":  # as a GeoTIFF with a NaN pixel scale did
            raise ValueError("cannot convert float NaN to integer")
        return summarize(self, *args, **kwargs)

    monkeypatch.setattr(SegmentedImage, "summarize", fails_for_bad)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(model.read_bytes())
    monkeypatch.setenv("WEEDSEG_MODELS", str(tmp_path / "models"))
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    at.file_uploader[0].set_value([("bad.jpg", jpeg_bytes(), "image/jpeg"),
                                   ("good.jpg", jpeg_bytes(seed=1), "image/jpeg")]).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["`bad.jpg` could not be segmented: ValueError: cannot convert float NaN "
                                           "to integer"]
    table = at.dataframe[-1].value
    assert list(table.iloc[:, 0]) == ["bad.jpg", "good.jpg"] and list(table.iloc[:, 1]) == ["failed", "predicted"]
