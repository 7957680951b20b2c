"""Reconstruction losses, scoring and selection, and tiny end-to-end pretraining runs (with resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint
from weedseg.data.io import find_images
from weedseg.data.unlabeled import open_images
from weedseg.ssl.losses import ReconstructionLoss, ms_ssim, ssim_maps
from weedseg.ssl.pretrain import PretrainConfig, pretrain, score_cells
from weedseg.ssl.masking import top_cells


def write_images(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """n small smooth RGB images in a nested folder, as PNG / JPG / TIFF, plus one unreadable file."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((64 + 8 * (i % 2), 48), Image.BILINEAR)
        sub = folder / ("nested" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / f"img{i:02d}.{['png', 'jpg', 'tif'][i % 3]}")
    (folder / "broken.jpg").write_text("not an image")
    return folder


def tiny_config(images: Path, out: Path, **overrides) -> PretrainConfig:
    """A pretraining run of a few seconds on `images`."""
    values = dict(images=str(images), out=str(out), epochs=2, partitions=3, batch_size=2, crop=32,
                  score_short_side=32, warmup_epochs=1, save_every=2, pictures=2, workers=0, cells=64,
                  loss="l1+msssim")
    return PretrainConfig(**{**values, **overrides})


def test_ssim_and_ms_ssim():
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(ssim_maps(x, x)[0], torch.ones(1)) and torch.allclose(ms_ssim(x, x), torch.ones(2))
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (ms_ssim(x, noisy) < 0.9).all() and ms_ssim(torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)) < 0.2
    loss = ReconstructionLoss("l1+msssim", [0.5] * 3, [0.25] * 3)
    pred = torch.zeros(1, 3, 32, 32, requires_grad=True)
    loss(pred, torch.randn(1, 3, 32, 32)).backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError):
        ReconstructionLoss("mse", [0.5] * 3, [0.25] * 3)


def test_per_cell_loss_is_zero_where_exact():
    loss = ReconstructionLoss("l1+ssim", [0.5] * 3, [0.25] * 3)
    target = torch.randn(1, 3, 32, 32)
    pred = target.clone()
    pred[..., 16:, 16:] += 1.0  # only the last of 4 cells of 16 px is wrong
    labels = torch.arange(4).view(2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1)
    cells = loss.per_cell(pred, target, labels, 4)[0]
    assert cells[3] > 1.0 and cells[0] < 0.01 and cells[1:3].max() < 0.1  # SSIM windows reach 5 px across


