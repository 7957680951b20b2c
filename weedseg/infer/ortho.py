"""Orthomosaics of any size, streamed: read window by window with rasterio, segmented in blended tiles, written
as a Cloud-Optimized GeoTIFF class mask with the input's CRS and transform.

The raster is seen by the model at one ground scale (`model_scale`). Tiles lie on one grid over the whole
raster at that scale and are blended exactly as `weedseg.infer.tiling.predict_tiled` blends a photo's; the
raster is read in windows of a row of tiles by a few tiles, and the blend sums a window shares with its
neighbours are carried to them (to the right in memory, downwards on disk), so a mask made in windows is the
mask of the whole image, while memory holds one window whatever the raster's size. Finished rows go into a
tiled GeoTIFF beside the output; a small journal records each finished row of windows with the carried sums,
so a run killed at any point resumes at the row it stopped in and makes the same mask. Pixels that are nodata
or masked (alpha or mask band) are class NODATA (255) and never predicted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import WeedsegError
from ..data.io import MAX_IMAGE_PIXELS
from .geo import HAVE_GEO, GeoRef, Ground, GroundOptions, georef_of, georeferenced_ground, require_geo
from .session import Segmenter
from .tiling import blend_window, run_padded, tile_starts

try:  # the [geo] extra
    import rasterio
    import rasterio.shutil
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window
except ImportError:
    pass

log = logging.getLogger(__name__)

ORTHO_SUFFIXES = (".tif", ".tiff")
NODATA = 255  # mask value of pixels outside the field (nodata, alpha 0, masked, unreadable)
PHOTO_SHORT_SIDE = 720  # short side of the peanut photos the shipped models learned from (960 x 720)
WINDOW_MODEL_PX = 4096  # a window is a row of tiles by about this many model pixels
BLOCK = 512  # tile size of the mask GeoTIFF
GDAL_CACHE_BYTES = 128 << 20
STRETCH_PERCENTILES = (0.5, 99.5)
STRETCH_SAMPLES = 16  # windows read to find a 16-bit raster's stretch
JOURNAL = "journal.json"


@dataclass(frozen=True)
class OrthoOptions:
    """How orthomosaics are read; see `weedseg predict --help`."""

    bands: tuple[int, int, int] | None = None  # --bands R,G,B (1-based); None: from the colour interpretation
    input_gsd_cm: float | None = None  # --input-gsd: the GSD the model sees the raster at
    stream: bool = False  # --stream: every GeoTIFF window by window, not only those over the photo limit

    def __post_init__(self) -> None:
        if self.input_gsd_cm is not None and not (self.input_gsd_cm > 0 and math.isfinite(self.input_gsd_cm)):
            raise WeedsegError(f"--input-gsd must be a positive number of cm per pixel, got {self.input_gsd_cm}")


def raster_pixels(path: Path) -> int:
    """Pixels of a TIFF from its header (rasterio, else Pillow without its size limit), 0 when unreadable."""
    try:
        if HAVE_GEO:
            with quiet(), rasterio.open(path) as ds:
                return ds.width * ds.height
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return im.size[0] * im.size[1]
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # noqa: BLE001 - the photo path reports unreadable files
        return 0


def is_ortho(path: Path, options: OrthoOptions) -> bool:
    """Whether `path` goes through the streamed path: a TIFF over the photo pipeline's pixel limit, or any
    with `options.stream`."""
    return path.suffix.lower() in ORTHO_SUFFIXES and (options.stream or raster_pixels(path) > MAX_IMAGE_PIXELS)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence rasterio's warning about rasters without a georeference (said once, in our words)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def gdal_env() -> rasterio.Env:
    """GDAL settings for streamed work: a block cache of GDAL_CACHE_BYTES (by default GDAL takes 5 % of the RAM)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def rgb_bands(ds: rasterio.io.DatasetReader, bands: tuple[int, int, int] | None, name: str) -> tuple[int, int, int]:
    """The 1-based red, green and blue bands: `bands`, else from the colour interpretation (or the first three of a
    3-band raster, or of 4 bands with the fourth alpha); WeedsegError when it cannot tell."""
    if bands:
        if not all(1 <= b <= ds.count for b in bands):
            raise WeedsegError(f"{name} has {ds.count} bands: --bands {','.join(map(str, bands))} is out of range")
        return bands
    ci = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in ci for c in wanted):
        return tuple(ci.index(c) + 1 for c in wanted)  # type: ignore[return-value]
    if ds.count == 3 or (ds.count == 4 and ci[3] == ColorInterp.alpha):
        return (1, 2, 3)
    raise WeedsegError(f"{name} has {ds.count} bands ({', '.join(c.name for c in ci)}): cannot tell which are red, "
                       "green and blue; pass --bands R,G,B (1-based band numbers)")


