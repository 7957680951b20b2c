"""`weedseg predict` over an image or a folder tree, in explicit stages.

1. plan (main thread, `plan_jobs` and `Run.plan`): the outputs of each image; the run journal of the
   output folder says which images are done (their rows are reused) and which must be predicted.
2. read (reader threads, `Predictor.prepare`): decode an image and make its model input.
3. model (main thread, `Run.model_stage`): batch inputs of one shape and run the model on them; an image
   too large for one call is tiled; a file one of `Predictor.routes` claims is handled whole by it.
4. write (writer threads, `Predictor.finish` and `Predictor.refresh`): the class mask, the summary row and
   the outputs chosen with --outputs (`IMAGE_OUTPUTS`), the mask last: it marks the image written.
5. report (one thread, `Reporter`): every image's row arrives through a queue as the image finishes; it
   alone records rows in the journal, calls `on_row` and moves the progress bar.

The images decoded, predicted or being written hold at most IN_FLIGHT_BYTES at once (`MemoryBudget`), so
memory is bounded whatever the folder holds. An image that cannot be read or predicted is reported and
skipped; a disk that cannot take the outputs stops the run. A rerun predicts only what is left.

Extension points, each a list or a dict, so new work plugs in without touching the stages:
`IMAGE_OUTPUTS` (a file written per image, keyed by its --outputs name), `Predictor.routes` (files handled
whole by another path, e.g. a raster too large to read at once), `Predictor.model_fields` and
`Predictor.extra_columns` (summary fields computed from the model's outputs), and `Predictor.run` itself,
which runs any subset of the jobs and hands back their rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import WeedsegError, familiarity
from ..data.io import DECODE_PIXEL_BYTES, MAX_IMAGE_PIXELS, image_size, open_checked, rgb_pixels, scan_images
from ..data.transforms import resize_short_side, short_side_size
from . import atomic, pictures, tables
from .budget import MemoryBudget, return_freed_memory
from .field_map import OrthoRoute
from .geo import (GeoTags, Ground, GroundOptions, check_resolution, describe_ground, geo_tags, geotiff_bytes, ground_of,
                  read_geo_tags)
from .metadata import ModelInfo
from .ortho import OrthoOptions, raster_pixels
from .outdir import DISK_ERRNOS, RunJournal, claim_output_folder, named_as_run_files, run_record
from .session import Segmenter, cpu_count
from .spray import SprayPlan, SpraySettings, summarize_mask, write_run_outputs, write_spray_map
from .tiling import MAX_MODEL_PIXELS, check_model_pixels, predict_logits, predict_mask, run_padded, upsample_argmax

log = logging.getLogger(__name__)

# Bytes held at once by the images decoded, predicted or being written, counted from each image's header before it
# is decoded; with the per-image limits this bounds predict's memory whatever the folder holds (docs/reliability.md).
# Per image pixel, the most held at once (IMAGE_PIXEL_BYTES): decoding holds data.io.DECODE_PIXEL_BYTES (9);
# writing holds the uint8 RGB array (3), the class mask (1), the overlay (3) and the BGR copy it is encoded from
# (3): 10.
# Per model-resolution pixel (model_pixel_bytes): the float32 input (3 x 4 bytes, held until the image is written;
# making it briefly takes the resized uint8 image and a second float32 copy, 15 more), during the model call its
# copy in the stacked batch and, for sides not a multiple of the size multiple, the padded copy (12 + 12), then
# float32 logits (4 per class, held until the image is written): 36 + 4 x classes, 48 for soil / crop / weed.
# Not counted: the engine's own working memory (one model call at a time) and the tiled path's bands (bounded by
# the tile size).
IN_FLIGHT_BYTES = 840_000_000  # seven 12-megapixel photos at once (four when decoding took 14 bytes a pixel)
IMAGE_PIXEL_BYTES = max(DECODE_PIXEL_BYTES, 3 + 1 + 3 + 3)
ORIENTATION = 0x0112  # the EXIF tag


def model_pixel_bytes(classes: int) -> int:
    """Bytes a model-resolution pixel holds in predict at most: float32 input, its batch and padded copies, logits."""
    return 3 * 4 * 3 + 4 * classes


@dataclass
class Job:
    """One input image and the files it produces."""

    index: int
    path: Path
    name: str  # path relative to the input folder, as shown in summary.csv
    mask: Path
    overlay: Path
    grid: Path

    def sibling(self, suffix: str) -> Path:
        """An output of this image named <base><suffix>, beside its grid (base: its stem, or its name where
        another image shares the stem)."""
        return self.grid.with_name(self.grid.name.removesuffix(".grid.csv") + suffix)

    @property
    def spray_map(self) -> Path:
        """<base>.spray.geojson, next to the grid; written with it."""
        return self.sibling(".spray.geojson")


@dataclass
class Result:
    """An image's class mask and what is known of it: what each per-image output is made from."""

    job: Job
    mask: np.ndarray
    ground: Ground
    row: dict  # summary fields
    cells: list[tables.GridCell]
    plan: SprayPlan | None
    rgb: np.ndarray | None  # the photo; None where no output drawn from it is written


