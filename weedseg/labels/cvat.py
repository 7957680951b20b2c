"""CVAT's "Segmentation mask 1.1" export: labelmap.txt (label:R,G,B:parts:actions, one label a line) and
one colour PNG per photo under SegmentationClass/ (photos under JPEGImages/ when exported with them).
CVAT's "COCO 1.0" export is read by weedseg.labels.coco."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import WeedsegError
from ..data.io import read_label_map
from .dataset import Item, Shape

LABELMAP = "labelmap.txt"
MASKS = "SegmentationClass"


def read_labelmap(path: Path) -> dict[str, tuple[int, int, int]]:
    """label -> (R, G, B) from a CVAT labelmap.txt."""
    if not path.is_file():
        raise WeedsegError(f"{path} not found: give the folder of CVAT's \"Segmentation mask 1.1\" export, unzipped")
    out: dict[str, tuple[int, int, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            colour = tuple(int(v) for v in rest.split(":")[0].split(","))
        except ValueError:
            colour = ()
        if not name or len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            raise WeedsegError(f"{path}, line {number}: expected label:R,G,B:parts:actions, got {line!r}")
        if colour in out.values():
            other = next(n for n, c in out.items() if c == colour)
            raise WeedsegError(f"{path}: labels {other!r} and {name!r} have the same colour {colour}")
        out[name] = colour  # type: ignore[assignment]
    if not out:
        raise WeedsegError(f"{path} lists no labels")
    return out


def cvat_mask_items(export: Path, labelmap: dict[str, tuple[int, int, int]]) -> Iterator[Item]:
    """One Item per mask PNG, read one at a time; a colour outside the labelmap is a WeedsegError."""
    folder = export / MASKS
    masks = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    if not masks:
        raise WeedsegError(f"no masks under {folder}: give the folder of CVAT's \"Segmentation mask 1.1\" export")
    codes = {(r << 16) | (g << 8) | b: name for name, (r, g, b) in labelmap.items()}
    for path in masks:
        raw = read_label_map(path)
        if raw.ndim != 3:
            raise WeedsegError(f"{path} is not a colour mask; CVAT's segmentation masks are RGB")
        code = (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]
        present = np.unique(code)
        unknown = [int(c) for c in present if int(c) not in codes]
        if unknown:
            c = unknown[0]
            raise WeedsegError(f"{path} has {len(unknown)} colours that {LABELMAP} does not list, the first RGB "
                               f"({c >> 16}, {(c >> 8) & 255}, {c & 255}); export the masks and labelmap together")
        name = path.relative_to(folder).with_suffix("").as_posix()
        height, width = code.shape
        shapes = [Shape(codes[int(c)], lambda h, w, c=int(c), code=code: code == c, f"{path}")
                  for c in present if int(c) != _background_code(labelmap)]
        yield Item(name, (width, height), shapes)


def _background_code(labelmap: dict[str, tuple[int, int, int]]) -> int:
    """The code of CVAT's background label (black unless the labelmap says otherwise), -1 when there is none."""
    colour = labelmap.get("background")
    return -1 if colour is None else (colour[0] << 16) | (colour[1] << 8) | colour[2]
