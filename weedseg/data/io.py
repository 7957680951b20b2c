"""Reading images and label maps from disk, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from .. import WeedsegError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def find_images(path: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """`path` itself if it is a file, else every image below the folder (recursively, sorted).

    Hidden files and anything under `exclude` are skipped; a missing path or a folder without
    images is a WeedsegError.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WeedsegError(f"input not found: {path}")
    skip = Path(exclude).resolve() if exclude else None
    found = [p for p in sorted(path.rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
             and not (skip and p.resolve().is_relative_to(skip))]
    if not found:
        raise WeedsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
    return found


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB: EXIF orientation applied; grey, RGBA and 16-bit converted."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray((arr / peak * 255.0).round().astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # SyntaxError: PIL's broken-file error
        raise WeedsegError(f"cannot read image {path}: {exc}") from exc


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label file unchanged: HxW (grey/16-bit) or HxWx3 (colour, returned as RGB)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise WeedsegError(f"cannot read label file {path} (missing, corrupt or not an image)")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)
    return arr


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    """Raise a WeedsegError naming both files when image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise WeedsegError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; every mask must have its image's size"
        )
