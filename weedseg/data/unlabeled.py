"""Unlabeled images for self-supervised pretraining: any folder tree of JPG/PNG/TIFF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import WeedsegError
from .dataset import CACHE_LIMIT_BYTES
from .io import read_rgb


class UnlabeledImages:
    """A list of image files, decoded on demand and cached in memory when they fit.

    `load(i)` returns the image as HxWx3 uint8 RGB. Build with `open_images` to drop unreadable files.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """The decoded image `index`."""
        cached = self._cache.get(index)
        return cached if cached is not None else read_rgb(self.paths[index])


def open_images(paths: list[Path], progress: bool = True) -> tuple[UnlabeledImages, list[str]]:
    """Decode every file once: readable ones form the dataset (cached while under CACHE_LIMIT_BYTES).

    Returns the dataset and one 'path: reason' line per unreadable file, which is skipped.
    """
    readable, images, skipped, cached_bytes = [], [], [], 0
    for path in tqdm(paths, desc="reading images", unit="img", leave=False, disable=not progress):
        try:
            image = read_rgb(path)
        except WeedsegError as exc:
            skipped.append(str(exc))
            continue
        readable.append(path)
        cached_bytes += image.nbytes
        images.append(image if cached_bytes <= CACHE_LIMIT_BYTES else None)
    if not readable:
        raise WeedsegError(f"none of the {len(paths)} image files could be read:\n" + "\n".join(skipped[:10]))
    dataset = UnlabeledImages(readable)
    dataset._cache = {i: im for i, im in enumerate(images) if im is not None}
    return dataset, skipped
