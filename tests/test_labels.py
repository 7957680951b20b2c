"""`weedseg dataset import` and prelabels: exports built to each tool's published format (CVAT segmentation
masks and COCO 1.0, Label Studio JSON with brush RLE and percent polygons, COCO polygons and RLE), round trips
prelabels -> import with identical masks, and the bad inputs that must never give a silently wrong mask."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data.check import check_dataset
from weedseg.data.io import read_label_map
from weedseg.infer.session import DEFAULT_MODEL
from weedseg.labels import import_labels
from weedseg.labels.brush import decode_brush, encode_brush
from weedseg.labels.prelabels import Predicted, write_prelabels

pytest.importorskip("pycocotools")

CLASSES = ["soil", "crop", "weed"]
COLORS = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
W, H = 40, 30


def masks() -> dict[str, np.ndarray]:
    """Three photos' class masks: rectangles, a ragged blob and single pixels, crop and weed touching."""
    rng = np.random.default_rng(0)
    out = {}
    for n in range(3):
        m = np.zeros((H, W), np.uint8)
        m[3 + n:12, 5:20 + n] = 1
        m[10:25, 15 + n:35] = 2
        m[rng.integers(0, H, 20), rng.integers(0, W, 20)] = rng.integers(1, 3, 20)
        out[f"p{n}"] = m
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for stem in masks():
        Image.fromarray(np.random.default_rng(len(stem) + int(stem[1:])).integers(0, 255, (H, W, 3), np.uint8)).save(
            folder / f"{stem}.jpg")
    return folder


def imported(out: Path) -> dict[str, np.ndarray]:
    """The class masks of an imported dataset by photo stem, decoded as training decodes them, after checking
    that `weedseg dataset check` passes and the class names are kept."""
    report = check_dataset("folder", out)
    assert report.problems == []
    assert "soil = 0, crop = 1, weed = 2" in report.summary[1]
    return imported_masks(out)


def imported_masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_label_map(p) for p in sorted((out / "masks").glob("*.png"))}


def prelabels(tmp_path: Path) -> Path:
    return write_prelabels(tmp_path / "run", [Predicted(f"{stem}.jpg", m) for stem, m in masks().items()],
                           CLASSES, COLORS, "test-model")


def sdk_brush():
    """label-studio-converter's brush module (the published encoder), loaded alone: its package imports nltk."""
    spec = importlib.util.find_spec("label_studio_converter")
    if spec is None:
        pytest.skip("label-studio-converter is not installed (pip install 'weedseg[dev]')")
    path = Path(spec.submodule_search_locations[0]) / "brush.py"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("ls_brush", path))
    module.__spec__.loader.exec_module(module)
    return module


def test_brush_rle_matches_label_studio_converter() -> None:
    brush = sdk_brush()
    for m in masks().values():
        region = m == 2
        ours = encode_brush(region)
        assert ours == list(brush.mask2rle(region.astype(np.uint8) * 255))  # byte for byte the SDK's encoding
        assert ((brush.decode_rle(ours).reshape(H, W, 4)[..., 3] >= 128) == region).all()
        assert (decode_brush(ours, W, H, "t") == region).all()
    whole = np.ones((300, 300), bool)  # runs past 65,536 values
    assert (decode_brush(brush.mask2rle(whole.astype(np.uint8) * 255), 300, 300, "t") == whole).all()


def test_coco_rle_prelabels_round_trip(tmp_path: Path, photos: Path) -> None:
    folder = prelabels(tmp_path)
    out = tmp_path / "ds"
    import_labels(folder / "coco.json", "coco", out, images=photos)
    got = imported(out)
    assert got.keys() == masks().keys() and all((got[k] == m).all() for k, m in masks().items())
    assert "<Label value=\"weed\" background=\"#ff0000\"/>" in (folder / "labelstudio-config.xml").read_text()


def test_cvat_coco_export_round_trip(tmp_path: Path, photos: Path) -> None:
    """The prelabels' COCO file laid out as CVAT's COCO 1.0 export (annotations/instances_default.json, images/)."""
    export = tmp_path / "cvat-coco"
    (export / "annotations").mkdir(parents=True)
    shutil.copy(prelabels(tmp_path) / "coco.json", export / "annotations" / "instances_default.json")
    shutil.copytree(photos, export / "images")
    out = tmp_path / "ds"
    assert main(["dataset", "import", str(export), "--format", "cvat-coco", "--out", str(out)]) == 0
    got = imported(out)
    assert all((got[k] == m).all() for k, m in masks().items())


