"""Bring your own field: dataset.toml class maps, split files, `weedseg dataset check`, class matching.

Every test writes its own small field in tmp_path, in both mask styles: colour masks, and index
masks in a non-standard order (1 = weed, 2 = crop) with phone photos rotated by EXIF.
"""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from weedseg import WeedsegError
from weedseg.checkpoint import model_metadata, save_checkpoint
from weedseg.cli import main
from weedseg.data import IGNORE_INDEX, EvalResize, SegmentationDataset, open_dataset
from weedseg.data.check import check_dataset
from weedseg.data.layouts import get_layout
from weedseg.data.locate import find_dataset_root
from weedseg.evaluate import class_order, evaluate_checkpoint
from weedseg.losses import LOSSES, build_loss
from weedseg.metrics import ConfusionMatrix
from weedseg.models import create_model
from weedseg.ssl.transfer import format_report, transfer_weights
from weedseg.train import TrainConfig, train

H, W = 24, 32
COLOURS = {"soil": (0, 0, 0), "crop": (0, 255, 0), "weed": (255, 0, 0)}
UNLABELLED = (255, 255, 255)
ROTATE_90 = 6  # EXIF orientation: the stored pixels are shown turned 90 degrees clockwise


def labels(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A label map with 0 soil, 1 crop, 2 weed in bands and -1 (unlabelled) in one corner."""
    out = (np.arange(h * w).reshape(h, w) // 7 + seed) % 3
    out[:3, :3] = -1
    return out


def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_photo(path, h: int, w: int, seed: int, orientation: int = 1) -> None:
    """A JPEG of h x w stored pixels, with an EXIF orientation tag when it is not 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)


def colour_field(root, n=10):
    """Colour masks, class map in a non-standard order, white = unlabelled, photos named NNN.JPG."""
    (root / "dataset.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(
        'images = "photos"\nmasks = "labels"\nimage_suffix = ".jpg"\nmask_format = "color"\n'
        "ignore = [255, 255, 255]\n"
        "[class_map]\nsoil = [0, 0, 0]\nweed = [255, 0, 0]\ncrop = [0, 255, 0]\n")
    palette = np.array([COLOURS["soil"], COLOURS["crop"], COLOURS["weed"], UNLABELLED], np.uint8)
    for i in range(n):
        write_photo(root / "photos" / f"{i + 1:03d}.JPG", H, W, i)
        write_png(root / "labels" / f"{i + 1:03d}.png", palette[labels(i)])
    return root


def index_field(root, n=10, order=("soil", "weed", "crop")):
    """Index masks (value = position in `order`, 255 unlabelled) for EXIF-rotated phone photos.

    The photos are stored W x H (sensor orientation) with EXIF orientation 6; the masks are drawn on
    the upright photo, H x W turned: W rows, H columns.
    """
    value = {name: i for i, name in enumerate(order)}
    table = "\n".join(f"{name} = {i}" for name, i in value.items())
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(f'mask_format = "index"\nignore = 255\n[class_map]\n{table}\n')
    lut = np.array([value["soil"], value["crop"], value["weed"], 255], np.uint8)
    for i in range(n):
        write_photo(root / "images" / f"IMG_{i:02d}.jpg", H, W, i, ROTATE_90)
        write_png(root / "masks" / f"IMG_{i:02d}.png", lut[labels(i, W, H)])
    return root


# ---- dataset.toml: class maps, ignore value, errors ----

def test_colour_class_map_in_any_order_with_ignore(tmp_path):
    layout = get_layout("folder", colour_field(tmp_path / "carrots"))
    assert layout.classes == ["soil", "weed", "crop"]
    assert layout.colors == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    sample = layout.samples()[0]
    assert sample.id == "001"  # 001.JPG pairs although image_suffix is ".jpg"
    truth = labels(0)
    decoded = layout.decode_mask(sample.mask)
    assert (decoded[truth == 1] == 2).all() and (decoded[truth == 2] == 1).all() and (decoded[truth == 0] == 0).all()
    assert (decoded[truth == -1] == IGNORE_INDEX).all()


