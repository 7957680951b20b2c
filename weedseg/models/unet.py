"""U-Net: ResNet encoder, three nearest-upsample + concat decoder blocks, dropout + 1x1 head, x4 upsample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNetEncoder


def conv_bn_silu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 convolution, batch norm, SiLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.SiLU(inplace=True))


class DecoderBlock(nn.Module):
    """Nearest x2 upsample, concatenate the skip feature, then 2 x (conv-BN-SiLU)."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_silu(in_ch + skip_ch, out_ch), conv_bn_silu(out_ch, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net for dense prediction at any input size.

    The input is reflect-padded to a multiple of `size_multiple` (the encoder's total stride, 32)
    and the output cropped back, so the output always has the input's height and width.
    With `num_classes=3` and an MSE/L1 loss the same network regresses RGB (pretraining).
    """

    size_multiple = 32

    def __init__(self, num_classes: int, depth: int = 34, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth=depth, width=width)
        c1, c2, c3, c4 = self.encoder.channels
        self.decoder = nn.ModuleList(
            [DecoderBlock(c4, c3, c3), DecoderBlock(c3, c2, c2), DecoderBlock(c2, c1, c1)]
        )
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(c1, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(x)[0]

    def segment(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the encoder's four feature maps (of the padded input), from one pass."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            # reflect needs the pad to be smaller than the side; replicate covers tiny inputs
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        features = self.encoder(x)
        f1, f2, f3, f4 = features
        y = self.decoder[0](f4, f3)
        y = self.decoder[1](y, f2)
        y = self.decoder[2](y, f1)
        y = self.head(y)
        y = F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False)
        return y[..., :h, :w], features
