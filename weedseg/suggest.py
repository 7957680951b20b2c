"""Which photos to label next: rank unlabelled photos by the model's uncertainty, spread out by diversity.

Each photo is segmented at the model's input scale (as `weedseg predict` does). Its uncertainty is the mean
over its pixels of 1 - (top softmax probability - second one), the margin; its embedding joins a small
thumbnail of the photo and its predicted class probabilities pooled on a coarse grid. Photos are then picked
greedily: each pick maximises uncertainty x distance to the nearest photo already picked or already labelled
(an uncertainty-weighted k-center), so that the list spends labelling effort where the model is unsure,
without ten near-copies of the same patch of field.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import WeedsegError
from .data.io import find_images, printable, read_rgb
from .data.transforms import resize_short_side
from .infer.image import csv_bytes
from .infer.atomic import atomic_write
from .infer.pipeline import PredictOptions
from .infer.session import Segmenter
from .infer.tiling import check_model_pixels, predict_logits

log = logging.getLogger(__name__)

GRID = 4  # class probabilities pooled on a GRID x GRID grid
THUMB = (8, 6)  # thumbnail width x height of the photo, in the model's normalised colours
SCORE_COLUMNS = ["rank", "photo", "uncertainty", "entropy", "distance"]


@dataclass
class PhotoScore:
    """What `suggest` knows of one photo: its margin uncertainty, its mean entropy and its embedding."""

    path: Path
    uncertainty: float
    entropy: float
    embedding: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (0) of (C, H, W) logits."""
    z = np.exp(logits - logits.max(0, keepdims=True))
    return z / z.sum(0, keepdims=True)


def describe(probs: np.ndarray, x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(margin uncertainty, mean entropy, embedding) of one photo from its class probabilities (C, h, w)
    and its normalised model input (3, h, w)."""
    top2 = np.sort(probs, axis=0)[-2:] if probs.shape[0] > 1 else np.stack([np.zeros_like(probs[0]), probs[0]])
    uncertainty = float(np.mean(1.0 - (top2[1] - top2[0])))
    entropy = float(np.mean(-(probs * np.log(np.clip(probs, 1e-12, None))).sum(0)))
    pooled = cv2.resize(probs.transpose(1, 2, 0), (GRID, GRID), interpolation=cv2.INTER_AREA).reshape(-1)
    thumb = cv2.resize(x.transpose(1, 2, 0), THUMB, interpolation=cv2.INTER_AREA).reshape(-1)
    parts = [p / max(float(np.linalg.norm(p)), 1e-6) for p in (pooled, thumb)]  # each half weighs the same
    return uncertainty, entropy, np.concatenate(parts).astype(np.float32)


def score_photo(seg: Segmenter, path: Path, options: PredictOptions = PredictOptions()) -> PhotoScore:
    """Segment one photo at the model's input scale and describe it (see `describe`)."""
    rgb = read_rgb(path)
    side = seg.info.input_short_side if options.short_side is None else options.short_side
    check_model_pixels(rgb.shape[1], rgb.shape[0], side)
    x = seg.model_input(resize_short_side(rgb, side))
    logits = predict_logits(x, seg.run, options.tile, options.overlap, options.batch_size, seg.info.size_multiple)
    return PhotoScore(path, *describe(softmax(logits.astype(np.float32)), x))


def score_photos(seg: Segmenter, paths: list[Path], what: str) -> list[PhotoScore]:
    """Scores of the photos that can be read; an unreadable one is a named warning and left out."""
    scores = []
    for path in tqdm(paths, desc=what, unit="photo"):
        try:
            scores.append(score_photo(seg, path))
        except (WeedsegError, OSError, ValueError) as exc:
            log.warning("left out %s: %s", path, exc)
    return scores


def pick(scores: list[PhotoScore], n: int, labelled: list[np.ndarray] = ()) -> list[tuple[int, float]]:
    """Greedy uncertainty-weighted k-center: (index into `scores`, distance to the nearest chosen or labelled
    photo when picked) for up to `n` photos, in the order picked."""
    if not scores:
        return []
    emb = np.stack([s.embedding for s in scores])
    unc = np.array([s.uncertainty for s in scores])
    unc = unc / max(float(unc.max()), 1e-12)
    nearest = np.full(len(scores), np.inf)
    for centre in labelled:
        nearest = np.minimum(nearest, np.linalg.norm(emb - centre, axis=1))
    chosen: list[tuple[int, float]] = []
    for _ in range(min(n, len(scores))):
        spread = np.ones(len(scores)) if np.isinf(nearest).all() else nearest / max(float(nearest[np.isfinite(nearest)].max()), 1e-12)
        gain = unc * np.minimum(spread, 1.0)
        gain[[i for i, _ in chosen]] = -1.0
        best = int(np.argmax(gain))
        chosen.append((best, float(nearest[best])))
        nearest = np.minimum(nearest, np.linalg.norm(emb - emb[best], axis=1))
    return chosen


def suggest(seg: Segmenter, photos: str | Path, n: int, out: str | Path,
            labelled: str | Path | None = None) -> list[Path]:
    """`weedseg suggest`: write the `n` photos under `photos` to label next to `out` (one path per line)
    and every photo's scores to `out` with the suffix .csv; photos under `labelled` count as already covered.
    Returns the chosen paths, best first."""
    if n < 1:
        raise WeedsegError(f"-n must be at least 1, got {n}")
    out = Path(out)
    table = out.with_suffix(".csv")
    if out.suffix.lower() == ".csv":
        raise WeedsegError(f"--out {out}: give the list a .txt name; the scores go beside it in a .csv")
    paths = find_images(photos)
    done = {p.resolve() for p in find_images(labelled)} if labelled else set()
    candidates = [p for p in paths if p.resolve() not in done]
    if not candidates:
        raise WeedsegError(f"every photo under {photos} is already under --labelled {labelled}: nothing to suggest")
    scores = score_photos(seg, candidates, "scoring photos")
    if not scores:
        raise WeedsegError(f"none of the {len(candidates)} photos under {photos} could be read (see the warnings)")
    centres = [s.embedding for s in score_photos(seg, sorted(done), "labelled photos")] if done else []
    chosen = pick(scores, n, centres)
    rank = {i: r for r, (i, _) in enumerate(chosen, 1)}
    distance = dict(chosen)
    order = [i for i, _ in chosen] + sorted(set(range(len(scores))) - set(rank), key=lambda i: -scores[i].uncertainty)
    atomic_write(out, b"".join(os.fsencode(scores[i].path) + b"\n" for i, _ in chosen))  # exact paths
    rows = []
    for i in order:
        d = distance.get(i)
        rows.append({"rank": rank.get(i, ""), "photo": printable(str(scores[i].path)),
                     "uncertainty": f"{scores[i].uncertainty:.5f}", "entropy": f"{scores[i].entropy:.5f}",
                     "distance": "" if d is None or not np.isfinite(d) else f"{d:.4f}"})
    atomic_write(table, csv_bytes(rows, SCORE_COLUMNS))
    return [scores[i].path for i, _ in chosen]