def test_index_masks_with_weed_before_crop(tmp_path):
    layout = get_layout("folder", index_field(tmp_path / "phone"))
    assert layout.classes == ["soil", "weed", "crop"]
    decoded = layout.decode_mask(layout.samples()[0].mask)
    truth = labels(0, W, H)
    assert (decoded[truth == 2] == 1).all() and (decoded[truth == 1] == 2).all()
    assert (decoded[truth == -1] == IGNORE_INDEX).all()


def test_value_outside_the_class_map_names_file_and_value(tmp_path):
    root = index_field(tmp_path / "phone", n=1)
    write_png(root / "masks" / "IMG_00.png", np.full((W, H), 7, np.uint8))
    with pytest.raises(WeedsegError, match=r"IMG_00.png has 768 pixels of values \[7\] outside the class map; "
                                           r"expected only soil = 0, weed = 1, crop = 2"):
        get_layout("folder", root).decode_mask(root / "masks" / "IMG_00.png")


@pytest.mark.parametrize("toml, key", [
    ('images = 5\n', "'images'"),
    ('colors = [[0, 0], [0, 255]]\nclasses = ["soil", "crop"]\n', "'colors'"),
    ('mask_format = "color"\n[class_map]\nsoil = [0, 0]\n', "'class_map.soil'"),
    ('mask_format = "index"\n[class_map]\nsoil = 0\nignore = 255\n', "'ignore'"),
    ('mask_format = "index"\nignore = 1\n[class_map]\nsoil = 0\nweed = 1\n', "'ignore'"),
    ('mask_format = "index"\n[class_map]\nsoil = 0\nweed = 0\n', "same mask value 0"),
    ('class_map = {soil = 0}\nclasses = ["soil"]\n', "not both"),
    ('classes = ["soil", "carrot"]\n', "colour of \\['carrot'\\]"),
])
def test_bad_dataset_toml_is_one_line_naming_the_key(tmp_path, toml, key):
    (tmp_path / "dataset.toml").write_text(toml)
    with pytest.raises(WeedsegError, match=key) as err:
        get_layout("folder", tmp_path)
    assert "\n" not in str(err.value) and "dataset.toml" in str(err.value)


def test_missing_dataset_toml_says_what_to_write(tmp_path):
    root = find_dataset_root("folder", tmp_path)
    with pytest.raises(WeedsegError, match=r"(?s)dataset.toml not found. Write one, for example:.*\[class_map\]"):
        get_layout("folder", root)


# ---- splits ----

def write_split(root, **lists):
    (root / "split.json").write_text(json.dumps(lists))


def test_official_split_with_integer_ids_and_no_val(tmp_path, capsys):
    root = colour_field(tmp_path / "carrots")
    write_split(root, train=[1, 2, 3, 4, 5, 6, 7, 8], test=[9, 10])
    data = open_dataset("folder", root)
    ids = {s: [x.id for x in v] for s, v in data.splits.items()}
    assert ids["test"] == ["009", "010"] and len(ids["val"]) == 1 and len(ids["train"]) == 7
    assert set(ids["train"]) | set(ids["val"]) == {f"{i:03d}" for i in range(1, 9)}
    assert open_dataset("folder", root).splits == data.splits  # seeded
    printed = capsys.readouterr().out
    assert "7 train / 1 val / 2 test" in printed and "no 'val' list: 1 of its train images, chosen with seed 0" in printed
    assert str(root / "split.json") in printed


@pytest.mark.parametrize("lists, message", [
    ({"train": ["001", "002", "003"], "val": ["004"], "test": ["003", "004"]},
     r"ids are in both 'train' and 'test': 003; "),
    ({"train": [1, 2], "val": [3], "test": [42]}, r"no image and mask .*: 42; ids are file stems"),
    ({"training": ["001"], "test": ["002"]}, r"unknown keys \['training'\]"),
    ({"train": "001"}, r"'train' must be a list"),
])
def test_bad_split_file_is_refused_naming_the_ids(tmp_path, lists, message):
    root = colour_field(tmp_path / "carrots", n=5)
    write_split(root, **lists)
    with pytest.raises(WeedsegError, match=message):
        open_dataset("folder", root)