@dataclass
class ImageOutput:
    """A file (or files) written per image besides the mask, chosen by name with --outputs."""

    files: Callable[[Job, dict], list[Path]]  # what it writes for a job with these summary fields
    write: Callable[[Result, ModelInfo], None]
    needs_photo: bool = False  # drawn on the photo: a rerun decodes it again to make a missing one


def write_overlay(result: Result, info: ModelInfo) -> None:
    picture = pictures.overlay(result.rgb, result.mask, info.colors, background=info.background)
    atomic.atomic_write(result.job.overlay, pictures.encode_image(picture, result.job.overlay.suffix))


def write_grid(result: Result, info: ModelInfo) -> None:
    """The weed grid CSV and, with a weed class, the spray map (cells in metres with a GSD and --cell-m)."""
    atomic.atomic_write(result.job.grid, tables.grid_csv(result.cells, result.plan.spray if result.plan else None))
    if result.plan is not None:
        write_spray_map(result.job.spray_map, result.plan, result.job.name)


IMAGE_OUTPUTS: dict[str, ImageOutput] = {
    "overlay": ImageOutput(lambda job, row: [job.overlay], write_overlay, needs_photo=True),
    "grid": ImageOutput(lambda job, row: [job.grid, *([job.spray_map] if "spray_cells" in row else [])], write_grid),
}
OUTPUTS = ("mask", *IMAGE_OUTPUTS)  # the files `--outputs` chooses from, per image

# A file handled whole by another path (e.g. a raster too large to read at once): given a job, None, or a function
# that predicts it, writes its outputs (its mask last) and returns its summary fields. Run on the main thread.
Route = Callable[["Job"], "Callable[[Job], dict] | None"]
# Summary fields per image from a model call: f(inputs (N, 3, h, w), logits (N, C, h, w)) -> one dict per image.
# Called for images predicted in one model call (not for tiled ones).
ModelFields = Callable[[np.ndarray, np.ndarray], list[dict]]


@dataclass
class PredictOptions:
    """How `weedseg predict` runs; see `weedseg predict --help`."""

    short_side: int | None = None  # None: the model's input short side; 0: native resolution
    tile: int = 1024
    overlap: int = 128
    batch_size: int = 4
    grid_cell: int = 256
    overlay_format: str = "jpg"
    overwrite: bool = False
    workers: int = 0  # reader and writer threads each; 0: automatic
    ground: GroundOptions = field(default_factory=GroundOptions)
    spray: SpraySettings = field(default_factory=SpraySettings)
    outputs: tuple[str, ...] = OUTPUTS  # the mask is always written: it marks an image done
    ortho: OrthoOptions = field(default_factory=OrthoOptions)

    def row_settings(self) -> dict:
        """The settings a summary row depends on beyond the run record's (a journal row made with others is
        made again from the mask), as JSON would give them back."""
        return json.loads(json.dumps({"grid_cell": self.grid_cell, "ground": asdict(self.ground),
                                      "spray": asdict(self.spray)}))