class ZeroModel(nn.Module):
    """A stub whose reconstruction is 0 everywhere: its L1 cell loss is the cell's mean |value|."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + 0 * self.dummy


def test_selection_masks_exactly_the_highest_loss_cells(tmp_path):
    values = np.random.default_rng(3).permutation(16) * 15  # one distinct grey level per cell of 16 px
    image = np.repeat(np.repeat(values.reshape(4, 4), 16, 0), 16, 1).astype(np.uint8)
    Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "cells.png")
    images, _ = open_images([tmp_path / "cells.png"], progress=False)
    cfg = PretrainConfig(loss="l1", cells=16, score_short_side=64, draws=3)
    grid, scores = score_cells(ZeroModel(), images, [0], cfg, 1, [0.0] * 3, [1.0] * 3, torch.device("cpu"))[0]
    assert grid.shape == (4, 4)
    np.testing.assert_allclose(scores, values / 255.0, rtol=1e-5)  # the known per-cell loss
    chosen = top_cells(scores, 0.5)
    assert set(np.flatnonzero(chosen)) == set(np.argsort(values)[-8:])


def test_find_images_recursive_and_unreadable_skipped(tmp_path):
    folder = write_images(tmp_path / "imgs", 6)
    paths = find_images(folder)
    assert len(paths) == 7 and any("nested" in str(p) for p in paths)
    images, skipped = open_images(paths, progress=False)
    assert len(images) == 6 and len(skipped) == 1 and "broken.jpg" in skipped[0]
    with pytest.raises(WeedsegError):
        find_images(tmp_path / "missing")


def test_scoring_is_deterministic(tmp_path):
    images, _ = open_images(find_images(write_images(tmp_path / "imgs", 4)), progress=False)
    torch.manual_seed(0)
    from weedseg.models import create_model

    model = create_model("unet-resnet18-quarter", 3)
    cfg = PretrainConfig(cells=64, score_short_side=32, score_batch=3)
    a = score_cells(model, images, [0, 1, 2, 3], cfg, 2, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    b = score_cells(model, images, [3, 1], cfg, 2, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    np.testing.assert_allclose(a[1][1], b[1][1], rtol=1e-5)  # batching and order do not matter
    c = score_cells(model, images, [1], cfg, 3, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    assert not np.allclose(a[1][1], c[1][1])  # a new step draws new random masks


@pytest.fixture(scope="module")
def selective_run(tmp_path_factory) -> Path:
    """One tiny uninterrupted selective run (3 steps)."""
    root = tmp_path_factory.mktemp("ssl")
    out = root / "run"
    pretrain(tiny_config(write_images(root / "imgs"), out))
    return out


def test_selective_run_outputs(selective_run):
    out = selective_run
    for step in range(3):
        assert (out / f"step{step}" / "model.pt").is_file()
        assert len(list((out / f"step{step}" / "pictures").glob("*.png"))) == 2
    assert not (out / "step0" / "masks.json").exists()  # step 0 masks at random
    record = json.loads((out / "step1" / "masks.json").read_text())
    assert [item["index"] for item in record["images"]] == [1, 4, 7, 10]  # partition 1 = images[1::3]
    for item in record["images"]:
        loss = np.array(item["cell_loss"])
        masked = np.zeros(loss.size, bool)
        masked[item["masked_cells"]] = True
        assert masked.sum() == round(0.5 * loss.size) and loss[masked].min() >= loss[~masked].max()
    final = load_checkpoint(out / "final.pt")
    assert final["task"] == "reconstruction" and final["model"]["num_classes"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 * 2 * 2 and 0 < summary["score_share"] < 1
    assert len((out / "log.jsonl").read_text().splitlines()) == 6


def test_random_run_has_the_same_iterations(tmp_path, selective_run):
    out = tmp_path / "random"
    pretrain(tiny_config(write_images(tmp_path / "imgs"), out, method="random", pictures=1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == json.loads((selective_run / "summary.json").read_text())["iterations"]
    assert (out / "step0" / "model.pt").is_file() and not (out / "step1").exists()


def test_existing_run_needs_resume_or_overwrite(tmp_path, selective_run):
    with pytest.raises(WeedsegError, match="--resume"):
        pretrain(tiny_config(tmp_path, selective_run))


def test_resume_after_interrupt_matches_unbroken_run(tmp_path, selective_run, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_config(write_images(selective_run.parent / "imgs"), out)
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def step_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # step 1, iteration 4 of 4; its last resume point is iteration 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_die)
    with pytest.raises(WeedsegError, match="resume"):
        pretrain(cfg)
    monkeypatch.setattr(torch.optim.Adam, "step", original)
    state = load_checkpoint(out / "last.pt")["pretrain_state"]
    assert (state["step"], state["iteration"]) == (1, 2)
    pretrain(PretrainConfig(out=str(out)), resume=True)
    for name in ("step1/masks.json", "step2/masks.json", "log.jsonl"):
        a, b = (selective_run / name).read_text(), (out / name).read_text()
        if name.endswith(".json"):
            a, b = json.loads(a), json.loads(b)
            a.pop("score_seconds"), b.pop("score_seconds")
            [item.pop("path") for item in a["images"] + b["images"]]
        assert a == b, name
    expected = load_checkpoint(selective_run / "final.pt")["state_dict"]
    got = load_checkpoint(out / "final.pt")["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_pool_of_dataset_and_folders_never_takes_val_or_test(tmp_path, peanut, capsys):
    from weedseg.ssl.pretrain import pool_sources

    a, b = write_images(tmp_path / "a", n=3), write_images(tmp_path / "b", n=2, seed=1)
    test_image = peanut.splits["test"][0].image
    (b / "leak.jpg").symlink_to(test_image)  # a folder that happens to hold a peanut test photo
    sources = pool_sources(PretrainConfig(dataset="peanut", data_root=str(peanut.layout.root), images=[str(a), str(b)]))
    assert len(sources["peanut train split"]) == len(peanut.splits["train"])
    assert len(sources[str(a)]) == 4 and len(sources[str(b)]) == 3  # 3 / 2 images + one broken file each
    assert all(p.resolve() != test_image.resolve() for p in sources[str(b)])
    assert "left out 1 peanut val/test images" in capsys.readouterr().out
    with pytest.raises(WeedsegError, match="nothing to pretrain on"):
        pool_sources(PretrainConfig(dataset=None, images=None))