@dataclass
class Stretch:
    """How raster values become 0..255: per band, `low` maps to 0 and `high` to 255 (uint8 rasters: identity)."""

    low: list[float]
    high: list[float]

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(3, h, w) raster values as (h, w, 3) uint8."""
        if values.dtype == np.uint8 and self.low == [0, 0, 0] and self.high == [255, 255, 255]:
            return np.ascontiguousarray(values.transpose(1, 2, 0))
        low = np.asarray(self.low, np.float32)[:, None, None]
        scale = 255.0 / np.maximum(np.asarray(self.high, np.float32)[:, None, None] - low, 1e-12)
        out = np.clip((values.astype(np.float32) - low) * scale + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out.transpose(1, 2, 0))


def find_stretch(ds: rasterio.io.DatasetReader, bands: tuple[int, int, int]) -> Stretch:
    """uint8: none; other types: the STRETCH_PERCENTILES of each band over the valid pixels of STRETCH_SAMPLES
    windows spread over the raster."""
    if ds.dtypes[bands[0] - 1] == "uint8":
        return Stretch([0, 0, 0], [255, 255, 255])
    side = min(BLOCK, ds.width, ds.height)
    n = math.isqrt(STRETCH_SAMPLES)
    samples = []
    for fy in np.linspace(0, 1, n):
        for fx in np.linspace(0, 1, n):
            win = Window(round(fx * (ds.width - side)), round(fy * (ds.height - side)), side, side)
            try:
                values = ds.read(bands, window=win)
                valid = ds.dataset_mask(window=win) > 0
            except RasterioError:
                continue
            samples.append(values[:, valid])
    values = np.concatenate(samples, axis=1) if samples else np.zeros((3, 0))
    if values.shape[1] == 0:
        return Stretch([0, 0, 0], [255, 255, 255])
    low, high = np.percentile(values, STRETCH_PERCENTILES, axis=1)
    return Stretch([float(v) for v in low], [float(v) for v in high])


def model_scale(ground: Ground, seg: Segmenter, options: OrthoOptions) -> tuple[float, str]:
    """(model pixels per raster pixel, how it was chosen): the raster's GSD over the model's training GSD, or over
    --input-gsd, else the model's photo-to-input ratio."""
    info = seg.info
    if ground.gsd_cm and options.input_gsd_cm:
        return ground.gsd_cm / options.input_gsd_cm, f"--input-gsd {options.input_gsd_cm:g} cm"
    if ground.gsd_cm and info.train_gsd_cm:
        return ground.gsd_cm / info.train_gsd_cm, f"the model's training GSD, {info.train_gsd_cm:g} cm"
    if info.input_short_side == 0:
        return 1.0, "native resolution (the model's input short side is 0)"
    ratio = min(1.0, info.input_short_side / PHOTO_SHORT_SIDE)
    return ratio, (f"the model's photo-to-input ratio {ratio:.3f} ({info.input_short_side} / {PHOTO_SHORT_SIDE} px); "
                   "give --input-gsd to choose the ground scale")


