"""`weedseg predict` over an image or a folder tree: threaded decoding and writing around batched inference.

Reader threads decode and prepare images while the main thread runs the model on batches and
writer threads upsample, colour and write the results, so the three overlap. An image whose mask
exists is not predicted again (its summary row, grid and spray map are rebuilt from the mask, a
missing overlay is drawn from the photo and the mask), so an interrupted run resumes where it
stopped; an image that cannot be read or predicted is reported and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import WeedsegError
from ..data.io import DECODE_PIXEL_BYTES, image_size, open_checked, rgb_pixels, scan_images
from ..data.transforms import resize_short_side
from . import outputs
from .budget import MemoryBudget, return_freed_memory
from .geo import (GeoTags, Ground, GroundOptions, check_resolution, describe_ground, geo_tags, geotiff_bytes, ground_of,
                  read_geo_tags)
from .outdir import DISK_ERRNOS, claim_output_folder, run_record
from .session import Segmenter, cpu_count
from .spray import SpraySettings, summarize_mask, write_run_outputs, write_spray_map
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
OUTPUTS = ("mask", "overlay", "grid")  # the files `--outputs` chooses from, per image


def model_pixel_bytes(classes: int) -> int:
    """Bytes a model-resolution pixel holds in predict at most: float32 input, its batch and padded copies, logits."""
    return 3 * 4 * 3 + 4 * classes


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


@dataclass
class Job:
    """One input image and the files it produces."""

    index: int
    path: Path
    name: str  # path relative to the input folder, as shown in summary.csv
    mask: Path
    overlay: Path
    grid: Path

    def done(self, since: int = 0) -> bool:
        """The mask exists, written at or after `since` (ns; older ones predate the run's settings). The other
        outputs derive from it (Predictor.summarize_done makes any that are missing), so it alone marks an image
        done."""
        return self.mask.is_file() and self.mask.stat().st_mtime_ns >= since

    @property
    def spray_map(self) -> Path:
        """<stem>.spray.geojson, next to the grid; rewritten from the mask on every run."""
        return self.grid.with_name(self.grid.name.removesuffix(".grid.csv") + ".spray.geojson")


@dataclass
class Prepared:
    """A decoded image and the model input made from it."""

    job: Job
    rgb: np.ndarray
    x: np.ndarray  # normalised (3, h, w) at the model's resolution
    geo: GeoTags | None
    ground: Ground


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
    <stem>.grid.csv; an image keeps its suffix (a.jpg.mask.png) when another one in its folder has the same stem
    (a.png) or is named as its stem (a.jpg for a.jpg.png), so no two images ever share an output."""
    rels = [p.relative_to(root) for p in images]
    stems, names = Counter(r.with_suffix("") for r in rels), set(rels)
    jobs = []
    for i, (path, rel) in enumerate(zip(images, rels)):
        stem = rel.with_suffix("")
        base = out / (rel if stems[stem] > 1 or stem in names else stem)
        geo_ext = ".tif" if rel.suffix.lower() in (".tif", ".tiff") and read_geo_tags(path) else ".png"
        jobs.append(Job(i, path, rel.as_posix(), base.with_name(base.name + ".mask" + geo_ext),
                        base.with_name(f"{base.name}.overlay.{overlay_format}"), base.with_name(base.name + ".grid.csv")))
    return jobs


class Predictor:
    """Runs a Segmenter over jobs with reader and writer threads around batched inference."""

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

    # --- reader threads
    def prepare(self, job: Job) -> Prepared:
        """Decode an image and make its model input; the file is opened once, its header giving the GeoTIFF tags
        and ground units too."""
        with open_checked(job.path) as im:
            geo = geo_tags(im) if job.mask.suffix == ".tif" else None
            ground = ground_of(im, self.opt.ground)
            rgb = rgb_pixels(im)
        small = resize_short_side(rgb, self.short_side)
        check_model_pixels(small.shape[1], small.shape[0], self.short_side, name=str(job.path))  # again, as resized
        x = self.seg.model_input(small)
        return Prepared(job, rgb, x, geo, self.note_ground(job, ground, rgb.shape[:2]))

    # --- writer threads
    def finish(self, item: Prepared, logits: np.ndarray | None, mask: np.ndarray | None) -> dict:
        if mask is None:
            mask = upsample_argmax(logits, *item.rgb.shape[:2])
        job = item.job
        row = self.decide(job, mask, item.ground)
        if "overlay" in self.opt.outputs:
            self.write_overlay(job, item.rgb, mask)
        data = geotiff_bytes(mask, item.geo) if item.geo else outputs.encode_image(mask, ".png")
        outputs.atomic_write(job.mask, data)  # last: its presence marks the image done
        return {**row, "status": "predicted"}

    def write_overlay(self, job: Job, rgb: np.ndarray, mask: np.ndarray) -> None:
        info = self.seg.info
        picture = outputs.overlay(rgb, mask, info.colors, background=info.background)
        outputs.atomic_write(job.overlay, outputs.encode_image(picture, job.overlay.suffix))

    def summarize_done(self, job: Job) -> dict:
        """The row of an image done before (its mask exists), without predicting it again: its grid and spray map
        are redone from the mask for the current settings, and a missing overlay is drawn from the photo and the
        mask."""
        if "overlay" in self.opt.outputs and not job.overlay.is_file():
            with open_checked(job.path) as im:  # decoded before the mask is read: IMAGE_PIXEL_BYTES covers both
                ground, rgb = ground_of(im, self.opt.ground), rgb_pixels(im)
            mask = outputs.read_mask(job.mask)
            if rgb.shape[:2] != mask.shape:
                raise WeedsegError(f"{job.path} is {rgb.shape[1]} x {rgb.shape[0]} but its mask {job.mask} is "
                                   f"{mask.shape[1]} x {mask.shape[0]}: the image changed since it was predicted; "
                                   "delete the mask to predict it again")
            self.write_overlay(job, rgb, mask)
            del rgb
        else:
            ground, mask = describe_ground(job.path, self.opt.ground), outputs.read_mask(job.mask)
        return {**self.decide(job, mask, self.note_ground(job, ground)), "status": "done before"}

    def decide(self, job: Job, mask: np.ndarray, ground: Ground) -> dict:
        """Summary fields of a mask; writes its weed grid and spray map (cells in metres with a GSD and --cell-m)."""
        row, cells, plan = summarize_mask(mask, self.seg.info.classes, ground, self.opt.spray, self.opt.grid_cell)
        if "grid" in self.opt.outputs:  # the spray map comes with the grid
            outputs.atomic_write(job.grid, outputs.grid_csv(cells, plan.spray if plan else None))
            if plan is not None:
                write_spray_map(job.spray_map, plan, job.name)
        return row

    # --- main thread
    def cost(self, job: Job) -> int:
        """Bytes `job` holds while in flight (IMAGE_PIXEL_BYTES per image pixel, model_pixel_bytes per model pixel),
        from its header, which is checked first: size, colour and the model resolution's size (WeedsegError before
        anything is decoded)."""
        width, height = image_size(job.path)
        mw, mh = check_model_pixels(width, height, self.short_side, MAX_MODEL_PIXELS, str(job.path))
        return IMAGE_PIXEL_BYTES * width * height + model_pixel_bytes(len(self.seg.info.classes)) * mw * mh

    def fits_whole(self, item: Prepared) -> bool:
        return max(item.x.shape[1:]) <= self.opt.tile

    def predict_large(self, item: Prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Tiled prediction; at native resolution finished rows go straight into the mask (bounded memory)."""
        o, m = self.opt, self.seg.info.size_multiple
        h, w = item.x.shape[1:]
        if (h, w) != item.rgb.shape[:2]:  # upsampled later, in a writer thread
            return predict_logits(item.x, self.seg.run, o.tile, o.overlap, o.batch_size, m), None
        return None, predict_mask(item.x, self.seg.run, h, w, o.tile, o.overlap, o.batch_size, m)

    def run(self, jobs: list[Job], out: Path, on_row: Callable[[Job, dict], None], progress: bool = True,
            since: int = 0) -> None:
        """Predict every job (skipping those done at or after `since` unless overwrite); `on_row` gets each image's
        summary row. The images decoded, predicted or being written hold at most IN_FLIGHT_BYTES at once. A disk that
        cannot take the outputs (full, read-only) stops the run with a WeedsegError."""
        bar = tqdm(total=len(jobs), unit="img", desc="predicting", disable=not progress, smoothing=0.1)
        prefetch = 2 * self.workers + self.opt.batch_size
        budget, costs = MemoryBudget(IN_FLIGHT_BYTES), {}
        stopped: list[OSError] = []

        def report(job: Job, fut: Future) -> None:
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop the run
                row = failure(exc)
                if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
                    stopped.append(exc)
            budget.give(costs.pop(job.index, 0))
            mask = job.mask.relative_to(out).as_posix() if row["status"] != "failed" else ""
            spray_map = (job.spray_map.relative_to(out).as_posix()
                         if "spray_cells" in row and "grid" in self.opt.outputs else "")
            on_row(job, {"image": job.name, "mask": mask, "spray_map": spray_map, **row})
            bar.update()

        with ThreadPoolExecutor(self.workers, "weedseg-read") as readers, \
             ThreadPoolExecutor(self.workers, "weedseg-write") as writers:
            writes: deque[Future] = deque()

            def submit_write(job: Job, fn: Callable, *args) -> None:
                while len(writes) >= prefetch:
                    writes.popleft().exception()  # waits; failures are reported by the callback
                fut = writers.submit(fn, *args)
                fut.add_done_callback(lambda f, j=job: report(j, f))
                writes.append(fut)

            def fail_now(job: Job, exc: BaseException) -> None:
                failed: Future = Future()
                failed.set_exception(exc)
                report(job, failed)

            batch: list[Prepared] = []

            def flush() -> None:
                if not batch:
                    return
                try:
                    logits = run_padded(self.seg.run, np.stack([b.x for b in batch]), self.seg.info.size_multiple)
                except Exception as exc:  # noqa: BLE001
                    for b in batch:
                        fail_now(b.job, exc)
                else:
                    for b, lg in zip(batch, logits):
                        submit_write(b.job, self.finish, b, lg, None)
                batch.clear()

            def large(item: Prepared) -> None:
                try:
                    logits, mask = self.predict_large(item)
                except Exception as exc:  # noqa: BLE001
                    fail_now(item.job, exc)
                else:
                    submit_write(item.job, self.finish, item, logits, mask)

            done = {j.index for j in jobs if not self.opt.overwrite and j.done(since)}  # decided once per job
            todo = [j for j in jobs if j.index not in done]
            for job in jobs:
                if stopped:
                    break
                if job.index in done:
                    try:
                        width, height = image_size(job.path)
                    except WeedsegError:
                        width = height = 0  # the mask is read and reported all the same
                    costs[job.index] = IMAGE_PIXEL_BYTES * width * height  # its mask, and photo for a missing overlay
                    budget.take(costs[job.index])
                    submit_write(job, self.summarize_done, job)
            reads: deque[tuple[Job, Future]] = deque()
            pending = deque(todo)

            def read_ahead(wait: bool = False) -> None:
                """Start decoding the next images while their pixels fit (with `wait`, at least one)."""
                while pending and len(reads) < prefetch and not stopped:
                    job = pending[0]
                    if job.index not in costs:
                        try:
                            costs[job.index] = self.cost(job)
                        except Exception as exc:  # noqa: BLE001 - refused from its header
                            pending.popleft()
                            fail_now(job, exc)
                            continue
                    if wait and not reads:
                        budget.take(costs[job.index])  # the writers give pixels back
                    elif not budget.try_take(costs[job.index]):
                        return
                    reads.append((pending.popleft(), readers.submit(self.prepare, job)))

            read_ahead()
            while (reads or pending) and not stopped:
                if not reads:
                    flush()  # its pixels come back once written
                    read_ahead(wait=True)
                    continue
                job, fut = reads.popleft()
                try:
                    item = fut.result()
                except Exception as exc:  # noqa: BLE001
                    fail_now(job, exc)
                    read_ahead()
                    continue
                finally:
                    del fut  # it would keep the decoded image alive while the next one is read
                read_ahead()
                if not self.fits_whole(item):
                    flush()
                    large(item)
                else:
                    if batch and batch[0].x.shape != item.x.shape:
                        flush()
                    batch.append(item)
                    if len(batch) >= self.opt.batch_size or not reads:
                        flush()
                del item
            flush()
            while writes:
                writes.popleft().exception()
        bar.close()
        if stopped:
            raise WeedsegError(f"cannot write into {out} ({stopped[0].strerror or stopped[0]}): the run stopped; free "
                               "space or choose another --out, then run the same command again to resume")


def failure(exc: BaseException) -> dict:
    """The summary row fields of an image that failed."""
    message = str(exc) if isinstance(exc, WeedsegError) else f"{type(exc).__name__}: {exc}"
    return {"status": "failed", "error": message}


def predict_path(input_path: str | Path, out: str | Path, seg: Segmenter, options: PredictOptions,
                 progress: bool = True) -> RunSummary:
    """Predict an image or a folder tree into `out` and write out/summary.csv; returns the run summary.

    `out` is claimed first (see outdir.claim_output_folder): locked, checked writable, and refused when
    another model or other options made the outputs it holds, unless `options.overwrite`.
    """
    input_path, out = Path(input_path), Path(out)
    if input_path.is_dir() and out.resolve() == input_path.resolve():
        raise WeedsegError("--out must not be the input folder; choose another folder (it may be inside it)")
    images, unreadable = scan_images(input_path, exclude=out)
    return_freed_memory()
    root = input_path if input_path.is_dir() else input_path.parent  # output names are relative to it
    jobs = plan_jobs(images, root, out, options.overlay_format)
    predictor = Predictor(seg, options)
    record = run_record(seg.path, seg.info.classes, root,
                        {"short_side": predictor.short_side, "tile": options.tile, "overlap": options.overlap,
                         "overlay_format": options.overlay_format, "tta": seg.tta})
    rows: dict[int, dict] = {}
    summary = RunSummary()
    start = time.perf_counter()
    with claim_output_folder(out, record, options.overwrite) as since:
        try:
            predictor.run(jobs, out, lambda job, row: rows.__setitem__(job.index, row), progress, since)
        finally:  # an interrupted run still records what it finished
            summary.rows = [rows[i] for i in sorted(rows)]
            summary.rows += [{"image": line.split(": ", 1)[0], "status": "failed", "error": line} for line in unreadable]
            summary.seconds = time.perf_counter() - start
            try:
                outputs.write_summary(out / "summary.csv", summary.rows, seg.info.classes)
                write_run_outputs(out, summary.rows)
            except OSError as exc:
                raise WeedsegError(f"cannot write {out / 'summary.csv'} ({exc.strerror or exc}); free space or choose "
                                   "another --out, then run the same command again") from exc
    return summary
