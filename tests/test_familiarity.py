"""Familiarity: statistics of a model's own encoder features, carried in checkpoints and ONNX models, scored
without torch, flagged in predict's summary.csv and run log."""

from __future__ import annotations

import onnx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from weedseg import WeedsegError
from weedseg.checkpoint import familiarity_stats, load_checkpoint, model_from_checkpoint
from weedseg.data import LabelledData
from weedseg.export import export_onnx, int8_path, quantize_int8
from weedseg.familiarity import FEATURES_OUTPUT, FamiliarityStats, flagged_message, judge
from weedseg.familiarity.fit import add_familiarity, fit_stats, pooled_features
from weedseg.infer.metadata import ModelInfo, read_model_info


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


@pytest.fixture()
def fitted(random_checkpoint, peanut, tmp_path):
    """The random model with statistics fitted on 12 train and 4 val peanut photos, exported to ONNX (FP32, INT8)."""
    small = LabelledData(peanut.layout, {"train": peanut.splits["train"][:12], "val": peanut.splits["val"][:4]})
    stats = add_familiarity(random_checkpoint, small, "peanut", tmp_path / "fitted.pt", short_side=128)
    ckpt = load_checkpoint(tmp_path / "fitted.pt")
    onnx_path = tmp_path / "fitted.onnx"
    export_onnx(ckpt, onnx_path, 128)
    quantize_int8(onnx_path, int8_path(onnx_path), small, "train", images=2)
    return ckpt, stats, onnx_path


def test_stats_travel_in_checkpoint_onnx_and_int8(fitted, random_checkpoint):
    ckpt, stats, onnx_path = fitted
    assert familiarity_stats(ckpt) == stats and stats.short_side == 128 and stats.field == "peanut"
    assert familiarity_stats(load_checkpoint(random_checkpoint)) is None  # the original is untouched
    assert torch.equal(ckpt["state_dict"]["head.1.weight"], load_checkpoint(random_checkpoint)["state_dict"]["head.1.weight"])
    for path in (onnx_path, int8_path(onnx_path)):
        assert read_model_info(str(path)).familiarity == stats
        assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", FEATURES_OUTPUT]


def test_onnx_features_match_torch_so_scores_need_no_torch(fitted):
    ckpt, stats, onnx_path = fitted
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pooled_features(model_from_checkpoint(ckpt).segment(x)[1]).numpy()
    for path, tol in ((onnx_path, 1e-4), (int8_path(onnx_path), 0.05)):
        logits, feats = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
        assert logits.shape == (2, 3, 128, 160) and feats.shape == (2, stats.dim)
        assert np.abs(stats.scores(feats) - stats.scores(ref)).max() < tol


def test_metadata_without_stats_still_reads(fitted):
    info = read_model_info(str(fitted[2]))
    props = {k: v for k, v in info.to_props().items() if k != "weedseg.familiarity"}
    assert ModelInfo.from_props(props, "old.onnx").familiarity is None
    with pytest.raises(WeedsegError, match="familiarity statistics are malformed"):
        ModelInfo.from_props({**props, "weedseg.familiarity": "{}"}, "bad.onnx")