@dataclass
class Layout:
    """The tile grid at the model's scale and the windows it is read in."""

    width: int  # raster pixels
    height: int
    mw: int  # model pixels
    mh: int
    tile: int
    overlap: int
    rows: list[int] = field(init=False)
    cols: list[int] = field(init=False)
    chunks: list[tuple[int, int]] = field(init=False)  # first and last tile column of each window

    def __post_init__(self) -> None:
        self.rows = tile_starts(self.mh, self.tile, self.overlap)
        self.cols = tile_starts(self.mw, self.tile, self.overlap)
        self.th, self.tw = min(self.tile, self.mh), min(self.tile, self.mw)
        per = max(1, round(WINDOW_MODEL_PX / max(1, self.tile - self.overlap)))
        self.chunks = [(j, min(j + per, len(self.cols)) - 1) for j in range(0, len(self.cols), per)]

    @property
    def exact(self) -> bool:
        """The model sees the raster at its own resolution."""
        return (self.mw, self.mh) == (self.width, self.height)

    @property
    def sx(self) -> float:
        return self.mw / self.width

    @property
    def sy(self) -> float:
        return self.mh / self.height

    def row_done(self, r: int) -> int:
        """The model row up to which the blend is finished after tile row r."""
        return self.rows[r + 1] if r + 1 < len(self.rows) else self.mh

    def col_done(self, k: int) -> int:
        """The model column up to which window k finishes the blend."""
        return self.cols[self.chunks[k + 1][0]] if k + 1 < len(self.chunks) else self.mw

    def raster_row(self, model_row: int) -> int:
        """First raster row whose centre lies at or after `model_row` (raster rows are owned by model rows)."""
        return min(self.height, max(0, math.ceil(model_row / self.sy - 0.5)))

    def raster_col(self, model_col: int) -> int:
        return min(self.width, max(0, math.ceil(model_col / self.sx - 0.5)))