def test_malformed_split_file_is_one_line_naming_it(tmp_path):
    root = colour_field(tmp_path / "carrots", n=3)
    (root / "split.json").write_text('{"train": ["001",], }')
    with pytest.raises(WeedsegError, match="split.json is not valid JSON") as err:
        open_dataset("folder", root)
    assert "\n" not in str(err.value)


def test_misnamed_split_file_is_not_replaced_by_a_random_split(tmp_path):
    root = colour_field(tmp_path / "carrots", n=3)
    (root / "splits.json").write_text(json.dumps({"train": ["001"], "test": ["002"]}))
    with pytest.raises(WeedsegError, match=r"no .*split.json, but .* holds \['splits.json'\]"):
        open_dataset("folder", root)


def test_evaluate_only_dataset(tmp_path, capsys):
    root = colour_field(tmp_path / "carrots", n=4)
    write_split(root, test=[1, 2, 3, 4])
    data = open_dataset("folder", root, need=("test",))
    assert len(data.splits["test"]) == 4 and not data.splits["train"]
    assert "0 train / 0 val / 4 test" in capsys.readouterr().out
    with pytest.raises(WeedsegError, match="train split is empty .*split.json: only test images, an evaluate-only"):
        train(TrainConfig(dataset="folder", data_root=str(root), out=str(tmp_path / "run"), workers=0))


# ---- EXIF-rotated photos ----

def test_exif_rotated_photos_are_trained_upright(tmp_path):
    data = open_dataset("folder", index_field(tmp_path / "phone"))
    ds = SegmentationDataset(data.layout, data.splits["train"], EvalResize(0), [0.5] * 3, [0.25] * 3)
    image, mask = ds.load(0)
    assert image.shape[:2] == mask.shape == (W, H)


# ---- ignore value in losses and metrics ----

@pytest.mark.parametrize("loss", LOSSES)
def test_ignored_pixels_add_nothing_to_the_loss(loss):
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE_INDEX
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    fn = build_loss(loss)
    assert torch.allclose(fn(logits, target), fn(changed, target))
    assert torch.allclose(fn(logits, target), fn(logits[:, :, 4:], target[:, 4:]))


def test_ignored_pixels_are_not_scored():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, IGNORE_INDEX, 2]))
    assert cm.matrix.sum() == 3 and cm.iou().tolist() == [1.0, 1.0, 1.0]


# ---- class names: evaluation and fine-tuning ----

def save_model(path, classes, seed=0):
    torch.manual_seed(seed)
    model = create_model("unet-resnet18-quarter", len(classes))
    meta = model_metadata("unet-resnet18-quarter", len(classes), classes, [[0, 0, 0]] * len(classes),
                          [0.5] * 3, [0.25] * 3)
    save_checkpoint(path, model, {**meta, "config": {"eval_short_side": 0}})
    return path


def test_evaluate_matches_classes_by_name(tmp_path, capsys):
    ckpt = save_model(tmp_path / "model.pt", ["soil", "crop", "weed"])
    usual = index_field(tmp_path / "usual", n=3, order=("soil", "crop", "weed"))
    swapped = index_field(tmp_path / "swapped", n=3, order=("soil", "weed", "crop"))
    for root in (usual, swapped):
        write_split(root, test=[f"IMG_{i:02d}" for i in range(3)])
    a = evaluate_checkpoint(ckpt, "folder", "test", str(usual), device="cpu")
    b = evaluate_checkpoint(ckpt, "folder", "test", str(swapped), device="cpu")
    assert b["classes"] == ["soil", "weed", "crop"] and b["iou"] == a["iou"]
    assert "matched by name" in capsys.readouterr().out


def test_evaluate_refuses_other_classes_saying_what_differs(tmp_path):
    with pytest.raises(WeedsegError, match=r"the dataset lacks \['crop'\]; the model lacks \['stone'\]"):
        class_order(["soil", "crop", "weed"], ["soil", "weed", "stone"])
    assert class_order(["soil", "crop", "weed"], ["weed", "soil", "crop"]) == [2, 0, 1]
    assert class_order(["soil", "crop"], ["soil", "crop"]) is None


