"""Self-training: `weedseg predict` masks of unlabelled photos join the training split (`--pseudo-labels`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.data import SegmentationDataset, open_dataset
from weedseg.data.io import RUN_MANIFEST
from weedseg.data.pseudo import add_pseudo_labels
from weedseg.infer.pictures import read_mask


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, peanut):
    """The shipped model's masks of three unlabelled-to-be train photos and one labelled one (short side 96)."""
    root = tmp_path_factory.mktemp("pseudo")
    photos = root / "photos"
    photos.mkdir()
    train = peanut.splits["train"]
    for sample in [*train[-3:], train[0]]:
        (photos / sample.image.name).symlink_to(sample.image)
    assert main(["predict", str(photos), "--out", str(root / "pred"), "--outputs", "mask", "--short-side", "96",
                 "--engine", "onnxruntime"]) == 0
    return root


def splits(peanut_root):
    return open_dataset("peanut", peanut_root, train_fraction=0.03).splits  # the first 8 train photos


def test_predicted_photos_join_train_and_labelled_ones_keep_their_label(predicted, peanut_root, peanut):
    s = splits(peanut_root)
    labelled = list(s["train"])
    assert add_pseudo_labels(s, [str(predicted / "pred")], peanut.classes) == (3, [])  # train[0] keeps its label
    assert s["train"][: len(labelled)] == labelled
    added = s["train"][len(labelled):]
    assert [p.image.name for p in added] == sorted(x.image.name for x in peanut.splits["train"][-3:])
    data = SegmentationDataset(peanut.layout, s["train"], lambda i, m, rng: (i, m), [0.0] * 3, [1.0] * 3)
    image, mask = data.load(len(labelled))
    assert mask.shape == image.shape[:2] == (720, 960)
    assert np.array_equal(mask, read_mask(added[0].mask)) and set(np.unique(mask)) <= {0, 1, 2}


def test_val_and_test_photos_are_left_out_even_under_another_name(predicted, peanut_root, peanut, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(predicted / "pred", pred)
    val_photo = peanut.splits["val"][0].image
    photos = tmp_path / "photos"
    shutil.copytree(predicted / "photos", photos, symlinks=True)
    shutil.copy(val_photo, photos / "renamed.jpg")
    assert main(["predict", str(photos), "--out", str(pred), "--outputs", "mask", "--short-side", "96",
                 "--engine", "onnxruntime", "--overwrite"]) == 0
    test_photo = peanut.splits["test"][0].image
    (photos / test_photo.name).symlink_to(test_photo)
    assert main(["predict", str(photos), "--out", str(pred), "--outputs", "mask", "--short-side", "96",
                 "--engine", "onnxruntime"]) == 0
    s = splits(peanut_root)
    added, left_out = add_pseudo_labels(s, [str(pred)], peanut.classes)
    assert added == 3 and sorted(left_out) == sorted([f"{photos / 'renamed.jpg'}: the val photo {val_photo.name}",
                                                      f"{photos / test_photo.name}: the test photo {test_photo.name}"])
    assert not {p.image.resolve() for p in s["train"]} & {val_photo.resolve(), test_photo.resolve()}


def test_other_classes_or_an_older_predict_folder_are_refused(predicted, peanut_root, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(predicted / "pred", pred)
    with pytest.raises(WeedsegError, match="classes \\['soil', 'crop', 'weed'\\], this dataset has"):
        add_pseudo_labels(splits(peanut_root), [str(pred)], ["background", "plant"])
    record = json.loads((pred / RUN_MANIFEST).read_text())
    del record["input"]
    (pred / RUN_MANIFEST).write_text(json.dumps(record))
    with pytest.raises(WeedsegError, match="older weedseg"):
        add_pseudo_labels(splits(peanut_root), [str(pred)], ["soil", "crop", "weed"])
    with pytest.raises(WeedsegError, match="not a `weedseg predict` output folder"):
        add_pseudo_labels(splits(peanut_root), [str(predicted / "photos")], ["soil", "crop", "weed"])
    for damaged in ("[1, 2]", '{"model": 3, "input": 5}', "{not json"):  # a hand-edited or damaged record
        (pred / RUN_MANIFEST).write_text(damaged)
        with pytest.raises(WeedsegError, match=str(pred / RUN_MANIFEST)):
            add_pseudo_labels(splits(peanut_root), [str(pred)], ["soil", "crop", "weed"])
    shutil.copy(predicted / "pred" / RUN_MANIFEST, pred / RUN_MANIFEST)
    (pred / "summary.csv").write_bytes(b"image,mask\n\xff\xfe bad,x\n")
    with pytest.raises(WeedsegError, match="is not a readable summary.csv"):
        add_pseudo_labels(splits(peanut_root), [str(pred)], ["soil", "crop", "weed"])


def test_train_with_pseudo_labels(predicted, peanut_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(peanut_root), "--out", str(out), "--train-fraction", "0.03",
                 "--pseudo-labels", str(predicted / "pred"), "--iterations", "2", "--warmup-iterations", "1",
                 "--eval-short-side", "64", "--init", "scratch", "--workers", "0"]) == 0
    assert "pseudo-labels: 3 predicted photos train beside the 8 labelled ones" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["pseudo_labels"] == [str(predicted / "pred")]