def test_labelstudio_prelabels_round_trip(tmp_path: Path, photos: Path) -> None:
    tasks = json.loads((prelabels(tmp_path) / "labelstudio.json").read_text())
    assert all(r["type"] == "brushlabels" and r["value"]["format"] == "rle" for t in tasks
               for r in t["predictions"][0]["result"])
    for n, task in enumerate(tasks, 1):  # what Label Studio exports once a user accepts the predictions
        task.update(id=n, annotations=[{"id": n, "result": task.pop("predictions")[0]["result"]}])
    export = tmp_path / "project.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "ds"
    import_labels(export, "labelstudio", out, images=photos)
    got = imported(out)
    assert got.keys() == masks().keys() and all((got[k] == m).all() for k, m in masks().items())


def coco_export(tmp_path: Path, annotations: list[dict], images: list[str] = ("p0.jpg",)) -> Path:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": name, "width": W, "height": H} for i, name in enumerate(images, 1)],
        "categories": [{"id": 1, "name": "crop"}, {"id": 2, "name": "weed"}],
        "annotations": [{"id": i, "image_id": 1, **a} for i, a in enumerate(annotations, 1)]}))
    return path


def column_major_counts(region: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE, written from the format's description: run lengths of 0s then 1s, column by column."""
    flat = region.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_coco_polygons_and_both_rles(tmp_path: Path, photos: Path) -> None:
    weed = np.zeros((H, W), bool)
    weed[20:28, 30:38] = True
    from pycocotools import mask as coco_mask  # the reference encoder of compressed RLE

    crop_rle = coco_mask.encode(np.asfortranarray(masks()["p0"] == 1, dtype=np.uint8))
    path = coco_export(tmp_path, [
        {"category_id": 1, "segmentation": {"size": [H, W], "counts": crop_rle["counts"].decode()}, "iscrowd": 1},
        {"category_id": 2, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]], "iscrowd": 0},  # pixel corners: rows 1-3, cols 2-5
        {"category_id": 2, "segmentation": {"size": [H, W], "counts": column_major_counts(weed)}, "iscrowd": 1}])
    out = tmp_path / "ds"
    import_labels(path, "coco", out, images=photos)
    expected = np.where(masks()["p0"] == 1, 1, 0).astype(np.uint8)
    expected[1:4, 2:6] = 2
    expected[weed] = 2
    assert (imported(out)["p0"] == expected).all()


def test_labelstudio_percent_polygons_later_wins_said_once(tmp_path: Path, photos: Path, caplog) -> None:
    def polygon(label: str, x0: int, y0: int, x1: int, y1: int) -> dict:
        pts = [[x * 100 / W, y * 100 / H] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
        return {"type": "polygonlabels", "original_width": W, "original_height": H,
                "value": {"points": pts, "polygonlabels": [label]}}

    tasks = [{"id": i, "data": {"image": f"/data/upload/1/0a1b2c3d-{stem}.jpg"},
              "annotations": [{"result": [polygon("crop", 0, 0, 20, 20), polygon("weed", 10, 10, 30, 25)]}]}
             for i, stem in enumerate(["p0", "p1"])]
    export = tmp_path / "ls.json"
    export.write_text(json.dumps(tasks))
    with caplog.at_level(logging.WARNING):
        import_labels(export, "labelstudio", tmp_path / "ds", images=photos)
    overlap_lines = [r.message for r in caplog.records if "overlapping" in r.message]
    assert len(overlap_lines) == 1 and "2 photos" in overlap_lines[0] and "later shape wins" in overlap_lines[0]
    got = read_label_map(tmp_path / "ds" / "masks" / "p0.png")
    assert got[5, 5] == 1 and got[15, 15] == 2 and got[22, 28] == 2 and got[28, 38] == 0


def cvat_mask_export(tmp_path: Path, photos: Path, labelmap: str) -> Path:
    """CVAT "Segmentation mask 1.1": labelmap.txt, SegmentationClass/<stem>.png in label colours, JPEGImages/."""
    export = tmp_path / "cvat"
    (export / "SegmentationClass").mkdir(parents=True)
    (export / "labelmap.txt").write_text(labelmap)
    shutil.copytree(photos, export / "JPEGImages")
    palette = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)  # CVAT's default-looking colours
    for stem, m in masks().items():
        Image.fromarray(palette[m]).save(export / "SegmentationClass" / f"{stem}.png")
    return export


LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncrop:250,50,83::\nweed:51,221,255::\n"


def test_cvat_mask_export_with_class_map(tmp_path: Path, photos: Path) -> None:
    export = cvat_mask_export(tmp_path, photos, LABELMAP)
    out = tmp_path / "ds"
    import_labels(export, "cvat-mask", out, class_map="background=soil,crop=crop,weed=weed")
    got = imported(out)
    assert all((got[k] == m).all() for k, m in masks().items())
    plain = tmp_path / "plain"
    archive = shutil.make_archive(str(tmp_path / "cvat-export"), "zip", export)  # as CVAT downloads it
    import_labels(archive, "cvat-mask", plain)  # names kept as CVAT spells them
    assert "background = 0" in (plain / "dataset.toml").read_text()
    assert all((got[k] == m).all() for k, m in imported_masks(plain).items())


def test_bad_exports_are_clear_errors(tmp_path: Path, photos: Path) -> None:
    export = cvat_mask_export(tmp_path, photos, LABELMAP.replace("weed:51,221,255::\n", ""))
    with pytest.raises(WeedsegError, match=r"colours that labelmap.txt does not list, the first RGB \(51, 221, 255\)"):
        import_labels(export, "cvat-mask", tmp_path / "a")
    with pytest.raises(WeedsegError, match="category_id 7, which the export's categories do not list"):
        import_labels(coco_export(tmp_path, [{"category_id": 7, "segmentation": [[0, 0, 5, 0, 5, 5]]}]), "coco",
                      tmp_path / "b", images=photos)
    with pytest.raises(WeedsegError, match="--class-map does not name: weed"):
        import_labels(coco_export(tmp_path, [{"category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}]), "coco",
                      tmp_path / "c", images=photos, class_map="crop=crop")
    taller = np.ones((H + 2, W), bool)
    path = coco_export(tmp_path, [{"category_id": 1, "segmentation": {"size": [H + 2, W],
                                                                       "counts": column_major_counts(taller)}}])
    with pytest.raises(WeedsegError, match=r"the mask is 40x32 but the photo p0.jpg is 40x30"):
        import_labels(path, "coco", tmp_path / "d", images=photos)
    for leftover in "abcd":
        assert not (tmp_path / leftover).exists()  # nothing half made
    assert main(["dataset", "import", str(path), "--format", "coco", "--images", str(photos), "--out",
                 str(tmp_path / "e")]) == 2  # one line, no traceback


def test_missing_photos_are_named_and_ignore_mapping(tmp_path: Path, photos: Path, caplog) -> None:
    path = coco_export(tmp_path, [{"category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                                  {"category_id": 2, "segmentation": [[20, 20, 30, 20, 30, 28, 20, 28]]}],
                       images=["p0.jpg", "gone.jpg"])
    out = tmp_path / "ds"
    with caplog.at_level(logging.WARNING):
        report = import_labels(path, "coco", out, images=photos, class_map="crop=crop,weed=ignore")
    assert report.photos == 1 and any("not found" in r.message and "gone.jpg" in r.message for r in caplog.records)
    assert "ignore = 255" in (out / "dataset.toml").read_text()
    assert check_dataset("folder", out).problems == []
    got = read_label_map(out / "masks" / "p0.png")
    assert got[5, 5] == 1 and got[25, 25] == 255


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the shipped model is not in this checkout")
def test_predict_prelabels_import_back_identical(tmp_path: Path, photos: Path) -> None:
    """`weedseg predict --outputs prelabels`, then each prelabel file imported back: the predicted masks exactly."""
    run = tmp_path / "run"
    assert main(["predict", str(photos), "--model", str(DEFAULT_MODEL), "--out", str(run), "--outputs",
                 "mask,prelabels", "--threads", "1"]) == 0
    predicted = {p.name.removesuffix(".mask.png"): read_label_map(p) for p in run.glob("*.mask.png")}
    tasks = json.loads((run / "prelabels" / "labelstudio.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d={s}.jpg" for s in sorted(predicted)]
    for task in tasks:
        task["annotations"] = task.pop("predictions")
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    for export, fmt in ((run / "prelabels" / "coco.json", "coco"), (tmp_path / "ls.json", "labelstudio")):
        out = tmp_path / fmt
        import_labels(export, fmt, out, images=photos, keep_empty=True)
        got = {p.stem: read_label_map(p) for p in (out / "masks").glob("*.png")}
        assert got.keys() == predicted.keys() and all((got[k] == m).all() for k, m in predicted.items())