def test_fine_tuning_matches_the_head_by_class_name(tmp_path):
    from weedseg.checkpoint import load_checkpoint

    ckpt = load_checkpoint(save_model(tmp_path / "seg.pt", ["soil", "crop", "weed"]))
    model = create_model("unet-resnet18-quarter", 3)
    fresh = model.head[1].weight.detach().clone()
    report = transfer_weights(model, ckpt, classes=["weed", "soil", "stone"])
    src = ckpt["state_dict"]["head.1.weight"]
    head = model.head[1].weight.detach()
    assert torch.equal(head[0], src[2]) and torch.equal(head[1], src[0]) and torch.equal(head[2], fresh[2])
    assert report["head_classes"] == {"matched": ["weed", "soil"], "reordered": True, "new": ["stone"],
                                      "unused": ["crop"]}
    assert "new classes, head rows re-initialised: stone" in format_report(report)
    other = transfer_weights(create_model("unet-resnet18-quarter", 2), ckpt, copy_head=True, classes=["leaf", "stem"])
    assert "share no name" in other["reinitialised"]["head.1.weight"]


# ---- weedseg dataset check ----

def test_check_passes_a_clean_field(tmp_path, capsys):
    root = index_field(tmp_path / "phone")
    write_split(root, train=[f"IMG_{i:02d}" for i in range(8)], test=["IMG_08", "IMG_09"])
    assert main(["dataset", "check", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "10 images with masks" in out and "7 train / 1 val / 2 test" in out and "no problems found" in out
    assert "10 images carry an EXIF rotation" in out and "image sizes: 24x32 (10)" in out
    assert "soil = 0, weed = 1, crop = 2 (index masks); ignored: 255" in out


def test_check_reports_every_problem_once(tmp_path, capsys):
    root = index_field(tmp_path / "phone")
    write_png(root / "masks" / "IMG_01.png", np.zeros((H, W), np.uint8))  # drawn on the stored, unrotated photo
    write_png(root / "masks" / "IMG_02.png", np.full((W, H), 9, np.uint8))
    (root / "masks" / "IMG_03.png").unlink()
    write_png(root / "masks" / "stray.png", np.zeros((W, H), np.uint8))
    (root / "images" / "IMG_04.jpg").write_bytes((root / "images" / "IMG_05.jpg").read_bytes())
    write_split(root, train=["IMG_00", "IMG_01", "IMG_02", "IMG_04"], val=["IMG_06"], test=["IMG_05", "IMG_07"])
    report = check_dataset("folder", root)
    problems = "\n".join(report.problems)
    assert len(report.problems) == 5, problems
    assert "IMG_03.jpg has no mask" in problems and "stray.png has no image" in problems
    assert "IMG_01.png is 32x24, the size its photo is stored in, but IMG_01.jpg has EXIF orientation 6" in problems
    assert "IMG_02.png has 768 pixels of values [9]" in problems
    assert "IMG_04.jpg (train) and IMG_05.jpg (test) are the same photo in two splits; their masks agree at" in problems
    assert "images are in no split list" in "\n".join(report.notes)
    assert main(["dataset", "check", "--data-root", str(root)]) == 1
    assert "5 problem(s):" in capsys.readouterr().out


# ---- the walkthrough end to end: train on index masks with ignored pixels, evaluate ----

def test_train_and_evaluate_on_own_field(tmp_path):
    root = index_field(tmp_path / "phone", n=6)
    write_split(root, train=[f"IMG_{i:02d}" for i in range(4)], test=["IMG_04", "IMG_05"])
    out = tmp_path / "run"
    train(TrainConfig(dataset="folder", data_root=str(root), out=str(out), epochs=1, warmup_epochs=0, crop=32,
                      eval_short_side=0, batch_size=2, workers=0))
    summary = evaluate_checkpoint(out / "best.pt", "folder", "test", str(root), device="cpu")
    assert summary["classes"] == ["soil", "weed", "crop"] and summary["images"] == 2
    labelled = sum(map(sum, summary["confusion_matrix"]))
    assert labelled == 2 * (W * H - 9)  # the 3 x 3 unlabelled corner of each mask is not scored
