"""Fixtures that need the trainer (torch): small checkpoints built from the real peanut data."""

from __future__ import annotations

from pathlib import Path

import pytest

from weedseg.checkpoint import load_checkpoint, model_metadata, save_checkpoint
from weedseg.export import export_onnx
from weedseg.models import create_model
from weedseg.train import TrainConfig, train

SOIL_CROP_WEED, COLORS = ["soil", "crop", "weed"], [[0, 0, 0], [0, 255, 0], [255, 0, 0]]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained compact model saved as a weedseg checkpoint (soil, crop, weed; hostile-input tests)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    meta = model_metadata("unet-resnet18-quarter", 3, SOIL_CROP_WEED, COLORS, [0.5] * 3, [0.25] * 3)
    save_checkpoint(path, create_model("unet-resnet18-quarter", 3), meta)
    return path


@pytest.fixture(scope="session")
def model(checkpoint) -> Path:
    """That model exported to ONNX at input short side 64 (fast)."""
    path = checkpoint.with_name("model.onnx")
    export_onnx(load_checkpoint(checkpoint), path, input_short_side=64)
    return path


@pytest.fixture()
def random_checkpoint(tmp_path, peanut) -> Path:
    """An untrained compact model saved as a weedseg checkpoint (fast; for format and shape tests)."""
    model = create_model("unet-resnet18-quarter", 3)
    meta = model_metadata("unet-resnet18-quarter", 3, peanut.classes, peanut.colors, [0.49, 0.51, 0.43], [0.26, 0.27, 0.25])
    path = tmp_path / "random.pt"
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, peanut_root) -> Path:
    """A short real training on 10 % of the peanut training images (about 20 s on 2 cores); returns the run folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig(dataset="peanut", data_root=str(peanut_root), out=str(out), epochs=8, warmup_epochs=1,
                      train_fraction=0.15, seed=0, workers=0)
    train(cfg)
    return out