@dataclass
class Journal:
    """What a streamed run has finished: its settings, the rows of windows done and the windows unreadable."""

    settings: dict
    stretch: dict = field(default_factory=dict)
    rows_done: int = 0
    written_rows: int = 0  # raster rows in the partial mask; the rest of the finished rows wait in pending.npy
    bad_windows: list[str] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        tmp = folder / f".{JOURNAL}.part"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / JOURNAL)

    @classmethod
    def load(cls, folder: Path, settings: dict) -> Journal | None:
        """The journal in `folder` if it was made with the same settings."""
        try:
            journal = cls(**json.loads((folder / JOURNAL).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return journal if journal.settings == settings else None


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary name, so a kill never leaves half an array under `path`."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def argmax_into(logits: np.ndarray, out: np.ndarray, m: np.ndarray | None) -> None:
    """Class of each pixel of `out` (h, w) from (C, hl, wl) logits: directly at equal size, else bilinearly
    resampled with the inverse map `m` (raster pixel -> logits pixel)."""
    if m is None:
        np.copyto(out, logits.argmax(0).astype(np.uint8))
        return
    best = None
    for k in range(logits.shape[0]):
        up = cv2.warpAffine(logits[k], m, (out.shape[1], out.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
        if best is None:
            best, out[:] = up, 0
        else:
            np.copyto(out, k, where=up > best)
            np.maximum(best, up, out=best)


class OrthoSegmenter:
    """Segments one raster window by window into a partial tiled GeoTIFF, resumable from its journal."""

    def __init__(self, ds: rasterio.io.DatasetReader, name: str, seg: Segmenter, layout: Layout,
                 bands: tuple[int, int, int], stretch: Stretch, batch_size: int) -> None:
        self.ds, self.name, self.seg, self.lay = ds, name, seg, layout
        self.bands, self.stretch, self.batch_size = bands, stretch, batch_size
        self.window = blend_window(layout.th, layout.tw, layout.overlap)
        self.all_valid = all(f == rasterio.enums.MaskFlags.all_valid for f in ds.mask_flag_enums[bands[0] - 1])
        self.classes = len(seg.info.classes)
        self.bad: list[str] = []

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) uint8 RGB and (h, w) validity of model rows y0..y1 and columns x0..x1, read at the model's
        scale (averaged when smaller than the raster); an unreadable window is reported and all invalid."""
        lay = self.lay
        win = Window(x0 / lay.sx, y0 / lay.sy, (x1 - x0) / lay.sx, (y1 - y0) / lay.sy)
        shape = (y1 - y0, x1 - x0)
        if lay.exact:
            win = Window(x0, y0, x1 - x0, y1 - y0)
        resampling = Resampling.average if lay.sx < 1 else Resampling.bilinear
        try:
            values = self.ds.read(self.bands, window=win, out_shape=(3, *shape), resampling=resampling)
            valid = (np.ones(shape, bool) if self.all_valid else
                     self.ds.dataset_mask(window=win, out_shape=shape, resampling=Resampling.nearest) > 0)
        except RasterioError as exc:
            self.bad.append(f"raster rows {int(win.row_off)}-{int(win.row_off + win.height)}, columns "
                            f"{int(win.col_off)}-{int(win.col_off + win.width)}: {exc}")
            log.warning("%s: a window cannot be read (%s); its pixels are written as nodata (%d)", self.name,
                        self.bad[-1], NODATA)
            return np.zeros((*shape, 3), np.uint8), np.zeros(shape, bool)
        return self.stretch.apply(values), valid

    def raster_valid(self, r0: int, r1: int, c0: int, c1: int, model_valid: np.ndarray, exact: bool) -> np.ndarray:
        """Validity of raster rows r0..r1, columns c0..c1: the model's at equal scale, else read at the raster's
        resolution (none where no model pixel is valid: an unreadable or empty window)."""
        if exact:
            return model_valid
        shape = (r1 - r0, c1 - c0)
        if not model_valid.any():
            return np.zeros(shape, bool)
        if self.all_valid:
            return np.ones(shape, bool)
        try:
            return self.ds.dataset_mask(window=Window(c0, r0, c1 - c0, r1 - r0)) > 0
        except RasterioError:
            return np.zeros(shape, bool)

    def band(self, r: int, work: Path, out: np.ndarray) -> None:
        """Predict tile row r window by window into `out` (its finished raster rows, all columns). The blend sums
        carried down from row r - 1 are read from work/carry-(r-1)-K.npy and those for row r + 1 written to
        work/carry-r-K.npy, one window at a time: after the last row but one they span most of a tile's height."""
        lay, c = self.lay, self.classes
        y, th, tw = lay.rows[r], lay.th, lay.tw
        done = lay.row_done(r) - y
        r0, r1 = lay.raster_row(y), lay.raster_row(lay.row_done(r))
        across: tuple[np.ndarray, np.ndarray] | None = None
        for k, (j0, j1) in enumerate(lay.chunks):
            x0, x1, xf = lay.cols[j0], lay.cols[j1] + tw, lay.col_done(k)
            rgb, valid = self.read(y, y + th, x0, x1)
            x = self.seg.model_input(rgb)
            del rgb
            acc = np.zeros((c, th, x1 - x0), np.float32)
            weight = np.zeros((th, x1 - x0), np.float32)
            carried = work / f"carry-{r - 1}-{k}.npy"
            if r and carried.is_file():
                carry = np.load(carried)
                rows = carry.shape[1]
                acc[:, :rows, : xf - x0] = carry[:c]
                weight[:rows, : xf - x0] = carry[c]
                del carry
            if across is not None:
                n = across[1].shape[1]
                acc[:, :, :n] += across[0]
                weight[:, :n] += across[1]
            starts = [s for s in lay.cols[j0: j1 + 1] if valid[:, s - x0: s - x0 + tw].any()]
            for b in range(0, len(starts), self.batch_size):
                xs = starts[b: b + self.batch_size]
                logits = run_padded(self.seg.run, np.stack([x[:, :, s - x0: s - x0 + tw] for s in xs]),
                                    self.seg.info.size_multiple)
                for s, lg in zip(xs, logits):
                    acc[:, :, s - x0: s - x0 + tw] += lg * self.window
                    weight[:, s - x0: s - x0 + tw] += self.window
            del x
            finished = acc[:, :done, : xf - x0]
            finished /= np.maximum(weight[:done, : xf - x0], np.float32(1e-30))  # no tile: never valid, see below
            c0, c1 = lay.raster_col(x0 if k else 0), lay.raster_col(xf)
            if r1 > r0 and c1 > c0:
                m = None if lay.exact else np.float32([[lay.sx, 0, (c0 + 0.5) * lay.sx - 0.5 - x0],
                                                       [0, lay.sy, (r0 + 0.5) * lay.sy - 0.5 - y]])
                block = out[:, c0:c1]
                argmax_into(finished, block, m)
                block[~self.raster_valid(r0, r1, c0, c1, valid[:done, : xf - x0], lay.exact)] = NODATA
            if done < th:
                save_array(work / f"carry-{r}-{k}.npy",
                           np.concatenate([acc[:, done:, : xf - x0], weight[None, done:, : xf - x0]]))
            across = (acc[:, :, xf - x0:].copy(), weight[:, xf - x0:].copy())


def partial_profile(ds: rasterio.io.DatasetReader, georef: GeoRef | None) -> dict:
    """Creation options of the partial mask: tiled, compressed, single-band uint8, the input's CRS and transform."""
    profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=1, dtype="uint8", nodata=NODATA,
                   tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", BIGTIFF="IF_SAFER")
    if georef is not None:
        profile.update(crs=ds.crs, transform=ds.transform)
    return profile


def write_cog(partial: Path, dest: Path) -> None:
    """Copy the partial mask to `dest` as a Cloud-Optimized GeoTIFF (deflate, internal overviews by the most common
    class), through a temporary name."""
    tmp = dest.with_name(f".{dest.name}.part")
    rasterio.shutil.copy(partial, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK, OVERVIEW_RESAMPLING="MODE",
                         BIGTIFF="IF_SAFER")
    os.replace(tmp, dest)


def segment_ortho(path: Path, mask_path: Path, seg: Segmenter, ground_options: GroundOptions,
                  options: OrthoOptions, tile: int, overlap: int, batch_size: int, progress: bool = True
                  ) -> dict:
    """Segment the raster at `path` into the COG `mask_path`, resuming an interrupted run from the journal in
    MASK_PATH.partial/; returns what the summary needs (ground, scale, bands, stretch, unreadable windows)."""
    require_geo(f"{path.name} is an orthomosaic: streaming it")
    name = path.name
    with gdal_env(), quiet():
        try:
            ds = rasterio.open(path)
        except RasterioError as exc:
            raise WeedsegError(f"{name} cannot be opened as a raster ({exc})") from exc
        with ds:
            ground = raster_ground(ds, name, ground_options)
            bands = rgb_bands(ds, options.bands, name)
            scale, how = model_scale(ground, seg, options)
            log.info("%s: %d x %d pixels, bands %s, seen by the model at %.3f x its resolution (%s)", name,
                     ds.width, ds.height, ",".join(map(str, bands)), scale, how)
            lay = Layout(ds.width, ds.height, max(1, round(ds.width * scale)), max(1, round(ds.height * scale)),
                         tile, overlap)
            if overlap < 0 or lay.tile - overlap < seg.info.size_multiple:
                raise WeedsegError(f"--tile {tile} and --overlap {overlap}: need 0 <= overlap <= tile - "
                                   f"{seg.info.size_multiple}")
            work = mask_path.with_name(mask_path.name + ".partial")
            work.mkdir(parents=True, exist_ok=True)
            settings = {"model": str(seg.path), "size": [ds.width, ds.height], "model_size": [lay.mw, lay.mh],
                        "tile": tile, "overlap": overlap, "bands": list(bands), "tta": seg.tta}
            journal = Journal.load(work, settings)
            if journal is None:
                journal = Journal(settings, asdict(find_stretch(ds, bands)))
                for old in work.iterdir():
                    old.unlink()
                with rasterio.open(work / "mask.tif", "w", **partial_profile(ds, ground.georef)):
                    pass
                journal.save(work)
            else:
                log.info("%s: resuming at row %d of %d rows of windows", name, journal.rows_done, len(lay.rows))
            stretch = Stretch(**journal.stretch)
            if stretch.low != [0, 0, 0] or stretch.high != [255, 255, 255]:
                log.info("%s: %s values stretched to 0..255 from the %g-%g percentiles: %s to %s", name, ds.dtypes[0],
                         *STRETCH_PERCENTILES, [round(v, 1) for v in stretch.low], [round(v, 1) for v in stretch.high])
            runner = OrthoSegmenter(ds, name, seg, lay, bands, stretch, batch_size)
            runner.bad = list(journal.bad_windows)
            run_rows(runner, journal, work, progress)
        write_cog(work / "mask.tif", mask_path)
    shutil.rmtree(work, ignore_errors=True)
    return {"ground": ground, "scale": scale, "scale_source": how, "bands": bands, "stretch": asdict(stretch),
            "bad_windows": runner.bad, "model_size": (lay.mw, lay.mh)}


def raster_ground(ds: rasterio.io.DatasetReader, name: str, options: GroundOptions) -> Ground:
    """The raster's ground units: --gsd, else from its georeference; none (pixel outputs, said once) without one.
    A CRS PROJ does not know is an error."""
    georef = None
    if ds.crs is not None or not ds.transform.is_identity:
        try:
            georef = georef_of(ds, name)
        except WeedsegError as exc:
            if ds.crs is not None and "PROJ" in str(exc):
                raise
            log.warning("%s; its outputs are in pixels", exc)
    else:
        log.warning("%s has no georeference: its outputs are in pixels", name)
    if options.gsd_cm:
        return Ground(options.gsd_cm, "--gsd", georef)
    if georef is None:
        return Ground(None, "none", None, "no georeference")
    return georeferenced_ground(georef, ds.width, ds.height)


def describe_raster(path: Path, options: GroundOptions) -> Ground:
    """The ground units of a raster, from its georeference (header only)."""
    with quiet(), rasterio.open(path) as ds:
        return raster_ground(ds, path.name, options)


def run_rows(runner: OrthoSegmenter, journal: Journal, work: Path, progress: bool) -> None:
    """Predict the rows of windows not yet done. After each: its finished raster rows in whole GeoTIFF blocks go into
    the partial mask (the rest wait in pending-R.npy), the sums carried down are saved (carry-R-K.npy), then the
    journal; a run killed anywhere in between redoes row R from row R - 1's files, which are removed only after."""
    lay = runner.lay
    last = journal.rows_done - 1  # the files of the last finished row are the ones to go on from
    pending = np.load(work / f"pending-{last}.npy") if last >= 0 else np.zeros((0, lay.width), np.uint8)
    first = lay.raster_row(lay.rows[journal.rows_done]) if journal.rows_done < len(lay.rows) else lay.height
    bar = tqdm(total=round(lay.width * lay.height / 1e6, 1), initial=round(lay.width * first / 1e6, 1), unit="MP",
               desc=f"segmenting {runner.name}", disable=not progress)
    for r in range(journal.rows_done, len(lay.rows)):
        r0, r1 = lay.raster_row(lay.rows[r]), lay.raster_row(lay.row_done(r))
        out = np.empty((r1 - r0, lay.width), np.uint8)
        runner.band(r, work, out)
        rows = np.concatenate([pending, out]) if len(pending) else out
        ready = len(rows) if r == len(lay.rows) - 1 else len(rows) // BLOCK * BLOCK
        if ready:
            with rasterio.open(work / "mask.tif", "r+") as dst:
                dst.write(rows[:ready], 1, window=Window(0, journal.written_rows, lay.width, ready))
        pending = rows[ready:].copy()  # not a view: the finished rows are let go
        del rows, out
        save_array(work / f"pending-{r}.npy", pending)
        journal.rows_done, journal.written_rows, journal.bad_windows = r + 1, journal.written_rows + ready, runner.bad
        journal.save(work)
        for old in [*work.glob(f"carry-{r - 1}-*.npy"), work / f"pending-{r - 1}.npy"]:
            old.unlink(missing_ok=True)
        bar.update(round(lay.width * (r1 - r0) / 1e6, 1))
    bar.close()

