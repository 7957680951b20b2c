"""Torch dataset over labelled samples, with an in-memory cache and seeded, resumable sampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from .io import check_same_size, read_rgb
from .layouts import Layout, Sample
from .transforms import CopyPaste, normalize

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

CACHE_LIMIT_BYTES = 4 << 30  # decoded images kept in memory when they fit in this


class SegmentationDataset(Dataset):
    """Yields (normalised image tensor, class-index mask tensor) for a list of samples.

    Indices may be plain ints or (index, seed) pairs from `SeededSampler`; the seed drives the
    augmentation, so a run is repeatable whatever the number of loader workers. `paste` (training
    only) pastes classes from another sample's crop, drawn after the sample's own augmentation.
    """

    def __init__(self, layout: Layout, samples: list[Sample], transform: Transform,
                 mean: list[float], std: list[float], paste: CopyPaste | None = None) -> None:
        self.layout, self.samples, self.transform, self.paste = layout, samples, transform, paste
        self.mean, self.std = mean, std
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded (image, mask) of sample `index`, checked to match in size."""
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_rgb(sample.image)
        mask = self.layout.decode_sample_mask(sample)
        check_same_size(image, mask, sample.image, sample.mask)
        return image, mask

    def preload(self, desc: str = "loading images") -> None:
        """Decode every sample once into memory if the split fits in CACHE_LIMIT_BYTES."""
        first = self.load(0)[0]
        if first.nbytes * 4 / 3 * len(self) > CACHE_LIMIT_BYTES:
            return
        for i in tqdm(range(len(self)), desc=desc, unit="img", leave=False):
            self._cache[i] = self.load(i)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image, mask = self.load(index)
        rng = np.random.default_rng(seed)
        image, mask = self.transform(image, mask, rng)
        if self.paste is not None and len(self) > 1 and rng.random() < self.paste.p:
            donor = int(rng.integers(len(self) - 1))
            image, mask = self.paste(image, mask, *self.transform(*self.load(donor + (donor >= index)), rng))
        return normalize(image, self.mean, self.std), torch.from_numpy(mask.astype(np.int64))


class SeededSampler(Sampler):
    """Shuffles every epoch and attaches an augmentation seed to each index.

    Order and seeds depend only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted one would, and runs with the same seed share data order and augmentation.
    With several processes (`rank` of `num_replicas`) each takes every num_replicas-th pair of
    the same global order, padded by repeating its start so every process gets as many; an
    image's augmentation seed is therefore the same whatever the number of processes.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, num_replicas: int = 1) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.rank, self.num_replicas = rank, num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=g).tolist()
        pairs = list(zip(order, seeds))
        pairs += pairs[: len(self) * self.num_replicas - self.size]
        return iter(pairs[self.rank :: self.num_replicas])


def channel_stats(dataset: Dataset, max_images: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) over up to `max_images` evenly spaced images.

    `dataset.load(i)` may return an (image, mask) pair or just an image (unlabeled images).
    """
    step = max(1, len(dataset) // max_images)
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in range(0, len(dataset), step):
        item = dataset.load(i)
        px = (item[0] if isinstance(item, tuple) else item).reshape(-1, 3).astype(np.float64) / 255.0
        total += px.sum(0)
        total_sq += (px**2).sum(0)
        count += len(px)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.round(4).tolist(), std.round(4).tolist()