@dataclass
class Prepared:
    """A decoded image and the model input made from it."""

    job: Job
    rgb: np.ndarray | None  # the photo where an output is drawn on it (else dropped once the model input is made)
    size: tuple[int, int]  # the photo's full (height, width): the mask's
    x: np.ndarray  # normalised (3, h, w) at the model's resolution
    geo: GeoTags | None
    ground: Ground
    fields: dict = field(default_factory=dict)  # summary fields from Predictor.model_fields


def draft_size(width: int, height: int, short_side: int) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder for (DCT scaling by 1/2, 1/4 or 1/8, at least this size) when the model
    sees the photo at half its size or less; None otherwise (0: native resolution)."""
    scale = short_side / min(width, height) if short_side else 1.0
    return (math.ceil(width * scale), math.ceil(height * scale)) if scale <= 0.5 else None


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image once its EXIF orientation is applied (from the header)."""
    width, height = im.size
    return (width, height) if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else (height, width)


@dataclass
class RunSummary:
    """What a run did: one summary row per image, in input order."""

    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    def counts(self) -> Counter:
        return Counter(r["status"] for r in self.rows)


def plan_jobs(images: list[Path], root: Path, out: Path, overlay_format: str) -> list[Job]:
    """Output paths mirroring the input tree below `root`: <stem>.mask.png (.mask.tif for GeoTIFFs), <stem>.overlay.jpg,
    <stem>.grid.csv. Names are compared ignoring case, as Windows and macOS volumes do: an image keeps its suffix
    (a.jpg.mask.png) when another one in its folder has the same stem (a.png, A.png) or is named as its stem (a.jpg
    for a.jpg.png), and images whose outputs would still differ only in case (a.jpg, A.JPG) get a short hash of
    their name too, so no two images ever share an output. An output named as a folder of the tree (a.mask.png
    for a.jpg beside a folder a.mask.png/) is avoided the same way."""
    rels = [p.relative_to(root) for p in images]
    fold = lambda p: p.as_posix().casefold()  # noqa: E731
    stems, names = Counter(fold(r.with_suffix("")) for r in rels), {fold(r) for r in rels}
    folders = {fold(parent) for r in rels for parent in r.parents}
    suffixes = (".mask.png", ".mask.tif", f".overlay.{overlay_format}", ".grid.csv", ".spray.geojson")
    named_as_folder = lambda base: any(fold(base) + s in folders for s in suffixes)  # noqa: E731
    bases = []
    for rel in rels:
        stem = rel.with_suffix("")
        bases.append(rel if stems[fold(stem)] > 1 or fold(stem) in names or named_as_folder(stem) else stem)
    clashes = Counter(fold(b) for b in bases)
    jobs = []
    for i, (path, rel, base) in enumerate(zip(images, rels, bases)):
        if clashes[fold(base)] > 1 or named_as_folder(base):
            base = base.with_name(f"{base.name}-{hashlib.sha1(os.fsencode(rel.as_posix())).hexdigest()[:8]}")
        base = out / base
        tiff = rel.suffix.lower() in (".tif", ".tiff")
        geo_ext = ".tif" if tiff and (read_geo_tags(path) or raster_pixels(path) > MAX_IMAGE_PIXELS) else ".png"
        jobs.append(Job(i, path, rel.as_posix(), base.with_name(base.name + ".mask" + geo_ext),
                        base.with_name(f"{base.name}.overlay.{overlay_format}"), base.with_name(base.name + ".grid.csv")))
    return jobs


def failure(exc: BaseException) -> dict:
    """The summary row fields of an image that failed."""
    message = str(exc) if isinstance(exc, WeedsegError) else f"{type(exc).__name__}: {exc}"
    return {"status": "failed", "error": message}


