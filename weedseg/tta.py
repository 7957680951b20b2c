"""Test-time augmentation: a model's logits averaged over mirrored and quarter-turned copies of its input.

One place for both back ends: `weedseg evaluate` runs torch tensors, `weedseg predict` and the page run
numpy arrays through an exported model. Inputs are (N, C, H, W); each copy's logits are turned back
before the mean.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np

Array = TypeVar("Array")  # a torch.Tensor or a numpy array

TTA_MODES = ("flip", "rotate")
"""flip: the input and its mirror image (2 passes); rotate: the 4 quarter turns of each (8 passes, every
symmetry of a square: for photos taken looking straight down)."""


def views(mode: str | None) -> list[tuple[bool, int]]:
    """(mirrored, quarter turns) of each copy `mode` averages over; None is the input alone."""
    if mode is None:
        return [(False, 0)]
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; expected one of {', '.join(TTA_MODES)}")
    turns = range(4) if mode == "rotate" else range(1)
    return [(mirrored, k) for mirrored in (False, True) for k in turns]


def tta_logits(run: Callable[[Array], Array], x: Array, mode: str | None) -> Array:
    """The mean of `run`'s logits over the copies of batch `x` that `mode` names, each mapped back to `x`."""
    copies = views(mode)
    total = None
    for mirrored, k in copies:
        logits = _unview(run(_view(x, mirrored, k)), mirrored, k)
        total = logits if total is None else total + logits
    return total if len(copies) == 1 else total / len(copies)


def _view(x: Array, mirrored: bool, k: int) -> Array:
    """Mirror `x` left-right if asked, then turn it `k` quarter turns counter-clockwise."""
    return _turn(_mirror(x) if mirrored else x, k)


def _unview(y: Array, mirrored: bool, k: int) -> Array:
    """Undo `_view` on logits: turn back, then mirror back."""
    y = _turn(y, -k)
    return _mirror(y) if mirrored else y


def _mirror(x: Array) -> Array:
    return x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)


def _turn(x: Array, k: int) -> Array:
    if k % 4 == 0:
        return x
    return np.rot90(x, k, axes=(-2, -1)) if isinstance(x, np.ndarray) else x.rot90(k, (-2, -1))
