"""Familiarity: statistics of a model's own encoder features, carried in checkpoints and ONNX models, scored
without torch, flagged in predict's summary.csv and run log."""

from __future__ import annotations

import csv
import logging

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from streamlit.testing.v1 import AppTest

from weedseg import WeedsegError
from weedseg.checkpoint import familiarity_stats, load_checkpoint, model_from_checkpoint, model_metadata, save_checkpoint
from weedseg.cli import main
from weedseg.data import LabelledData
from weedseg.data.io import read_rgb
from weedseg.data.transforms import normalize, resize_short_side
from weedseg.export import export_onnx, int8_path, quantize_int8, save_with_metadata
from weedseg.familiarity import FEATURES_OUTPUT, FamiliarityStats, flagged_message, judge
from weedseg.familiarity.fit import add_familiarity, fit_stats, pooled_features
from weedseg.infer.metadata import ModelInfo, read_model_info
from weedseg.infer.pipeline import PredictOptions, predict_path
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.resources import APP_SCRIPT
from weedseg.models import create_model


def test_fit_scores_familiar_features_high_and_foreign_ones_flagged():
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.2, 2.0, 24))
    train, val, same = (rng.multivariate_normal(np.zeros(24), cov, n) for n in (200, 40, 400))
    foreign = rng.multivariate_normal(np.full(24, 1.5), cov, 200)
    stats = fit_stats(train, val, "peanut", 480)
    assert [v.unfamiliar for v in judge(stats, val)].count(True) == stats.fitted_on["val_flagged"] <= 1
    assert np.mean([v.unfamiliar for v in judge(stats, same)]) <= 0.05
    assert np.mean([v.unfamiliar for v in judge(stats, foreign)]) >= 0.95
    assert stats.scores(stats.mean[None])[0] == pytest.approx(1.0)  # 1 at the centre, 0.5 at the threshold
    back = FamiliarityStats.from_json(stats.to_json(), "x")
    assert back == stats and np.allclose(back.scores(foreign), stats.scores(foreign), atol=1e-6)
    with pytest.raises(WeedsegError, match="validation photos"):
        fit_stats(train, val[:2], "peanut", 480)


def test_malformed_stats_are_a_clear_error():
    good = fit_stats(np.eye(6).repeat(3, 0) + 0.1, np.eye(6)[:4], "peanut", 256).to_json()
    for bad in ("{}", good.replace('"dim": 6', '"dim": 7'), "not json"):
        with pytest.raises(WeedsegError, match="familiarity statistics are malformed"):
            FamiliarityStats.from_json(bad, "model.onnx")


def test_flag_message_says_how_many_in_plain_words():
    assert flagged_message(3, 10, "peanut").startswith("3 of 10 photos look unlike the peanut fields this model "
                                                       "learned from: crop and weed may be swapped or missed")
    assert flagged_message(1, 1, "carrots").startswith("1 of 1 photo looks unlike the carrots fields")
    assert flagged_message(0, 4, "peanut") == "all 4 photos look like the peanut fields this model learned from"


@pytest.fixture(scope="module")
def fitted(peanut, tmp_path_factory):
    """An untrained compact model with statistics fitted on 8 train and 3 val peanut photos at short side 128,
    exported to ONNX (FP32 and INT8); the checkpoint before fitting is `random.pt` beside it."""
    tmp = tmp_path_factory.mktemp("familiarity")
    meta = model_metadata("unet-resnet18-quarter", 3, peanut.classes, peanut.colors, [0.49, 0.51, 0.43], [0.26, 0.27, 0.25])
    torch.manual_seed(0)
    save_checkpoint(tmp / "random.pt", create_model("unet-resnet18-quarter", 3), meta)
    small = LabelledData(peanut.layout, {"train": peanut.splits["train"][:8], "val": peanut.splits["val"][:3]})
    stats = add_familiarity(tmp / "random.pt", small, "peanut", tmp / "fitted.pt", short_side=128)
    ckpt = load_checkpoint(tmp / "fitted.pt")
    export_onnx(ckpt, tmp / "fitted.onnx", 128)
    quantize_int8(tmp / "fitted.onnx", int8_path(tmp / "fitted.onnx"), small, "train", images=2)
    return ckpt, stats, tmp / "fitted.onnx"


def test_stats_travel_in_checkpoint_onnx_and_int8(fitted):
    ckpt, stats, onnx_path = fitted
    original = load_checkpoint(onnx_path.with_name("random.pt"))
    assert familiarity_stats(ckpt) == stats and stats.short_side == 128 and stats.field == "peanut"
    assert familiarity_stats(original) is None  # fitted into --out: the original is untouched
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert read_model_info(str(onnx_path)).familiarity == stats
    int8 = read_model_info(str(int8_path(onnx_path))).familiarity  # fitted again on the INT8 model's own features
    assert (int8.field, int8.short_side, int8.dim, int8.fitted_on["val_photos"]) == ("peanut", 128, stats.dim, 3)
    assert int8 != stats
    for path in (onnx_path, int8_path(onnx_path)):
        assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", FEATURES_OUTPUT]


