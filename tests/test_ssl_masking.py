"""Cell grids, random and top-loss cell masks, the mean fill, partitions and budget parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weedseg.data import TrainAugment
from weedseg.data.unlabeled import UnlabeledImages
from weedseg.ssl.masking import (Grid, MaskedImages, apply_mask, cell_size, grid_edges, make_grid, num_masked,
                                 random_cell_mask, top_cells)
from weedseg.ssl.pretrain import batches_per_epoch, plan_steps


@pytest.mark.parametrize("shape, cells, grid_shape", [
    ((256, 256), 512, (21, 21)),   # the paper: 12 px cells, a 4 px strip merges into the last cell
    ((256, 341), 512, (21, 28)),   # peanut 960x720 at short side 256
    ((720, 960), 512, (23, 30)),   # 32 px cells (720 / 22.6 -> 32): a 16 px strip (half a cell) stays a cell
    ((224, 224), 512, (22, 22)),
    ((512, 512), 512, (22, 22)),
    ((64, 64), 16, (4, 4)),
    ((10, 7), 512, (10, 7)),       # tiny image: 1 px cells
])
def test_grid_sizes(shape, cells, grid_shape):
    grid = make_grid(*shape, cells)
    assert grid.shape == grid_shape
    assert grid.y[0] == grid.x[0] == 0 and (grid.y[-1], grid.x[-1]) == shape
    widths = np.diff(grid.x)
    cell = cell_size(min(shape), cells)
    assert (widths[:-1] == cell).all() and cell / 2 <= widths[-1] < 1.5 * cell


def test_last_strip_merges_or_stays():
    assert cell_size(256) == 12
    assert grid_edges(256, 12)[-2:] == (240, 256)  # 4 px remainder merged: last cell 16 px
    assert grid_edges(258, 12)[-2:] == (252, 258)  # 6 px remainder (half a cell) is its own cell


def test_grid_scaling_and_labels():
    grid = make_grid(256, 341)
    big = grid.scaled(720, 960)
    assert big.shape == grid.shape and (big.y[-1], big.x[-1]) == (720, 960)
    labels = grid.labels()
    assert labels.shape == (256, 341) and labels.max() == grid.num_cells - 1
    assert np.bincount(labels.ravel()).min() > 0


@pytest.mark.parametrize("n, ratio", [(441, 0.5), (588, 0.5), (16, 0.25), (7, 0.75)])
def test_random_mask_exact_ratio(n, ratio):
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert random_cell_mask(n, ratio, rng).sum() == num_masked(n, ratio) == round(ratio * n)


def test_top_cells_picks_highest():
    scores = np.random.default_rng(1).permutation(100).astype(float)
    mask = top_cells(scores, 0.5)
    assert mask.sum() == 50 and scores[mask].min() > scores[~mask].max()


def test_mean_fill_is_zero_after_normalisation():
    image = torch.randn(3, 8, 8)
    pixel = torch.zeros(8, 8, dtype=torch.bool)
    pixel[2:5, 3:7] = True
    out = apply_mask(image, pixel)
    assert (out[:, pixel] == 0).all() and torch.equal(out[:, ~pixel], image[:, ~pixel])
    mean, std = torch.tensor([0.4, 0.5, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    filled = out[:, 3, 4] * std + mean  # de-normalised: exactly the dataset mean colour
    assert torch.allclose(filled, mean)


def _images(n=3, shape=(60, 80)):
    rng = np.random.default_rng(0)
    images = UnlabeledImages([f"im{i}.png" for i in range(n)])
    images._cache = {i: rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for i in range(n)}
    return images


def test_random_masked_items_are_seeded_and_exact():
    ds = MaskedImages(_images(), [0, 1, 2], TrainAugment(32), [0.5] * 3, [0.25] * 3, 0.5, cells=16)
    masked, target = ds[(1, 123)]
    again, _ = ds[(1, 123)]
    assert torch.equal(masked, again) and not torch.equal(masked, ds[(1, 124)][0])
    hidden = (masked == 0).all(0) & (target != 0).any(0)
    grid = make_grid(32, 32, 16)
    per_cell = np.array([hidden.numpy()[grid.labels() == c].all() for c in range(grid.num_cells)])
    assert per_cell.sum() == num_masked(grid.num_cells, 0.5)


def test_selective_mask_moves_with_crop_and_flip():
    images = _images(1, (64, 64))
    grid = make_grid(64, 64, 16)  # 4 x 4 cells of 16 px
    cells = np.zeros(16, bool)
    cells[[0, 5, 10, 15]] = True  # the diagonal
    ds = MaskedImages(images, [0], TrainAugment(64, scale=(1.0, 1.0), ratio=(1.0, 1.0)), [0.5] * 3, [0.25] * 3,
                      0.5, cells=16, cell_masks={0: (grid, cells)})
    for seed in range(6):  # full-image crop, with or without a flip: the diagonal, possibly mirrored
        masked, target = ds[(0, seed)]
        hidden = ((masked == 0).all(0) & (target != 0).any(0)).numpy()
        expected = grid.expand(cells)
        assert (hidden == expected).all() or (hidden == expected[:, ::-1]).all()


def test_partitions_disjoint_covering_and_budget_parity():
    steps = plan_steps("selective", 283, 10, 7, 8)
    parts = [set(idx) for idx, _ in steps]
    assert sum(map(len, parts)) == 283 and set().union(*parts) == set(range(283))
    assert steps[3][0][:3] == [3, 13, 23]  # interleaved: partition k = images[k::P]
    assert [it for _, it in steps] == [7 * (29 // 8)] * 3 + [7 * (28 // 8)] * 7
    random = plan_steps("random", 283, 10, 7, 8)
    assert len(random) == 1 and random[0][1] == sum(it for _, it in steps) == 210
    assert batches_per_epoch(5, 8) == 1 and batches_per_epoch(28, 8, world=2) == 3  # 14 per process, batch 4
    with pytest.raises(Exception, match="partitions"):
        plan_steps("selective", 5, 10, 1, 2)


def test_grid_is_hashable_and_picklable():
    import pickle

    grid = make_grid(30, 40, 16)
    assert pickle.loads(pickle.dumps(grid)) == grid and isinstance(grid, Grid)
