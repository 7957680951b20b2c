"""Prediction of images of any size: overlapping tiles blended with weights that fade at tile borders.

Tiles are processed one row of tiles at a time and finished rows are handed on at once, so the
memory used is bounded by the image width times the tile height, whatever the image height.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import WeedsegError
from ..data.transforms import short_side_size

RunBatch = Callable[[np.ndarray], np.ndarray]  # (N, 3, h, w) float32 -> (N, C, h, w) logits
BandSink = Callable[[int, np.ndarray], None]  # (first row, (C, rows, W) logits) for finished rows

# A resized model input (12 bytes per pixel) and its logits (4 per class) are held whole, so their size is
# bounded too: a 2000 x 1 image at short side 256 would be 512000 x 256 pixels. (At native resolution the
# image's own limit applies, and finished tile rows go straight into the mask.)
MAX_MODEL_PIXELS = 8_000_000


def check_model_pixels(width: int, height: int, short_side: int, max_pixels: int = MAX_MODEL_PIXELS,
                       name: str = "the image") -> tuple[int, int]:
    """(width, height) of a width x height image at the model's `short_side` (0: native); WeedsegError when a
    resized input would exceed `max_pixels`. Computed from the header, before decoding."""
    mw, mh = short_side_size(width, height, short_side)
    if short_side > 0 and mw * mh > max_pixels:
        raise WeedsegError(f"{name} is {width} x {height}: at the model's short side of {short_side} pixels it would "
                           f"be {mw} x {mh} = {mw * mh / 1e6:.1f} megapixels, over the limit of {max_pixels / 1e6:g}; "
                           "crop it into less elongated pieces")
    return mw, mh


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad a (..., H, W) array at the bottom and right to multiples of `multiple`, as the U-Net does itself.

    Reflect padding, or edge padding when the pad is not smaller than the side (tiny images).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "edge"
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad_h), (0, pad_w)], mode=mode)


def run_padded(run: RunBatch, batch: np.ndarray, multiple: int) -> np.ndarray:
    """Run a batch of any height and width: pad to the model's size multiple, crop the logits back."""
    h, w = batch.shape[-2:]
    return run(np.ascontiguousarray(pad_to_multiple(batch, multiple)))[..., :h, :w]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_window(h: int, w: int, overlap: int) -> np.ndarray:
    """(h, w) weights: 1 inside, falling linearly towards the tile border over `overlap` pixels (never 0)."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        return np.clip(np.minimum(i + 1, n - i) / (overlap + 1), 1e-3, 1.0)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def predict_tiled(x: np.ndarray, run: RunBatch, sink: BandSink, tile: int, overlap: int,
                  batch_size: int, multiple: int) -> None:
    """Blend overlapping tile predictions of a normalised (3, H, W) image; finished rows go to `sink` in order."""
    if overlap < 0 or tile - overlap < multiple:
        raise ValueError(f"tile {tile} and overlap {overlap}: need 0 <= overlap <= tile - {multiple}")
    _, height, width = x.shape
    th, tw = min(tile, height), min(tile, width)
    window = blend_window(th, tw, overlap)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    carry: tuple[np.ndarray, np.ndarray] | None = None
    for r, y in enumerate(rows):
        acc, weight = None, np.zeros((th, width), np.float32)
        for b in range(0, len(cols), batch_size):
            xs = cols[b : b + batch_size]
            logits = run_padded(run, np.stack([x[:, y : y + th, c : c + tw] for c in xs]), multiple)
            if acc is None:
                acc = np.zeros((logits.shape[1], th, width), np.float32)
                if carry is not None:
                    acc[:, : carry[0].shape[1]] = carry[0]
                    weight[: carry[1].shape[0]] = carry[1]
            for c, lg in zip(xs, logits):
                acc[:, :, c : c + tw] += lg * window
                weight[:, c : c + tw] += window
        done = (rows[r + 1] if r + 1 < len(rows) else y + th) - y
        band = acc[:, :done]
        band /= weight[:done]  # in place: these rows are finished
        sink(y, band)
        carry = (acc[:, done:], weight[done:])


def predict_logits(x: np.ndarray, run: RunBatch, tile: int, overlap: int, batch_size: int,
                   multiple: int) -> np.ndarray:
    """(C, H, W) logits of a normalised (3, H, W) image: in one pass if it fits in a tile, else tiled."""
    if max(x.shape[1:]) <= tile:
        return run_padded(run, x[None], multiple)[0]
    out: np.ndarray | None = None

    def sink(y: int, band: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.empty((band.shape[0], *x.shape[1:]), np.float32)
        out[:, y : y + band.shape[1]] = band

    predict_tiled(x, run, sink, tile, overlap, batch_size, multiple)
    return out


def predict_mask(x: np.ndarray, run: RunBatch, height: int, width: int, tile: int, overlap: int,
                 batch_size: int, multiple: int) -> np.ndarray:
    """(height, width) class mask of a model input x (3, h, w): tiled past `tile` pixels, upsampled to the image.

    At native resolution, finished tile rows go straight into the mask, so memory stays bounded.
    """
    if x.shape[1:] == (height, width) and max(height, width) > tile:
        mask = np.empty((height, width), np.uint8)

        def sink(y: int, band: np.ndarray) -> None:
            mask[y : y + band.shape[1]] = band.argmax(0)

        predict_tiled(x, run, sink, tile, overlap, batch_size, multiple)
        return mask
    return upsample_argmax(predict_logits(x, run, tile, overlap, batch_size, multiple), height, width)


def upsample_argmax(logits: np.ndarray, height: int, width: int, strip_rows: int = 512) -> np.ndarray:
    """(H, W) uint8 class map of (C, h, w) logits bilinearly resized to height x width.

    Same sampling as torch's bilinear interpolation with align_corners=False; done in strips of
    rows (an affine warp per strip), so only the uint8 mask is ever held at full size.
    """
    c, h, w = logits.shape
    if (h, w) == (height, width):
        return logits.argmax(0).astype(np.uint8)
    import cv2

    sx, sy = w / width, h / height
    mask = np.empty((height, width), np.uint8)
    for y0 in range(0, height, strip_rows):
        rows = min(strip_rows, height - y0)
        # output pixel (x, y0 + y) samples input ((x + 0.5) * sx - 0.5, (y0 + y + 0.5) * sy - 0.5)
        m = np.float32([[sx, 0, 0.5 * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]])
        best, idx = None, mask[y0 : y0 + rows]
        for k in range(c):
            up = cv2.warpAffine(logits[k], m, (width, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
            if best is None:
                best = up
                idx[:] = 0
            else:
                np.copyto(idx, k, where=up > best)
                np.maximum(best, up, out=best)
    return mask
