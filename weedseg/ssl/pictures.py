"""Pictures of what the pretrained model finds hard: input | masked input | reconstruction | per-cell loss."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from .masking import Grid


def to_rgb(x: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (3, H, W) tensor as HxWx3 uint8 RGB."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def heat_map(scores: np.ndarray, grid: Grid, selected: np.ndarray) -> np.ndarray:
    """Per-cell loss as an RGB heat map (inferno, scaled per image); selected cells outlined in white."""
    s = np.asarray(scores, np.float32)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-12)
    heat = cv2.applyColorMap(grid.expand((s * 255).astype(np.uint8)), cv2.COLORMAP_INFERNO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    for cell in np.flatnonzero(selected):
        r, c = divmod(int(cell), grid.shape[1])
        cv2.rectangle(heat, (grid.x[c], grid.y[r]), (grid.x[c + 1] - 1, grid.y[r + 1] - 1), (255, 255, 255), 1)
    return heat


def save_panel(path: Path, tiles: list[tuple[str, np.ndarray]]) -> None:
    """Write RGB tiles of one height side by side, each under its title, as a PNG."""
    labelled = []
    for title, tile in tiles:
        bar = np.full((22, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        labelled.append(np.vstack([bar, tile]))
    gap = np.full((labelled[0].shape[0], 4, 3), 255, np.uint8)
    row = np.hstack([part for tile in labelled for part in (tile, gap)][:-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
