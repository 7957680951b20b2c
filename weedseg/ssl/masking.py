"""Cell grids and cell masks: which patches of an image pretraining hides.

A grid has about sqrt(`cells`) square cells along the short side (21 x 21 cells of 12 px on a
256 x 256 image with cells=512); a last strip narrower than half a cell merges into its neighbour.
Masked pixels are set to 0 in the normalised image, which is exactly the dataset mean colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.transforms import normalize
from ..data.unlabeled import UnlabeledImages

DEFAULT_CELLS = 512


def cell_size(short_side: int, cells: int = DEFAULT_CELLS) -> int:
    """Cell side in pixels: ceil(short_side / sqrt(cells)), e.g. 12 px at 256 px with 512 cells."""
    return max(1, math.ceil(short_side / math.sqrt(cells)))


def grid_edges(length: int, cell: int) -> tuple[int, ...]:
    """Cell boundaries along one side: full cells of `cell` px; a remainder under half a cell joins the last."""
    n = max(1, length // cell)
    if length - n * cell >= cell / 2:
        n += 1
    return tuple(i * cell for i in range(n)) + (length,)


@dataclass(frozen=True)
class Grid:
    """Cell boundaries (pixel edges from 0 to the side length) along y and x."""

    y: tuple[int, ...]
    x: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.y) - 1, len(self.x) - 1

    @property
    def num_cells(self) -> int:
        return self.shape[0] * self.shape[1]

    def scaled(self, height: int, width: int) -> Grid:
        """The same cells on the image resized to height x width."""
        sy, sx = height / self.y[-1], width / self.x[-1]
        return Grid(tuple(round(e * sy) for e in self.y), tuple(round(e * sx) for e in self.x))

    def expand(self, cell_mask: np.ndarray) -> np.ndarray:
        """A flat per-cell array (row-major) as an HxW per-pixel array."""
        per_cell = np.asarray(cell_mask).reshape(self.shape)
        return np.repeat(np.repeat(per_cell, np.diff(self.y), 0), np.diff(self.x), 1)

    def labels(self) -> np.ndarray:
        """HxW array of the cell index (row-major) of every pixel."""
        return self.expand(np.arange(self.num_cells))


def make_grid(height: int, width: int, cells: int = DEFAULT_CELLS) -> Grid:
    """The cell grid of a height x width image (square cells sized from the short side)."""
    cell = cell_size(min(height, width), cells)
    return Grid(grid_edges(height, cell), grid_edges(width, cell))


def num_masked(num_cells: int, ratio: float) -> int:
    """How many cells a mask of `ratio` hides: round(ratio * num_cells)."""
    return min(num_cells, max(0, round(ratio * num_cells)))


def random_cell_mask(num_cells: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A flat boolean mask with exactly num_masked(num_cells, ratio) cells chosen uniformly at random."""
    mask = np.zeros(num_cells, bool)
    mask[rng.permutation(num_cells)[: num_masked(num_cells, ratio)]] = True
    return mask


def top_cells(scores: np.ndarray, ratio: float) -> np.ndarray:
    """A flat boolean mask of the num_masked cells with the highest scores (ties: lower index first)."""
    scores = np.asarray(scores).ravel()
    mask = np.zeros(scores.size, bool)
    mask[np.argsort(-scores, kind="stable")[: num_masked(scores.size, ratio)]] = True
    return mask


def apply_mask(image: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Fill the masked pixels of a normalised image (..., 3, H, W) with 0, the dataset mean colour."""
    return image.masked_fill(pixel_mask.bool().unsqueeze(-3), 0.0)


class MaskedImages(Dataset):
    """Training pairs (masked input, clean target) for reconstruction pretraining.

    `indices` picks images of `images`. Without `cell_masks` every load draws a fresh random mask on
    the augmented crop (random masking). With `cell_masks` (image index -> (grid on the image,
    flat cell mask)) the mask is fixed: it is drawn on the image and cropped/flipped with it
    (selective masking). Items are (index, seed) pairs from `SeededSampler`.
    """

    def __init__(self, images: UnlabeledImages, indices: list[int], augment, mean: list[float],
                 std: list[float], ratio: float, cells: int = DEFAULT_CELLS,
                 cell_masks: dict[int, tuple[Grid, np.ndarray]] | None = None) -> None:
        self.images, self.indices, self.augment = images, indices, augment
        self.mean, self.std, self.ratio, self.cells, self.cell_masks = mean, std, ratio, cells, cell_masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, seed = item
        index = self.indices[position]
        rng = np.random.default_rng(seed)
        image = self.images.load(index)
        h, w = image.shape[:2]
        if self.cell_masks is None:
            pixels = np.zeros((h, w), np.uint8)
        else:
            grid, cell_mask = self.cell_masks[index]
            pixels = grid.scaled(h, w).expand(cell_mask).astype(np.uint8)
        image, pixels = self.augment(image, pixels, rng)
        if self.cell_masks is None:
            grid = make_grid(*image.shape[:2], self.cells)
            pixels = grid.expand(random_cell_mask(grid.num_cells, self.ratio, rng))
        target = normalize(image, self.mean, self.std)
        return apply_mask(target, torch.from_numpy(np.ascontiguousarray(pixels))), target