class Reporter:
    """The reporting stage: one thread receives (job, fields, status, new) through a queue as images finish,
    records new rows in the journal, passes the full row to `on_row` and moves the progress bar."""

    def __init__(self, out: Path, outputs: tuple[str, ...], on_row: Callable[[Job, dict], None],
                 journal: RunJournal | None, settings: dict, total: int, progress: bool) -> None:
        self.out, self.outputs, self.on_row, self.journal, self.settings = out, outputs, on_row, journal, settings
        self.bar = tqdm(total=total, unit="img", desc="predicting", disable=not progress, smoothing=0.1)
        self.error: BaseException | None = None  # the first failure of the reporting itself
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="weedseg-report", daemon=True)
        self._thread.start()

    def put(self, job: Job, fields: dict, status: str, new: bool = True) -> None:
        """Report an image: `fields` are its summary fields (or `failure`'s), `new` when not read from the journal."""
        self._queue.put((job, fields, status, new))

    def close(self) -> None:
        """Report what is queued and stop; raises the reporting's own failure, if any."""
        self._queue.put(None)
        self._thread.join()
        self.bar.close()
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._report(*item)
                except BaseException as exc:  # noqa: BLE001 - raised again by close
                    self.error = exc

    def _report(self, job: Job, fields: dict, status: str, new: bool) -> None:
        row = {"image": job.name, "status": status, **fields, "mask": "", "spray_map": ""}
        if status != "failed":
            row["mask"] = job.mask.relative_to(self.out).as_posix()
            if "spray_cells" in fields and "grid" in self.outputs:
                row["spray_map"] = job.spray_map.relative_to(self.out).as_posix()
            if new and self.journal is not None:
                self.journal.add(job.name, job.path, fields, self.settings)
        self.on_row(job, row)
        self.bar.update()


