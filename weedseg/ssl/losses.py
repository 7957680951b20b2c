"""Reconstruction losses over the whole image, and the per-cell loss that selective masking ranks.

Images arrive normalised (per-channel mean 0, std 1). L1 is taken on the normalised tensors; SSIM
and MS-SSIM on the same images mapped back to [0, 1] pixels (data range 1, the usual constants);
maps keep the image size (windows are cut at the border).
- MS-SSIM: the standard 11-tap Gaussian window (sigma 1.5), up to 5 scales; scales smaller than
  the window are dropped (256 px keeps all 5: 256, 128, 64, 32, 16) and the weights renormalised.
- SSIM (the `l1+ssim` loss and every per-cell score): a 3 x 3 uniform window, as the reference
  code's selective runs use. It keeps a cell's score about that cell (an 11-tap window reaches 5 px
  into the neighbours of a 12 px cell) and costs a fraction of the Gaussian on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RECON_LOSSES = ("l1+msssim", "l1+ssim", "l1")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
GAUSSIAN, SIGMA = 11, 1.5  # MS-SSIM window
C1, C2 = 0.01**2, 0.03**2


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 11-tap Gaussian filter per channel, replicate-padded to keep the size."""
    t = torch.arange(GAUSSIAN, dtype=x.dtype, device=x.device) - (GAUSSIAN - 1) / 2
    g = torch.exp(-(t**2) / (2 * SIGMA**2))
    g = (g / g.sum()).repeat(x.shape[1], 1, 1, 1)  # (C, 1, 1, window)
    pad = GAUSSIAN // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), g, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), g.transpose(2, 3), groups=x.shape[1])


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 mean, over the pixels inside the image at the border."""
    return F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)


def ssim_maps(x: torch.Tensor, y: torch.Tensor, gaussian: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM and contrast-structure maps, both (B, C, H, W), of images in [0, 1].

    The window is 3 x 3 uniform, or the 11-tap Gaussian when `gaussian` (MS-SSIM).
    """
    blur = _gaussian_blur if gaussian else _box3
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + C2) / (var_x + var_y + C2)
    return (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1) * cs, cs


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image (B,), averaged over channels, of images in [0, 1]."""
    scales = max(1, min(len(MS_SSIM_WEIGHTS), 1 + int(math.log2(min(x.shape[-2:]) / GAUSSIAN))))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    values = []
    for s in range(scales):
        ssim, cs = ssim_maps(x, y, gaussian=True)
        values.append((ssim if s == scales - 1 else cs).mean((2, 3)))
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values).clamp_min(1e-6)  # (scales, B, C); negative structure counts as none
    return (stacked ** (weights / weights.sum()).view(-1, 1, 1)).prod(0).mean(1)


class ReconstructionLoss(nn.Module):
    """L1 + (1 - MS-SSIM), L1 + (1 - SSIM) or L1 (weights 1:1) between a prediction and its target."""

    def __init__(self, kind: str, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if kind not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of: {', '.join(RECON_LOSSES)}")
        self.kind = kind
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float()
        loss = (pred - target).abs().mean()
        if self.kind == "l1+msssim":
            loss = loss + 1 - ms_ssim(self._pixels(pred), self._pixels(target)).mean()
        elif self.kind == "l1+ssim":
            loss = loss + 1 - ssim_maps(self._pixels(pred), self._pixels(target))[0].mean()
        return loss

    def per_cell(self, pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, num_cells: int) -> torch.Tensor:
        """Mean loss inside each cell, (B, num_cells): L1 + (1 - SSIM map) (just L1 for kind 'l1').

        MS-SSIM has no full-resolution map, so both SSIM kinds score cells with the 3 x 3 SSIM map.
        `labels` (H, W) holds each pixel's cell index (`Grid.labels`).
        """
        pred = pred.float()
        loss_map = (pred - target).abs().mean(1)
        if self.kind != "l1":
            loss_map = loss_map + 1 - ssim_maps(self._pixels(pred), self._pixels(target))[0].mean(1)
        flat = labels.flatten().to(pred.device)
        sums = torch.zeros(pred.shape[0], num_cells, device=pred.device).index_add_(1, flat, loss_map.flatten(1))
        return sums / torch.bincount(flat, minlength=num_cells).clamp_min(1)
