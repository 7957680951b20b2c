"""Fine-tuning from a pretrained checkpoint: what is copied, the head policy, the normalisation."""

from __future__ import annotations

import json

import pytest
import torch

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint, model_metadata, save_checkpoint
from weedseg.models import create_model
from weedseg.ssl.transfer import check_init_model, format_report, transfer_weights
from weedseg.train import TrainConfig, train

MEAN, STD = [0.31, 0.42, 0.27], [0.21, 0.22, 0.23]


@pytest.fixture()
def pretrained(tmp_path):
    """A reconstruction checkpoint (3 RGB outputs) with distinctive weights and normalisation."""
    torch.manual_seed(5)
    model = create_model("unet-resnet18-quarter", 3)
    meta = {**model_metadata("unet-resnet18-quarter", 3, ["red", "green", "blue"], [[255, 0, 0]] * 3, MEAN, STD),
            "task": "reconstruction"}
    save_checkpoint(tmp_path / "pre.pt", model, meta)
    return tmp_path / "pre.pt"


def test_head_reinitialised_by_default(pretrained):
    ckpt = load_checkpoint(pretrained)
    model = create_model("unet-resnet18-quarter", 3)
    head_before = model.head[1].weight.clone()
    report = transfer_weights(model, ckpt)
    assert sorted(report["reinitialised"]) == ["head.1.bias", "head.1.weight"]
    assert len(report["copied"]) == len(ckpt["state_dict"]) - 2
    assert {name.split(".")[0] for name in report["copied"]} == {"encoder", "decoder"}
    state = model.state_dict()
    assert all(torch.equal(state[k], ckpt["state_dict"][k]) for k in report["copied"])
    assert torch.equal(model.head[1].weight, head_before)
    assert "re-initialised head.1.weight" in format_report(report)


def test_init_head_copies_matching_head_only(pretrained):
    ckpt = load_checkpoint(pretrained)
    model = create_model("unet-resnet18-quarter", 3)
    report = transfer_weights(model, ckpt, copy_head=True)
    assert report["reinitialised"] == {} and torch.equal(model.head[1].weight, ckpt["state_dict"]["head.1.weight"])
    four = create_model("unet-resnet18-quarter", 4)
    report = transfer_weights(four, ckpt, copy_head=True)
    assert sorted(report["reinitialised"]) == ["head.1.bias", "head.1.weight"]
    assert "shape" in report["reinitialised"]["head.1.weight"]


def test_other_architecture_is_refused(pretrained):
    with pytest.raises(WeedsegError, match="--model unet-resnet18-quarter"):
        check_init_model(load_checkpoint(pretrained), "unet-resnet34", str(pretrained))


def test_train_init_uses_pretrained_weights_and_normalisation(tmp_path, pretrained, peanut_root):
    out = tmp_path / "fine"
    cfg = TrainConfig(dataset="peanut", data_root=str(peanut_root), out=str(out), epochs=1, warmup_epochs=1,
                      train_fraction=0.03, crop=64, eval_short_side=64, workers=0, init=str(pretrained))
    train(cfg)
    report = json.loads((out / "init_report.json").read_text())
    assert report["init"] == str(pretrained) and len(report["reinitialised"]) == 2
    best = load_checkpoint(out / "best.pt")
    assert best["normalization"] == {"mean": MEAN, "std": STD}
    assert best["config"]["init"] == str(pretrained) and best["classes"] == ["soil", "crop", "weed"]
