"""Shared fixtures: the real peanut data and small checkpoints built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from weedseg.checkpoint import model_metadata, save_checkpoint
from weedseg.data import open_dataset
from weedseg.data.locate import find_dataset_root
from weedseg.models import create_model
from weedseg.train import TrainConfig, train


# Tests that need a real training run or a browser are end-to-end: marked slow, so `make test-quick`
# (pytest -m "not slow") skips them.
SLOW_FIXTURES = {"trained_run"}
SLOW_MODULES = {"test_app_browser.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> None:
    """`--engine auto` remembers its choices under $XDG_CACHE_HOME: the tests keep theirs out of ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def peanut_root() -> Path:
    """The real peanut dataset under $WEEDSEG_DATA (`make test` and CI set it to ../shared/field_data)."""
    return find_dataset_root("peanut")


@pytest.fixture(scope="session")
def peanut(peanut_root):
    """The peanut dataset opened with its committed split."""
    return open_dataset("peanut", peanut_root)


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