class Predictor:
    """Runs a Segmenter over jobs: the per-image work of each stage, and `run`, which wires the stages."""

    def __init__(self, seg: Segmenter, options: PredictOptions) -> None:
        self.seg, self.opt = seg, options
        self.short_side = seg.info.input_short_side if options.short_side is None else options.short_side
        if options.tile % seg.info.size_multiple or options.tile < 2 * seg.info.size_multiple:
            raise WeedsegError(f"--tile must be a multiple of {seg.info.size_multiple} and at least "
                               f"{2 * seg.info.size_multiple}, got {options.tile}")
        if not 0 <= options.overlap <= options.tile // 2:
            raise WeedsegError(f"--overlap must be between 0 and half the tile ({options.tile // 2}), got {options.overlap}")
        self.workers = options.workers or max(2, min(4, cpu_count()))
        if seg.info.background is None:
            log.warning("the model's classes (%s) name no soil, background or ground class: overlays tint every "
                        "class and every class gets an area", ", ".join(seg.info.classes))
        self.settings = options.row_settings()
        self.needs_photo = any(IMAGE_OUTPUTS[k].needs_photo for k in options.outputs if k in IMAGE_OUTPUTS)
        self.routes: list[Route] = [OrthoRoute(seg, options)]
        self.model_fields: list[ModelFields] = []
        self.extra_columns: tuple[str, ...] = familiarity.COLUMNS  # summary.csv columns beyond the mask's
        if seg.familiarity is None:
            log.warning("%s: %s", seg.path.name, familiarity.UNKNOWN_MESSAGE)
        elif self.short_side != seg.familiarity.short_side:
            log.warning("familiarity was measured at short side %s and these photos are segmented at %s: its scores "
                        "are less reliable", seg.familiarity.short_side, self.short_side)
        self.told: set[object] = set()  # ground sources and resolution warnings already logged (see first_time)
        self._told_lock = threading.Lock()

    def first_time(self, key: object) -> bool:
        """True once per `key`: reader and writer threads both log, and each message must appear once."""
        with self._told_lock:
            if key in self.told:
                return False
            self.told.add(key)
            return True

    def note_ground(self, job: Job, ground: Ground, shape: tuple[int, int] | None = None) -> Ground:
        """The image's ground units, logged once per kind of source; with `shape` (the image's height and
        width), a warning when the model sees it at a GSD far from its training GSD."""
        if self.first_time(ground.source):
            log.info("%s: %s", job.name, ground.describe())
        check = check_resolution(ground, self.seg.info.train_gsd_cm, shape, self.short_side) if shape else None
        if check and check.far and self.first_time(check.suggested_short_side):
            log.warning("%s is segmented at %.3g cm per pixel but the model was trained at %.3g: segment it with "
                        "--short-side %d (see docs/spray-maps.md)", job.name, check.image_gsd_cm,
                        check.model_gsd_cm, check.suggested_short_side)
        return ground

    def cost(self, job: Job) -> int:
        """Bytes `job` holds while in flight (IMAGE_PIXEL_BYTES per image pixel, model_pixel_bytes per model pixel),
        from its header, which is checked first: size, colour and the model resolution's size (WeedsegError before
        anything is decoded)."""
        width, height = image_size(job.path)
        mw, mh = check_model_pixels(width, height, self.short_side, MAX_MODEL_PIXELS, str(job.path))
        return IMAGE_PIXEL_BYTES * width * height + model_pixel_bytes(len(self.seg.info.classes)) * mw * mh

    def route(self, job: Job) -> Callable[[Job], dict] | None:
        """The function of the first of `routes` that claims `job`, if any."""
        return next((handler for r in self.routes if (handler := r(job)) is not None), None)

    # --- stage 2: reader threads
    def prepare(self, job: Job) -> Prepared:
        """Decode an image and make its model input; the file is opened once, its header giving the GeoTIFF tags
        and ground units too. A JPEG the model sees at half its size or less is decoded at reduced size (DCT
        scaling) unless an output is drawn on the photo."""
        with open_checked(job.path) as im:
            geo = geo_tags(im) if job.mask.suffix == ".tif" else None
            ground = ground_of(im, self.opt.ground)
            height, width = oriented_size(im)
            reduced = draft_size(*im.size, self.short_side) if not self.needs_photo else None
            if reduced:
                im.draft("RGB", reduced)
            rgb = rgb_pixels(im)
        check_model_pixels(width, height, self.short_side, name=str(job.path))  # again, with EXIF orientation
        size = short_side_size(width, height, self.short_side)  # from the full size, as without reduction
        small = resize_short_side(rgb, self.short_side) if not reduced else \
            rgb if rgb.shape[1::-1] == size else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        x = self.seg.model_input(small)
        return Prepared(job, rgb if self.needs_photo else None, (height, width), x, geo,
                        self.note_ground(job, ground, (height, width)))

    # --- stage 3: the main thread
    def fits_whole(self, item: Prepared) -> bool:
        return max(item.x.shape[1:]) <= self.opt.tile

    def predict_batch(self, batch: list[Prepared]) -> list[np.ndarray]:
        """Logits of images of one model-input shape in one model call; `model_fields` add to their fields."""
        x = np.stack([b.x for b in batch])
        features: list[np.ndarray] = []
        logits = run_padded(lambda b: self.seg.run(b, features), x, self.seg.info.size_multiple)
        for b, extra in zip(batch, familiarity.verdict_rows(self.seg.familiarity, features, len(batch))):
            b.fields.update(extra)
        for hook in self.model_fields:
            for b, extra in zip(batch, hook(x, logits)):
                b.fields.update(extra)
        return list(logits)

    def predict_large(self, item: Prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Tiled prediction; at native resolution finished rows go straight into the mask (bounded memory)."""
        o, m = self.opt, self.seg.info.size_multiple
        h, w = item.x.shape[1:]
        features: list[np.ndarray] = []  # of every tile: their mean is the image's

        def run(b: np.ndarray) -> np.ndarray:
            return self.seg.run(b, features)

        if (h, w) != item.size:  # upsampled later, in a writer thread
            result = predict_logits(item.x, run, o.tile, o.overlap, o.batch_size, m), None
        else:
            result = None, predict_mask(item.x, run, h, w, o.tile, o.overlap, o.batch_size, m)
        item.fields.update(familiarity.verdict_rows(self.seg.familiarity, features, 1, pool=True)[0])
        return result

    # --- stage 4: writer threads
    def finish(self, item: Prepared, logits: np.ndarray | None, mask: np.ndarray | None) -> dict:
        """Write a predicted image's outputs, its mask last; returns its summary fields."""
        if mask is None:
            mask = upsample_argmax(logits, *item.size)
        result = self.summarize(item.job, mask, item.ground, item.rgb)
        self.write(result, [k for k in self.opt.outputs if k in IMAGE_OUTPUTS])
        data = geotiff_bytes(mask, item.geo) if item.geo else pictures.encode_mask(mask)
        atomic.atomic_write(item.job.mask, data)  # last: with its journal line, it marks the image done
        return {**result.row, **item.fields}

    def refresh(self, job: Job, fields: dict, kinds: list[str]) -> dict:
        """The summary fields of an image done before, its outputs `kinds` made again from its mask (and photo, for
        one drawn on it) without predicting; `fields` are its journal row's, kept where the settings allow."""
        if any(IMAGE_OUTPUTS[k].needs_photo for k in kinds):
            with open_checked(job.path) as im:  # decoded before the mask is read: IMAGE_PIXEL_BYTES covers both
                ground, rgb = ground_of(im, self.opt.ground), rgb_pixels(im)
        else:
            ground, rgb = describe_ground(job.path, self.opt.ground), None
        mask = pictures.read_mask(job.mask)
        if rgb is not None and rgb.shape[:2] != mask.shape:
            raise WeedsegError(f"{job.path} is {rgb.shape[1]} x {rgb.shape[0]} but its mask {job.mask} is "
                               f"{mask.shape[1]} x {mask.shape[0]}: delete the mask to predict it again")
        result = self.summarize(job, mask, self.note_ground(job, ground), rgb)
        self.write(result, kinds)
        return {**fields, **result.row}

    def summarize(self, job: Job, mask: np.ndarray, ground: Ground, rgb: np.ndarray | None) -> Result:
        row, cells, plan = summarize_mask(mask, self.seg.info.classes, ground, self.opt.spray, self.opt.grid_cell)
        return Result(job, mask, ground, row, cells, plan, rgb)

    def write(self, result: Result, kinds: list[str]) -> None:
        for kind in kinds:
            IMAGE_OUTPUTS[kind].write(result, self.seg.info)

    def decide(self, job: Job, mask: np.ndarray, ground: Ground) -> dict:
        """Summary fields of a mask; writes its weed grid and spray map when --outputs has the grid."""
        result = self.summarize(job, mask, ground, None)
        self.write(result, [k for k in ("grid",) if k in self.opt.outputs])
        return result.row

    # --- all stages
    def run(self, jobs: list[Job], out: Path, on_row: Callable[[Job, dict], None], progress: bool = True,
            journal: RunJournal | None = None) -> None:
        """Predict `jobs` (any subset of a plan) into `out`, skipping those `journal` lists as done unless
        overwrite; `on_row` gets each image's summary row, in the order images finish, from one thread. The images
        decoded, predicted or being written hold at most IN_FLIGHT_BYTES at once. A disk that cannot take the
        outputs (full, read-only) stops the run with a WeedsegError."""
        Run(self, out, journal).go(jobs, on_row, progress)


class Run:
    """One `Predictor.run`: the state its stages share (memory budget, thread pools, the batch, the reporter)."""

    def __init__(self, predictor: Predictor, out: Path, journal: RunJournal | None) -> None:
        self.p, self.out, self.journal = predictor, out, journal
        self.prefetch = 2 * predictor.workers + predictor.opt.batch_size
        self.budget, self.costs = MemoryBudget(IN_FLIGHT_BYTES), {}
        self.disk_error: OSError | None = None
        self.batch: list[Prepared] = []
        self.writes: deque[Future] = deque()
        self.reads: deque[tuple[Job, Future]] = deque()
        self.pending: deque[Job] = deque()

    def go(self, jobs: list[Job], on_row: Callable[[Job, dict], None], progress: bool) -> None:
        p = self.p
        self.reporter = Reporter(self.out, p.opt.outputs, on_row, self.journal, p.settings, len(jobs), progress)
        try:
            with ThreadPoolExecutor(p.workers, "weedseg-read") as self.readers, \
                 ThreadPoolExecutor(p.workers, "weedseg-write") as self.writers:
                routed = self.plan(jobs)
                self.model_stage()
                for job, handler in routed:
                    if self.stopped():
                        break
                    self.settle(job, handler)
                while self.writes:
                    self.writes.popleft().exception()
        finally:
            try:
                self.reporter.close()
            except OSError as exc:  # the journal could not be written
                if exc.errno not in DISK_ERRNOS:
                    raise
                self.disk_error = self.disk_error or exc
        if self.disk_error is not None:
            raise WeedsegError(f"cannot write into {self.out} ({self.disk_error.strerror or self.disk_error}): the run "
                               "stopped; free space or choose another --out, then run the same command again to resume")

    def stopped(self) -> bool:
        return self.disk_error is not None or self.reporter.error is not None

    # --- stage 1: plan
    def plan(self, jobs: list[Job]) -> list[tuple[Job, Callable[[Job], dict]]]:
        """Report the images done before (a writer remakes missing outputs, or the row for changed settings),
        queue the others for reading; returns the routed ones, handled after the photos."""
        p, routed = self.p, []
        kinds = [k for k in p.opt.outputs if k in IMAGE_OUTPUTS]
        for job in jobs:
            handler = p.route(job)  # a routed file decides itself what is left to do
            if handler is not None:
                routed.append((job, handler))
                continue
            entry = None if p.opt.overwrite or self.journal is None else \
                self.journal.finished(job.name, job.path, job.mask)
            if entry is None:
                self.pending.append(job)
                continue
            fields = entry["row"]
            same = entry.get("settings") == p.settings
            missing = [k for k in kinds if not same and k == "grid"
                       or not all(f.is_file() for f in IMAGE_OUTPUTS[k].files(job, fields))]
            if same and not missing:
                self.reporter.put(job, fields, "done before", new=False)
                continue
            try:
                width, height = image_size(job.path)
            except WeedsegError:
                width = height = 0  # the mask is read and reported all the same
            self.costs[job.index] = IMAGE_PIXEL_BYTES * width * height  # its mask, and photo for a missing overlay
            self.budget.take(self.costs[job.index])
            self.submit_write(job, "done before", p.refresh, job, fields, missing)
        return routed

    # --- stage 2: reads, started by the main thread
    def read_ahead(self, wait: bool = False) -> None:
        """Start decoding the next images while their pixels fit (with `wait`, at least one)."""
        while self.pending and len(self.reads) < self.prefetch and not self.stopped():
            job = self.pending[0]
            if job.index not in self.costs:
                try:
                    self.costs[job.index] = self.p.cost(job)
                except Exception as exc:  # noqa: BLE001 - refused from its header
                    self.pending.popleft()
                    self.fail(job, exc)
                    continue
            if wait and not self.reads:
                self.budget.take(self.costs[job.index])  # the writers give pixels back
            elif not self.budget.try_take(self.costs[job.index]):
                return
            self.reads.append((self.pending.popleft(), self.readers.submit(self.p.prepare, job)))

    # --- stage 3: model
    def model_stage(self) -> None:
        """Take decoded images in order, batch those of one shape, run the model and hand results to the writers."""
        self.read_ahead()
        while (self.reads or self.pending) and not self.stopped():
            if not self.reads:
                self.flush()  # its pixels come back once written
                self.read_ahead(wait=True)
                continue
            job, fut = self.reads.popleft()
            try:
                item = fut.result()
            except Exception as exc:  # noqa: BLE001
                self.fail(job, exc)
                self.read_ahead()
                continue
            finally:
                del fut  # it would keep the decoded image alive while the next one is read
            self.read_ahead()
            if not self.p.fits_whole(item):
                self.flush()
                self.large(item)
            else:
                if self.batch and self.batch[0].x.shape != item.x.shape:
                    self.flush()
                self.batch.append(item)
                if len(self.batch) >= self.p.opt.batch_size or not self.reads:
                    self.flush()
            del item
        self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        try:
            logits = self.p.predict_batch(batch)
        except Exception as exc:  # noqa: BLE001
            for b in batch:
                self.fail(b.job, exc)
        else:
            for b, lg in zip(batch, logits):
                self.submit_write(b.job, "predicted", self.p.finish, b, lg, None)

    def large(self, item: Prepared) -> None:
        try:
            logits, mask = self.p.predict_large(item)
        except Exception as exc:  # noqa: BLE001
            self.fail(item.job, exc)
        else:
            self.submit_write(item.job, "predicted", self.p.finish, item, logits, mask)

    def settle(self, job: Job, handler: Callable[[Job], dict]) -> None:
        """A routed file, handled whole on the main thread."""
        try:
            fields = handler(job)
        except Exception as exc:  # noqa: BLE001
            self.fail(job, exc)
        else:
            self.reporter.put(job, fields, "predicted")

    # --- stage 4: writes
    def submit_write(self, job: Job, status: str, fn: Callable[..., dict], *args) -> None:
        while len(self.writes) >= self.prefetch:
            self.writes.popleft().exception()  # waits; the task reports its own failure
        self.writes.append(self.writers.submit(self.write_task, job, status, fn, *args))

    def write_task(self, job: Job, status: str, fn: Callable[..., dict], *args) -> None:
        try:
            fields = fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop the run
            self.fail(job, exc)
        else:
            self.budget.give(self.costs.pop(job.index, 0))
            self.reporter.put(job, fields, status)

    def fail(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS and self.disk_error is None:
            self.disk_error = exc
        self.budget.give(self.costs.pop(job.index, 0))
        self.reporter.put(job, failure(exc), "failed")


def predict_path(input_path: str | Path, out: str | Path, seg: Segmenter, options: PredictOptions,
                 progress: bool = True, run_jobs: Callable[..., None] | None = None) -> RunSummary:
    """Predict an image or a folder tree into `out` and write out/summary.csv; returns the run summary.
    `run_jobs` runs the jobs in place of Predictor.run, with its arguments (weedseg.infer.cluster: on Ray workers).

    `out` is claimed first (see outdir.claim_output_folder): locked, checked writable, and refused when
    another model or other options made the outputs it holds, unless `options.overwrite`.
    """
    input_path, out = Path(input_path), Path(out)
    if input_path.is_dir() and out.resolve() == input_path.resolve():
        raise WeedsegError("--out must not be the input folder; choose another folder (it may be inside it)")
    images, unreadable = scan_images(input_path, exclude=out)
    return_freed_memory()
    root = input_path if input_path.is_dir() else input_path.parent  # output names are relative to it
    images, named_as_outputs = named_as_run_files(images, root)
    unreadable += named_as_outputs
    jobs = plan_jobs(images, root, out, options.overlay_format)
    predictor = Predictor(seg, options)
    record = run_record(seg.path, seg.info.classes, root,
                        {"short_side": predictor.short_side, "tile": options.tile, "overlap": options.overlap,
                         "overlay_format": options.overlay_format, "tta": seg.tta})
    rows: dict[int, dict] = {}
    summary = RunSummary()
    start = time.perf_counter()
    with claim_output_folder(out, record, options.overwrite) as journal:
        try:
            (run_jobs or predictor.run)(jobs, out, lambda job, row: rows.__setitem__(job.index, row), progress, journal)
            flagged, scored = familiarity.count_flagged(list(rows.values()))
            if scored and seg.familiarity is not None:
                log.log(logging.WARNING if flagged else logging.INFO,
                        familiarity.flagged_message(flagged, scored, seg.familiarity.field))
        finally:  # an interrupted run still records what it finished
            summary.rows = [rows[i] for i in sorted(rows)]
            summary.rows += [{"image": line.split(": ", 1)[0], "status": "failed", "error": line} for line in unreadable]
            summary.seconds = time.perf_counter() - start
            try:
                tables.write_summary(out / "summary.csv", summary.rows, seg.info.classes, predictor.extra_columns)
                write_run_outputs(out, summary.rows)
            except OSError as exc:
                raise WeedsegError(f"cannot write {out / 'summary.csv'} ({exc.strerror or exc}); free space or choose "
                                   "another --out, then run the same command again") from exc
    return summary
