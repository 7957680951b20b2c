"""One image in memory: decode uploaded bytes, segment them as `weedseg predict` does, summarise the result.

Used by the upload page (app/weedseg_app.py); nothing here touches the file system, and file
names given by users only ever become display and download names (`safe_name`).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import WeedsegError, familiarity
from ..data.io import MAX_IMAGE_PIXELS, open_checked, read_rgb
from ..data.transforms import resize_short_side
from . import pictures, tables
from .geo import Ground, GroundOptions, describe_ground
from .pipeline import PredictOptions
from .session import Segmenter
from .spray import SprayPlan, SpraySettings, spray_map_bytes, summarize_mask
from .tiling import check_model_pixels, predict_mask

SESSION_FILES = 20  # photos one page session segments and holds at once
SESSION_PIXELS = 150_000_000  # their pixels in all: about 600 MB of images and masks

def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an encoded image (JPG, PNG, TIFF ...); WeedsegError if unreadable, too large or
    without colour (the size is checked from the header, before decoding)."""
    if not data:
        raise WeedsegError("the file is empty")
    return read_rgb(io.BytesIO(data), max_pixels, name="")


def upload_pixels(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> int:
    """Pixels of an encoded image, from its header alone (checked as `decode_image` checks it)."""
    if not data:
        raise WeedsegError("the file is empty")
    with open_checked(io.BytesIO(data), max_pixels, name="") as im:
        return im.size[0] * im.size[1]


@dataclass
class SessionBudget:
    """What one page session holds at once: at most SESSION_FILES photos of SESSION_PIXELS pixels in all
    (each held as its RGB pixels and its mask, 4 bytes a pixel)."""

    files: int = 0
    pixels: int = 0

    def admit(self, pixels: int) -> None:
        """Count a photo in, or raise WeedsegError saying what to do when the session is full."""
        if self.files >= SESSION_FILES:
            raise WeedsegError(f"the page segments at most {SESSION_FILES} photos at once; remove some from the "
                               "uploader, or use `weedseg predict` for whole folders")
        if self.pixels + pixels > SESSION_PIXELS:
            raise WeedsegError(f"the page holds at most {SESSION_PIXELS / 1e6:g} megapixels of photos at once "
                               f"({self.pixels / 1e6:.1f} held, this one {pixels / 1e6:.1f}); remove some photos "
                               "from the uploader, or use `weedseg predict` for whole folders")
        self.files += 1
        self.pixels += pixels


def segment_rgb(seg: Segmenter, rgb: np.ndarray, short_side: int | None = PredictOptions.short_side,
                tile: int = PredictOptions.tile, overlap: int = PredictOptions.overlap,
                batch_size: int = PredictOptions.batch_size, features: list[np.ndarray] | None = None) -> np.ndarray:
    """Class-index mask (H, W) of an HxWx3 uint8 RGB image, computed as `weedseg predict` does, with its
    defaults (short_side None: the model's resolution; 0: native); `features` gets the pooled encoder features
    of every model call (see Segmenter.run)."""
    side = seg.info.input_short_side if short_side is None else short_side
    check_model_pixels(rgb.shape[1], rgb.shape[0], side)
    x = seg.model_input(resize_short_side(rgb, side))
    return predict_mask(x, lambda b: seg.run(b, features), *rgb.shape[:2], tile, overlap, batch_size,
                        seg.info.size_multiple)


def colour_mask(mask: np.ndarray, colors: list[list[int]]) -> np.ndarray:
    """The class mask painted in the class colours (HxWx3 RGB)."""
    return np.asarray(colors, np.uint8)[mask]


def weed_crop_ratio(row: dict) -> float | None:
    """Weed pixels per crop pixel from a summary row; None without crop pixels or crop/weed classes."""
    crop, weed = row.get("crop_pct"), row.get("weed_pct")
    if crop is None or weed is None or crop == 0:
        return None
    return round(weed / crop, 3)


def cover_grid(cells: list[tables.GridCell]) -> np.ndarray:
    """Weed cover in percent as a (rows, cols) array of a `weed_grid`."""
    grid = np.zeros((cells[-1].row + 1, cells[-1].col + 1), np.float32)
    for c in cells:
        grid[c.row, c.col] = c.weed_pct
    return grid


def grid_heatmap(grid: np.ndarray, color: list[int], width: int = 480) -> np.ndarray:
    """A picture of a cover grid about `width` pixels wide: white at 0 %, `color` at the largest cover,
    with cell borders and each cell's percent when the cells are big enough to hold it."""
    rows, cols = grid.shape
    px = max(4, width // cols)
    share = grid / grid.max() if grid.max() > 0 else grid
    tint = 255 - share[..., None] * (255 - np.asarray(color, np.float32))
    pic = np.ascontiguousarray(np.repeat(np.repeat(tint.astype(np.uint8), px, 0), px, 1))
    for r in range(rows):
        for c in range(cols):
            y, x = r * px, c * px
            cv2.rectangle(pic, (x, y), (x + px - 1, y + px - 1), (160, 160, 160), 1)
            if px >= 44:
                cv2.putText(pic, f"{grid[r, c]:.1f}", (x + 4, y + px // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                            px / 140, (0, 0, 0), 1, cv2.LINE_AA)
    return pic


def safe_name(name: str, taken: set[str]) -> str:
    """A display and download name for an uploaded file: no folders, only [A-Za-z0-9._-], its stem unique
    within `taken` (to which it is added). Never used as a path."""
    base = re.split(r"[\\/]", name)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = ext, ""
    ext = re.sub(r"[^A-Za-z0-9]+", "", ext)[:8]
    kept = r"[^A-Za-z0-9._-]+" if ext else r"[^A-Za-z0-9_-]+"  # a dot only ever separates the extension
    stem = re.sub(kept, "_", stem).strip("._")[:80] or "image"
    unique, n = stem, 2
    while unique in taken:
        unique, n = f"{stem}-{n}", n + 1
    taken.add(unique)
    return f"{unique}.{ext}" if ext else unique


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    """Rows as CSV with the given columns (missing fields empty, extra fields ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive holding `files` (archive name -> content)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def summary_columns(classes: list[str]) -> list[str]:
    """Columns of the upload page's summary CSV: those of `weedseg predict` plus the weed-to-crop ratio."""
    columns = tables.summary_columns(classes, familiarity.COLUMNS)
    columns.insert(columns.index("mask"), "weed_crop_ratio")
    return columns


@dataclass
class SegmentedImage:
    """An uploaded image, its class mask and the summary row `weedseg predict` would write for it."""

    name: str  # from safe_name
    rgb: np.ndarray
    mask: np.ndarray
    grid_cell: int = 0  # the cell size `row` and `cells` were computed for
    row: dict = field(default_factory=dict)
    cells: list[tables.GridCell] = field(default_factory=list)
    ground: Ground = field(default_factory=lambda: Ground(None, "none"))  # from the file (GeoTIFF tags)
    plan: SprayPlan | None = None
    settings: tuple = ()  # what `row`, `cells` and `plan` were computed for
    familiarity: dict = field(default_factory=dict)  # summary fields: familiarity, unfamiliar (none if unknown)

    @property
    def stem(self) -> str:
        return self.name.rpartition(".")[0] or self.name

    def summarize(self, classes: list[str], grid_cell: int, gsd_cm: float | None = None,
                  spray: SpraySettings = SpraySettings()) -> None:
        """Fill `row`, `cells` and `plan` for a weed grid of `grid_cell` pixels (or `spray.cell_m` metres with a
        GSD: `gsd_cm` wins over the file's) and the spray settings; kept while the settings stay."""
        ground = self.ground.given(gsd_cm)
        if (grid_cell, ground, spray) == self.settings:
            return
        row, self.cells, self.plan = summarize_mask(self.mask, classes, ground, spray, grid_cell)
        self.grid_cell = self.plan.cell_px if self.plan else grid_cell
        spray_map = {"spray_map": f"{self.stem}.spray.geojson"} if self.plan else {}
        self.row = {"image": self.name, "status": "predicted", **row, **spray_map, **self.familiarity,
                    "weed_crop_ratio": weed_crop_ratio(row), "mask": f"{self.stem}.mask.png"}
        self.settings = (grid_cell, ground, spray)

    def files(self, colors: list[list[int]], alpha: float, *, background: int | None) -> dict[str, bytes]:
        """What `weedseg predict` writes for the image: class mask PNG, overlay JPG (every class but `background`
        tinted, see pictures.overlay), weed grid CSV and spray map."""
        picture = pictures.overlay(self.rgb, self.mask, colors, alpha, background=background)
        files = {f"{self.stem}.mask.png": pictures.encode_mask(self.mask),
                 f"{self.stem}.overlay.jpg": pictures.encode_image(picture, ".jpg"),
                 f"{self.stem}.grid.csv": tables.grid_csv(self.cells, self.plan.spray if self.plan else None)}
        if self.plan:
            files[f"{self.stem}.spray.geojson"] = spray_map_bytes(self.plan, self.name)
        return files


def segment_upload(seg: Segmenter, data: bytes, name: str, short_side: int | None, tile: int, overlap: int,
                   batch_size: int) -> SegmentedImage:
    """Decode and segment one uploaded image named `name` (from safe_name); WeedsegError with a message
    for the user if it cannot be."""
    rgb = decode_image(data)
    features: list[np.ndarray] = []
    mask = segment_rgb(seg, rgb, short_side, tile, overlap, batch_size, features)
    return SegmentedImage(name, rgb, mask, ground=describe_ground(data, GroundOptions()),
                          familiarity=familiarity.verdict_rows(seg.familiarity, features, 1, pool=True)[0])