def test_onnx_features_match_torch_so_scores_need_no_torch(fitted, peanut):
    ckpt, stats, onnx_path = fitted
    norm = ckpt["normalization"]
    x = torch.stack([normalize(resize_short_side(read_rgb(s.image), 128), norm["mean"], norm["std"])
                     for s in peanut.splits["test"][:2]])
    with torch.no_grad():
        ref = pooled_features(model_from_checkpoint(ckpt).segment(x)[1]).numpy()
    logits, feats = ort.InferenceSession(str(onnx_path)).run(None, {"image": x.numpy()})
    assert logits.shape == (2, 3, *x.shape[2:]) and feats.shape == (2, stats.dim)
    assert np.abs(stats.scores(feats) - stats.scores(ref)).max() < 1e-4
    _, int8 = ort.InferenceSession(str(int8_path(onnx_path))).run(None, {"image": x.numpy()})
    assert int8.shape == (2, stats.dim) and np.corrcoef(int8.ravel(), ref.ravel())[0, 1] > 0.98  # quantised, close


def test_metadata_without_stats_still_reads(fitted):
    info = read_model_info(str(fitted[2]))
    props = {k: v for k, v in info.to_props().items() if k != "weedseg.familiarity"}
    assert ModelInfo.from_props(props, "old.onnx").familiarity is None
    with pytest.raises(WeedsegError, match="familiarity statistics are malformed"):
        ModelInfo.from_props({**props, "weedseg.familiarity": "{}"}, "bad.onnx")


def test_predict_scores_every_photo_and_says_how_many_are_flagged(fitted, peanut, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for s in peanut.splits["test"][:3]:
        cv2.imwrite(str(photos / s.image.name), cv2.resize(cv2.imread(str(s.image)), (192, 144)))
    with caplog.at_level(logging.INFO, logger="weedseg.infer.pipeline"):
        rows = predict_path(photos, tmp_path / "out", Segmenter(fitted[2], device="cpu"),
                            PredictOptions(outputs=("mask",)), progress=False).rows
    with open(tmp_path / "out" / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["familiarity"] for r in table] == [r["familiarity"] for r in rows] and len(table) == 3
    assert all(0 < float(r["familiarity"]) <= 1 and r["unfamiliar"] in ("true", "false") for r in table)
    assert all((float(r["familiarity"]) < 0.5) == (r["unfamiliar"] == "true") for r in table)
    flagged = sum(r["unfamiliar"] == "true" for r in table)
    assert sum(f"{flagged} of 3 photos" in r.getMessage() or "all 3 photos look like the peanut" in r.getMessage()
               for r in caplog.records) == 1
    again = predict_path(photos, tmp_path / "out", Segmenter(fitted[2], device="cpu"),
                         PredictOptions(outputs=("mask",)), progress=False).rows  # resumed: scores from the journal
    assert [(r["status"], r["familiarity"]) for r in again] == [("done before", r["familiarity"]) for r in rows]


def test_a_model_without_stats_still_predicts_and_says_so_once(fitted, peanut, tmp_path, caplog):
    bare = tmp_path / "bare.onnx"
    info = read_model_info(str(fitted[2]))
    save_with_metadata(fitted[2], bare, ModelInfo(**{**info.__dict__, "familiarity": None}))
    photos = tmp_path / "photos"
    photos.mkdir()
    for s in peanut.splits["test"][:2]:
        cv2.imwrite(str(photos / s.image.name), cv2.resize(cv2.imread(str(s.image)), (96, 72)))
    with caplog.at_level(logging.INFO, logger="weedseg.infer.pipeline"):
        summary = predict_path(photos, tmp_path / "out", Segmenter(bare, device="cpu"),
                               PredictOptions(outputs=("mask",)), progress=False)
    assert summary.counts()["predicted"] == 2 and all(r.get("familiarity", "") == "" for r in summary.rows)
    assert sum("no familiarity statistics" in r.getMessage() for r in caplog.records) == 1
    with open(tmp_path / "out" / "summary.csv") as f:
        assert {"familiarity", "unfamiliar"} <= set(next(csv.reader(f)))


def test_training_fits_familiarity_into_best_pt(trained_run):
    stats = familiarity_stats(load_checkpoint(trained_run / "best.pt"))
    assert stats is not None and stats.field == "peanut" and stats.short_side == 256
    assert stats.fitted_on["val_photos"] == 40 and stats.threshold > 0


def test_fit_command_refuses_a_missing_checkpoint_in_one_line(tmp_path, peanut_root, capsys):
    assert main(["familiarity", "fit", str(tmp_path / "none.pt"), "--data-root", str(peanut_root)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_the_page_flags_an_unfamiliar_photo_above_its_masks(monkeypatch):
    monkeypatch.setenv("WEEDSEG_MODELS", str(DEFAULT_MODEL.parent))  # the shipped default, with its statistics
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    assert not at.exception and not at.info  # no "familiarity unknown" note for a model with statistics
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
    at.file_uploader[0].set_value([("noise.png", cv2.imencode(".png", noise)[1].tobytes(), "image/png")]).run()
    assert not at.exception
    assert len(at.warning) == 1 and "looks unlike the peanut fields this model learned from" in at.warning[0].value
    assert at.dataframe[-1].value["Unfamiliar"].tolist() == ["true"]  # the table of all images
