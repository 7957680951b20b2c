"""Augmentation and resizing on uint8 numpy arrays (image HxWx3 RGB, mask HxW class indices).

Imports no torch (inference uses resize_short_side without it); only `normalize` needs torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch


def random_resized_crop(
    image: np.ndarray, mask: np.ndarray, size: int, scale: tuple[float, float],
    ratio: tuple[float, float], rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resize to size x size."""
    h, w = mask.shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:  # fall back to the largest centred crop
        cw, ch = min(w, h), min(w, h)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    image = image[y0 : y0 + ch, x0 : x0 + cw]
    mask = mask[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if cw > size else cv2.INTER_LINEAR
    return (cv2.resize(image, (size, size), interpolation=interp),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))


GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float, hue: float) -> np.ndarray:
    """Random brightness, contrast, saturation (each by up to +-strength) and hue (+-hue turns).

    Brightness (x * b), contrast about the mean grey level (g + c (x - g)) and saturation about each
    pixel's grey (grey + s (x - grey)) are all affine in the RGB value, so they are composed into one
    3x4 colour matrix and applied in a single saturating uint8 pass (cv2.transform).
    """
    b, c, s = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    mean_grey = b * float(GREY_WEIGHTS @ np.asarray(cv2.mean(image)[:3], np.float32))
    saturate = s * np.eye(3, dtype=np.float32) + (1 - s) * np.outer(np.ones(3, np.float32), GREY_WEIGHTS)
    matrix = np.hstack([saturate * (b * c), (saturate @ np.full(3, (1 - c) * mean_grey, np.float32))[:, None]])
    img = cv2.transform(image, matrix.astype(np.float32))
    if hue > 0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        shift = int(round(rng.uniform(-hue, hue) * 180))
        hsv[..., 0] = cv2.LUT(hsv[..., 0], ((np.arange(256) + shift) % 180).astype(np.uint8))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `short_side` pixels (0: unchanged)."""
    if short_side <= 0 or min(height, width) == short_side:
        return width, height
    s = short_side / min(height, width)
    return max(1, round(width * s)), max(1, round(height * s))


def resize_short_side(image: np.ndarray, short_side: int, nearest: bool = False) -> np.ndarray:
    """Resize so the shorter side is `short_side` pixels (0 keeps the full resolution)."""
    h, w = image.shape[:2]
    size = short_side_size(w, h, short_side)
    if size == (w, h):
        return image
    s = short_side / min(h, w)
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=interp)


@dataclass
class TrainAugment:
    """Random resized crop, horizontal flip and colour jitter (the paper's fine-tuning recipe); with
    `rotate90` also a rotation by a random multiple of 90 degrees (with the flip: all 8 symmetries of a square).

    A crop covers an area fraction in `scale` of the photo, unless `zoom` is given: then it covers
    (size x zoom)^2 pixels of the photo as the model sees it at inference (short side
    `input_short_side`, 0 = native), so objects keep their inference size within the zoom range
    whatever the photo size.
    """

    size: int = 256
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.3
    hue: float = 0.02
    zoom: tuple[float, float] | None = None
    input_short_side: int = 0
    rotate90: bool = False

    def area_range(self, height: int, width: int) -> tuple[float, float]:
        """The crop's area fraction range for a photo of this size."""
        if self.zoom is None:
            return self.scale
        to_model = self.input_short_side / min(height, width) if self.input_short_side else 1.0
        low, high = ((self.size * z / to_model) ** 2 / (height * width) for z in self.zoom)
        return min(low, 1.0), min(high, 1.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = self.area_range(*mask.shape[:2])
        image, mask = random_resized_crop(image, mask, self.size, scale, self.ratio, rng)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.rotate90:
            turns = int(rng.integers(4))
            image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        image = color_jitter(np.ascontiguousarray(image), rng, self.jitter, self.hue)
        return image, np.ascontiguousarray(mask)


@dataclass
class CopyPaste:
    """Simple copy-paste: with probability `p`, the pixels of `classes` in a second training crop
    (another photo, augmented with its own random draws) are pasted over the first, image and label alike."""

    classes: tuple[int, ...]
    p: float = 0.5

    def __call__(self, image: np.ndarray, mask: np.ndarray, donor_image: np.ndarray,
                 donor_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        take = np.isin(donor_mask, self.classes)
        return np.where(take[..., None], donor_image, image), np.where(take, donor_mask, mask)


@dataclass
class EvalResize:
    """Resize the image to the model's input short side and the mask to the scoring resolution.

    The mask follows the image unless `full_res_mask` (keep it at full size) or `mask_short_side`
    (resize it to that short side) says otherwise; evaluation resizes the logits to the mask.
    """

    short_side: int = 256
    full_res_mask: bool = False
    mask_short_side: int | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        image = resize_short_side(image, self.short_side)
        if not self.full_res_mask:
            side = self.short_side if self.mask_short_side is None else self.mask_short_side
            mask = resize_short_side(mask, side, nearest=True)
        return image, mask


def normalize(image: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float tensor, scaled to [0, 1] then standardised per channel."""
    import torch

    if not image.flags.writeable:  # cached decodes are read-only; torch wants a writable buffer
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s
