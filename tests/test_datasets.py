"""Dataset layouts on fixtures written in each dataset's real on-disk layout, plus the real peanut data."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from weedseg import WeedsegError
from weedseg.data import open_dataset
from weedseg.data.check import check_dataset
from weedseg.data.layouts import get_layout
from weedseg.data.locate import find_dataset_root
from weedseg.data.splits import load_split, make_split, subset
from weedseg.resources import SPLIT_FILES_DIR


def write_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR))


def random_image(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---- Sugarbeets 2016: CKA_*/images/rgb + CKA_*/annotations/dlp/iMapCleaned (16-bit) ----

def make_sugarbeets(root, frames=10):
    values = np.array([0, 1, 97, 10000, 10001, 10500], np.uint16)
    for day in ("CKA_160523", "CKA_160531"):
        for i in range(frames // 2):
            name = f"bonirob_{day}_{i:04d}.png"
            write_rgb(root / day / "images" / "rgb" / name, random_image(seed=i))
            label = np.resize(values, 24 * 32).reshape(24, 32).astype(np.uint16)
            path = root / day / "annotations" / "dlp" / "iMapCleaned" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), label)
    # a frame with no label map is not a sample
    write_rgb(root / "CKA_160523" / "images" / "rgb" / "unlabelled.png", random_image())
    return root


def test_sugarbeets_16bit_label_maps(tmp_path):
    root = make_sugarbeets(tmp_path / "sugarbeets")
    layout = get_layout("sugarbeets", root)
    samples = layout.samples()
    assert len(samples) == 10
    assert all("unlabelled" not in s.id for s in samples)
    mask = layout.decode_mask(samples[0].mask)
    # 0, 1, 97 -> background; 10000 -> crop; above 10000 -> weed
    assert mask.reshape(-1)[:6].tolist() == [0, 0, 0, 1, 2, 2]
    data = open_dataset("sugarbeets", root)
    assert sorted(len(v) for v in data.splits.values()) == [1, 2, 7]


def test_sugarbeets_8bit_label_map_is_rejected(tmp_path):
    root = make_sugarbeets(tmp_path / "sugarbeets", frames=2)
    layout = get_layout("sugarbeets", root)
    bad = layout.samples()[0].mask
    cv2.imwrite(str(bad), np.zeros((24, 32), np.uint8))
    with pytest.raises(WeedsegError, match="16-bit"):
        layout.decode_mask(bad)


# ---- Nassar 2020: data/<id>.png + mask/<id>.png with 0/1/2 ----

def make_nassar(root, tiles=10):
    for i in range(tiles):
        write_rgb(root / "data" / f"{i:05d}.png", random_image(32, 32, i))
        (root / "mask").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "mask" / f"{i:05d}.png"), (np.arange(32 * 32) % 3).reshape(32, 32).astype(np.uint8))
    return root


def test_nassar_tiles(tmp_path):
    root = make_nassar(tmp_path / "nassar")
    layout = get_layout("nassar", root)
    samples = layout.samples()
    assert len(samples) == 10
    assert set(np.unique(layout.decode_mask(samples[0].mask)).tolist()) == {0, 1, 2}


def test_nassar_out_of_range_value_names_the_file(tmp_path):
    root = make_nassar(tmp_path / "nassar", tiles=2)
    bad = root / "mask" / "00001.png"
    cv2.imwrite(str(bad), np.full((32, 32), 3, np.uint8))
    with pytest.raises(WeedsegError, match="00001.png.*values \\[3\\]"):
        get_layout("nassar", root).decode_mask(bad)


# ---- generic folder dataset with dataset.toml ----

CWFID_TOML = """
classes = ["soil", "crop", "weed"]
colors = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
images = "images"
masks = "annotations"
image_suffix = "_image.png"
mask_suffix = "_annotation.png"
mask_format = "color"
"""


def make_color_folder(root, n=10):
    (root).mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(CWFID_TOML)
    palette = np.array([[0, 0, 0], [0, 255, 0], [255, 0, 0]], np.uint8)
    for i in range(n):
        write_rgb(root / "images" / f"{i:03d}_image.png", random_image(seed=i))
        labels = (np.arange(24 * 32) % 3).reshape(24, 32)
        write_rgb(root / "annotations" / f"{i:03d}_annotation.png", palette[labels])
    return root


def test_folder_colour_masks(tmp_path):
    root = make_color_folder(tmp_path / "cwfid")
    data = open_dataset("folder", root)
    assert data.classes == ["soil", "crop", "weed"]
    sample = data.splits["train"][0]
    assert data.layout.decode_mask(sample.mask).reshape(-1)[:3].tolist() == [0, 1, 2]


def test_folder_unknown_colour_names_file_and_colour(tmp_path):
    root = make_color_folder(tmp_path / "cwfid", n=1)
    bad = root / "annotations" / "000_annotation.png"
    mask = np.zeros((24, 32, 3), np.uint8)
    mask[3, 4] = (0, 0, 255)  # blue is not in the colour map
    write_rgb(bad, mask)
    with pytest.raises(WeedsegError, match=r"000_annotation.png has 1 pixels.*RGB \(0, 0, 255\)"):
        get_layout("folder", root).decode_mask(bad)


def test_folder_index_masks_and_size_mismatch(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    (root / "dataset.toml").write_text('classes = ["soil", "crop", "weed"]\nmask_format = "index"\nimage_suffix = ".png"\n')
    for i in range(10):
        write_rgb(root / "images" / f"{i}.png", random_image(seed=i))
        (root / "masks").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), np.ones((24, 32), np.uint8) * (i % 3))
    cv2.imwrite(str(root / "masks" / "3.png"), np.zeros((10, 10), np.uint8))
    from weedseg.data import EvalResize, SegmentationDataset

    data = open_dataset("folder", root)
    samples = [s for split in data.splits.values() for s in split]
    ds = SegmentationDataset(data.layout, samples, EvalResize(0), [0.5] * 3, [0.25] * 3)
    bad = next(i for i, s in enumerate(samples) if s.id == "3")
    with pytest.raises(WeedsegError, match=r"3.png is 10x10 but its image .*3.png is 32x24"):
        ds.load(bad)
    good = next(i for i, s in enumerate(samples) if s.id == "4")
    assert ds.load(good)[1].max() == 1


def test_check_reports_an_unreadable_image_and_goes_on(tmp_path, monkeypatch):
    root = make_color_folder(tmp_path / "cwfid")
    (root / "images" / "009_image.png").write_bytes((root / "images" / "000_image.png").read_bytes())
    ids = [f"{i:03d}" for i in range(9)]  # 009, a copy of 000, is in no split: not "the same photo in two splits"
    (root / "split.json").write_text(json.dumps({"train": ids[:7], "val": ids[7:8], "test": ids[8:]}))
    read_bytes = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path.name == "004_image.png":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    report = check_dataset("folder", root)
    (problem,) = report.problems  # the other nine images are checked as usual
    assert problem.endswith("004_image.png: cannot be read (Permission denied)")
    assert "10 images with masks" in report.summary and "1 images are in no split list" in " ".join(report.notes)
    assert "images 000_image.png and 009_image.png are the same photo; their masks are identical" in report.notes


def test_check_scores_how_far_two_masks_of_one_photo_agree(tmp_path):
    root = make_color_folder(tmp_path / "cwfid")
    (root / "images" / "009_image.png").write_bytes((root / "images" / "000_image.png").read_bytes())
    labels = (np.arange(24 * 32) % 3).reshape(24, 32)
    palette = np.array([[0, 0, 0], [0, 255, 0], [255, 0, 0]], np.uint8)
    write_rgb(root / "annotations" / "009_annotation.png", palette[np.where(labels == 2, 0, labels)])  # weed drawn as soil
    ids = [f"{i:03d}" for i in range(10)]
    (root / "split.json").write_text(json.dumps({"train": ids[:8] + ids[9:], "val": ids[8:9], "test": []}))
    report = check_dataset("folder", root)
    assert ("images 000_image.png and 009_image.png are the same photo; their masks agree at 50.0 mIoU "
            "(soil 50.0, crop 100.0, weed 0.0)") in report.notes


def test_folder_without_config_explains_what_to_write(tmp_path):
    (tmp_path / "dataset.toml").write_text("classes = [")
    with pytest.raises(WeedsegError, match="not valid TOML"):
        open_dataset("folder", tmp_path)
    with pytest.raises(WeedsegError, match="dataset.toml not found"):
        get_layout("folder", tmp_path / "nothing")


# ---- locating data ----

def test_missing_dataset_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeedsegError) as err:
        find_dataset_root("nassar", tmp_path / "nope")
    message = str(err.value)
    assert "nassar dataset not found" in message and str(tmp_path / "nope") in message
    assert "WEEDSEG_DATA" in message


def test_environment_variable_is_searched(tmp_path, monkeypatch):
    make_nassar(tmp_path / "nassar", tiles=2)
    monkeypatch.setenv("WEEDSEG_DATA", str(tmp_path))
    assert find_dataset_root("nassar") == (tmp_path / "nassar").resolve()


def test_no_data_root_beyond_field_data_is_guessed(tmp_path, monkeypatch):
    """Library code never falls back to ../shared/field_data: `make` and CI pass it in WEEDSEG_DATA."""
    make_nassar(tmp_path / "shared" / "field_data" / "nassar", tiles=2)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.delenv("WEEDSEG_DATA", raising=False)
    with pytest.raises(WeedsegError, match="nassar dataset not found"):
        find_dataset_root("nassar")


def test_layout_error_names_expected_layout_and_source(tmp_path):
    (tmp_path / "CKA_160523").mkdir()
    with pytest.raises(WeedsegError, match=r"(?s)iMapCleaned.*uni-bonn"):
        open_dataset("sugarbeets", tmp_path)


# ---- the real peanut data ----

def test_peanut_colour_masks_match_published_pixel_counts(peanut):
    counts = {row["id"]: row for row in csv.DictReader((peanut.layout.root / "class_pixel_counts.csv").open())}
    for sample in peanut.splits["test"][:3]:
        mask = peanut.layout.decode_mask(sample.mask)
        row = counts[sample.id]
        assert np.bincount(mask.reshape(-1), minlength=3).tolist() == [
            int(row["background_px"]), int(row["crop_px"]), int(row["weed_px"])]


def test_committed_peanut_split_is_the_seeded_split(peanut):
    committed = json.loads((SPLIT_FILES_DIR / "peanut.json").read_text())
    ids = [s.id for split in peanut.splits.values() for s in split]
    assert len(ids) == len(set(ids)) == 400
    made = make_split(ids)
    for name in ("train", "val", "test"):
        assert committed[name] == made[name]
        assert [s.id for s in peanut.splits[name]] == committed[name]
    assert [len(committed[s]) for s in ("train", "val", "test")] == [280, 40, 80]


def test_split_is_reproducible_and_fractions_nest(tmp_path):
    ids = [f"{i:04d}" for i in range(50)]
    assert make_split(ids) == make_split(list(reversed(ids)))
    train = make_split(ids)["train"]
    assert set(subset(train, 0.1)) <= set(subset(train, 0.25)) <= set(train)
    with pytest.raises(WeedsegError):
        subset(train, 0)


def test_user_split_file_must_name_existing_ids(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["zz"]}))
    with pytest.raises(WeedsegError, match="zz"):
        load_split("nassar", tmp_path, ["a", "b", "c"])
