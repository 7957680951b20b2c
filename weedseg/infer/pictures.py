"""The pictures `weedseg predict` writes per image: the class mask (PNG) and the colour overlay, encoded with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .. import WeedsegError

STRIP_PIXELS = 1 << 20  # pixels per strip of rows in full-size work
# A class mask is long runs of one value: without PNG row filters (libpng tries five per row) and with zlib's RLE
# strategy at level 1 it encodes about 4 times faster than with the defaults and into half the bytes
# (benchmarks/inference.py --pipeline-cost, docs/inference.md)
MASK_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 90]


def encode_image(array: np.ndarray, suffix: str) -> bytes:
    """PNG or JPEG bytes of an RGB (HxWx3) or grey (HxW) uint8 array."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = JPEG if suffix in (".jpg", ".jpeg") else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(suffix, array, params)
    if not ok:
        raise WeedsegError(f"could not encode a {array.shape[1]}x{array.shape[0]} image as {suffix}")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 class-index mask."""
    ok, buf = cv2.imencode(".png", mask, MASK_PNG)
    if not ok:
        raise WeedsegError(f"could not encode a {mask.shape[1]}x{mask.shape[0]} mask as PNG")
    return buf.tobytes()


def read_mask(path: Path) -> np.ndarray:
    """A class-index mask written by `weedseg predict` (PNG or GeoTIFF)."""
    with Image.open(path) as im:
        return np.asarray(im)


def strips(height: int, width: int, pixels: int = STRIP_PIXELS) -> list[slice]:
    """Row ranges of about `pixels` pixels each covering an image, for work whose temporaries must stay small."""
    step = max(1, pixels // max(1, width))
    return [slice(y, y + step) for y in range(0, height, step)]


def overlay(rgb: np.ndarray, mask: np.ndarray, colors: list[list[int]], alpha: float = 0.45, *,
            background: int | None) -> np.ndarray:
    """The photo with every class but `background` tinted in its colour (made in strips of rows, so only the result
    is held at full size). `background` is `ModelInfo.background`, the class named soil, background or ground
    wherever the model lists it; None tints every class."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: len(colors), 0] = colors
    out = np.empty_like(rgb)
    for rows in strips(*mask.shape):
        m, photo = mask[rows], rgb[rows]
        tinted = cv2.addWeighted(photo, 1 - alpha, cv2.LUT(cv2.merge([m, m, m]), lut), alpha, 0)
        if background is not None:
            cv2.copyTo(photo, (m == background).view(np.uint8), tinted)  # the background keeps the photo's pixels
        out[rows] = tinted
    return out
