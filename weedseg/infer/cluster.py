"""`weedseg predict --ray`: a folder spread over a Ray cluster (`pip install "weedseg[cluster]"`).

The driver (the machine running `weedseg predict`) does what a local run does around the model:
it scans the folder, plans every image's outputs, claims the output folder and writes summary.csv
(weedseg.infer.pipeline.predict_path). Only the per-image work moves: Ray workers, one model session
each, loaded once, run the local pipeline (Predictor.run) over chunks of jobs and write each image's
outputs straight into the output folder, so the folders must be on storage that every node mounts at
the same path (docs/cluster.md). Each worker sends back the summary rows of its chunk, their run
journal entries and its log lines; the driver gathers them as chunks finish and alone writes the
journal. Outputs are the local run's, file for file, and an interrupted run resumes as a local one does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from .. import WeedsegError, __version__
from ..data.io import RUN_MANIFEST, file_sha256
from .outdir import RunJournal
from .pipeline import Job, PredictOptions, Predictor, RunSummary, failure, predict_path
from .session import Segmenter, resolve_model_path

try:
    import ray
    from ray.exceptions import RayError
except ImportError:  # the [cluster] extra is not installed: require_ray says what to install
    ray = None
    RayError = Exception

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "weedseg[cluster]"'
CHUNKS_PER_WORKER = 4  # a folder is cut into about this many chunks per worker: fewer round trips, balanced ends
MAX_CHUNK = 8  # images per chunk at most
CONNECT_TIMEOUT_S = 5
QUEUED_PER_WORKER = 2  # chunks sent to a worker ahead, so it never waits for the driver
MAX_LOSSES = 2  # a chunk whose worker died this many times is reported failed
LogLine = tuple[str, int, str, str]  # logger, level, message, what it says apart from the image it names


@dataclass
class RaySettings:
    """Where and how `weedseg predict --ray` runs.

    `address`: `auto` (the cluster this machine belongs to, started with `ray start`, or $RAY_ADDRESS),
    `local` (a Ray instance of this machine's own, for the run only) or a cluster's HOST:PORT (its head node's
    GCS address, e.g. 10.0.0.5:6379). `cpus`: CPUs per worker; one worker (one model session) per `cpus` CPUs of the
    cluster. `threads`: inference threads per worker (0: `cpus`). `device`, `engine`: as `weedseg predict`'s,
    chosen on each worker's own node; with device cuda each worker takes one GPU.
    """

    address: str = "auto"
    cpus: int = 1
    model: str | None = None  # as given: None is the default model of each node's weedseg install
    device: str = "auto"
    engine: str = "auto"
    threads: int = 0
    tta: str | None = None


@dataclass
class WorkerSpec:
    """What every worker needs to run the same per-image code as the driver would."""

    version: str
    model: str | None
    model_sha256: str
    device: str
    engine: str
    threads: int
    tta: str | None
    options: PredictOptions
    out: Path
    record: dict  # the output folder's RUN_MANIFEST, as the driver wrote it


@dataclass
class Report:
    """What a worker sends back as an image of its chunk finishes (or, with `error`, as the chunk stops)."""

    row: tuple[int, dict] | None  # (job index, summary row)
    entry: tuple[str, dict, dict] | None  # a new run journal entry: (image, summary fields, settings)
    logs: list[LogLine]
    error: str | None = None  # a WeedsegError that stopped the chunk (a disk that cannot take the outputs)


def require_ray() -> None:
    """WeedsegError saying what to install when Ray is not."""
    if ray is None:
        raise WeedsegError(f"--ray needs Ray: {INSTALL_HINT}")


def check_reachable(address: str) -> None:
    """WeedsegError unless something answers at a HOST:PORT address (Ray itself retries a wrong one for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise WeedsegError(f"--ray {address}: give auto, local or the cluster's HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise WeedsegError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); check the address "
                           "that `ray start --head` printed on the head node (docs/cluster.md)") from exc


def connect(address: str) -> bool:
    """Connect this process to the Ray cluster at `address` (see RaySettings); True when it started the
    connection (and must shut it down), False when the process was connected already."""
    require_ray()
    if ray.is_initialized():
        return False
    if address not in ("auto", "local"):
        check_reachable(address)
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise WeedsegError(f"no Ray cluster found at --ray {address}; start one with `ray start --head` "
                           "(docs/cluster.md), or use --ray local") from exc
    return True


def check_shared(out: Path, record: dict) -> None:
    """WeedsegError unless this node sees the output folder the driver claimed (its RUN_MANIFEST, as written)."""
    try:
        seen = json.loads((out / RUN_MANIFEST).read_text())
    except (OSError, ValueError):
        seen = None
    if seen != record:
        raise WeedsegError(f"the Ray worker on {socket.gethostname()} does not see the output folder {out} that "
                           "the driver claimed: mount the same shared storage at the same path on every node "
                           "(docs/cluster.md)")


class CapturedLogs(logging.Handler):
    """The weedseg log records of a worker, kept to send back to the driver. A message is told once per worker
    and kind (Predictor.first_time), naming the image it met first: `images` (the chunk's names) lets the driver
    tell it once per run, as a local run does."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[LogLine] = []
        self.images: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        kind = repr((record.name, record.msg, [None if a in self.images else a for a in args]))
        self.records.append((record.name, record.levelno, record.getMessage(), kind))

    def drain(self) -> list[LogLine]:
        with self.lock:  # emit runs under it, in whichever thread logs
            records, self.records = self.records, []
        return records


class PredictWorker:
    """A Ray worker process: one model session, loaded once, running the local pipeline over chunks of jobs.

    A problem found at start (another weedseg version or model on its node, an output folder it cannot
    see, a model the engine refuses) is kept and reported by `ready`, as one line.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self.logs = spec, CapturedLogs()
        weedseg_log = logging.getLogger("weedseg")
        weedseg_log.addHandler(self.logs)
        weedseg_log.setLevel(logging.INFO)
        weedseg_log.propagate = False  # sent to the driver instead of this worker's stderr
        self.where = f"{socket.gethostname()} (pid {os.getpid()})"
        self.problem: str | None = None
        try:
            if spec.version != __version__:
                raise WeedsegError(f"the Ray worker on {socket.gethostname()} has weedseg {__version__}, the driver "
                                   f"{spec.version}: install the same version on every node")
            model = resolve_model_path(spec.model)
            if file_sha256(model) != spec.model_sha256:
                raise WeedsegError(f"the Ray worker on {socket.gethostname()} has another model at {model} than the "
                                   "driver: put the same model file on every node (or on the shared storage)")
            check_shared(spec.out, spec.record)
            seg = Segmenter(model, spec.device, spec.threads, spin=False, engine=spec.engine, tta=spec.tta)
            self.predictor = Predictor(seg, spec.options)
        except WeedsegError as exc:
            self.problem = str(exc)

    def ready(self) -> tuple[str, str | None, list[LogLine]]:
        """Where this worker runs, the problem that stops it (None if none), and its log lines so far."""
        return self.where, self.problem, self.logs.drain()

    def run(self, jobs: list[Job], entries: dict[str, dict]) -> Iterator[Report]:
        """Predict a chunk of jobs as a local run does, outputs written into the shared output folder, yielding each
        image's report as it finishes (a Ray generator); `entries` are the run journal's for these jobs."""
        reports: queue.SimpleQueue = queue.SimpleQueue()
        journal = ChunkJournal(entries)
        self.logs.images = {job.name for job in jobs}

        def report(job: Job, row: dict) -> None:  # the pipeline's reporting thread adds the entry, then the row
            reports.put(Report((job.index, row), journal.new.pop(job.name, None), self.logs.drain()))

        def predict() -> None:
            try:
                self.predictor.run(jobs, self.spec.out, report, False, journal)
            except WeedsegError as exc:
                reports.put(Report(None, None, self.logs.drain(), str(exc)))
            except BaseException as exc:  # noqa: BLE001 - raised again below, in this task
                reports.put(exc)
            reports.put(None)

        threading.Thread(target=predict, name="weedseg-chunk", daemon=True).start()
        while (item := reports.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


class ChunkJournal(RunJournal):
    """The run journal on a worker: the driver's entries for a chunk, which say which images are done as the
    folder's journal would; what the worker adds goes back to the driver, which alone writes the journal."""

    def __init__(self, entries: dict[str, dict]) -> None:  # no super().__init__: it would open the journal's file
        self.entries = entries
        self.new: dict[str, tuple[str, dict, dict]] = {}

    def add(self, name: str, photo: Path, row: dict, settings: dict) -> None:
        self.new[name] = (name, row, settings)


def chunks(jobs: list[Job], workers: int) -> list[list[Job]]:
    """Jobs cut into about CHUNKS_PER_WORKER chunks per worker (at most MAX_CHUNK images each), in input order;
    a GeoTIFF (an orthomosaic, possibly huge) is a chunk of its own."""
    size = max(1, min(MAX_CHUNK, math.ceil(len(jobs) / (workers * CHUNKS_PER_WORKER))))
    out: list[list[Job]] = []
    for job in jobs:
        if job.mask.suffix == ".tif":
            out.append([job])
        elif out and len(out[-1]) < size and out[-1][-1].mask.suffix != ".tif":
            out[-1].append(job)
        else:
            out.append([job])
    return out


@dataclass
class Chunk:
    """Jobs given to one worker at a time, those reported, and how many workers died running them."""

    jobs: list[Job]
    losses: int = 0
    reported: set[int] = field(default_factory=set)

    def left(self) -> Chunk:
        """The jobs not reported yet, as a chunk."""
        return Chunk([j for j in self.jobs if j.index not in self.reported], self.losses)


class Dispatch:
    """One run's chunks over the workers: each worker gets QUEUED_PER_WORKER chunks once ready and one more per
    chunk done. A worker that dies is replaced (as many times as there were workers) and its chunks go to
    others; a chunk whose worker died MAX_LOSSES times is reported failed."""

    def __init__(self, worker: Callable[[], object], count: int, parts: list[list[Job]], jobs: list[Job],
                 on_row: Callable[[Job, dict], None], journal: RunJournal | None, bar: tqdm) -> None:
        self.worker, self.spares = worker, count
        self.pending = [Chunk(part) for part in reversed(parts)]  # popped from the end, in input order
        self.by_index = {job.index: job for job in jobs}
        self.by_name = {job.name: job for job in jobs}
        self.on_row, self.journal, self.bar = on_row, journal, bar
        self.workers: list = []
        self.starting: dict = {}  # ready() ref -> worker
        self.running: dict = {}  # run() generator -> (worker, chunk)
        self.where: dict = {}  # worker -> host and pid
        self.done_by: Counter = Counter()
        self.told: set[str] = set()
        self.stop: str | None = None
        self.loss = ""  # why the last lost worker was lost
        for _ in range(count):
            self.start()

    def start(self) -> None:
        worker = self.worker()
        self.workers.append(worker)
        self.starting[worker.ready.remote()] = worker

    def go(self) -> None:
        """Run every chunk; WeedsegError for a worker that cannot start or a chunk stopped by the disk."""
        while self.starting or self.running:
            ref = ray.wait([*self.starting, *self.running], num_returns=1)[0][0]
            if ref in self.starting:
                self.started(ref)
            else:
                self.finished(ref)
        if self.pending and not self.stop:
            self.stop = f"every Ray worker was lost ({self.loss}); run the same command again to resume"
        if self.stop:
            raise WeedsegError(self.stop)

    def started(self, ref) -> None:
        worker = self.starting.pop(ref)
        try:
            self.where[worker], problem, logs = ray.get(ref)
        except RayError as exc:
            self.died(worker, exc)
            return
        self.relay(logs)
        if problem:
            raise WeedsegError(problem)
        for _ in range(QUEUED_PER_WORKER):
            self.give(worker)

    def finished(self, generator) -> None:
        """The next report of a chunk (an image finished), or its end."""
        worker, chunk = self.running[generator]
        try:
            report = ray.get(next(generator))
        except StopIteration:
            del self.running[generator]
            self.give(worker)
            return
        except RayError as exc:  # its worker died (killed, out of memory, node lost)
            del self.running[generator]
            self.died(worker, exc, chunk.left())
            return
        self.relay(report.logs)
        if report.entry is not None and self.journal is not None:
            name, fields, settings = report.entry
            self.journal.add(name, self.by_name[name].path, fields, settings)
        if report.row is not None:
            index, row = report.row
            chunk.reported.add(index)
            self.on_row(self.by_index[index], row)
            self.bar.update()
            self.done_by[self.where[worker]] += 1
        self.stop = self.stop or report.error

    def died(self, worker, exc: Exception, chunk: Chunk | None = None) -> None:
        """A worker is gone: its chunk's images not reported go back to the queue (or are reported failed), and a new
        worker replaces it."""
        self.loss = reason(exc)
        if chunk is not None and chunk.jobs:
            chunk.losses += 1
            if chunk.losses < MAX_LOSSES:
                self.pending.append(chunk)
            else:
                for job in chunk.jobs:
                    self.on_row(job, lost(job, exc))
                self.bar.update(len(chunk.jobs))
        if worker in self.workers:
            self.workers.remove(worker)
            if self.spares > 0 and self.stop is None:
                self.spares -= 1
                log.warning("a Ray worker was lost (%s); starting another", self.loss)
                self.start()

    def give(self, worker) -> None:
        if self.pending and self.stop is None and worker in self.workers:
            chunk = self.pending.pop()
            known = self.journal.entries if self.journal is not None else {}
            entries = {job.name: known[job.name] for job in chunk.jobs if job.name in known}
            self.running[worker.run.remote(chunk.jobs, entries)] = (worker, chunk)

    def relay(self, logs: list[LogLine]) -> None:
        """Log the workers' lines, each kind once (each worker tells its first of each kind)."""
        for name, level, message, kind in logs:
            if kind not in self.told:
                self.told.add(kind)
                logging.getLogger(name).log(level, message)


def reason(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]


def lost(job: Job, exc: Exception) -> dict:
    """The summary row of an image whose worker died MAX_LOSSES times."""
    error = WeedsegError(f"the Ray workers predicting it were lost ({reason(exc)}); run the same command again to "
                         "resume")
    return {"image": job.name, "mask": "", "spray_map": "", **failure(error)}


@dataclass
class RayRunner:
    """Runs jobs on Ray workers in place of a local Predictor (`run` is predict_path's `run_jobs`)."""

    settings: RaySettings
    spec: Callable[[Path], WorkerSpec]  # the workers' spec for a claimed output folder
    done_by: Counter = field(default_factory=Counter)  # images per worker, after a run
    said: CapturedLogs = field(default_factory=CapturedLogs)  # the driver's own lines, not repeated from workers

    def worker_count(self) -> tuple[int, dict]:
        """How many workers the cluster holds, and the resources each asks for."""
        if self.settings.device == "cuda":
            return int(ray.cluster_resources().get("GPU", 0)), {"num_cpus": self.settings.cpus, "num_gpus": 1}
        return int(ray.cluster_resources().get("CPU", 0) // self.settings.cpus), {"num_cpus": self.settings.cpus}

    def run(self, jobs: list[Job], out: Path, on_row: Callable[[Job, dict], None], progress: bool = True,
            journal: RunJournal | None = None) -> None:
        """Predict `jobs` on the cluster's workers as Predictor.run would; `on_row` gets each image's summary row, and
        `journal` its entry, as it finishes."""
        count, resources = self.worker_count()
        if count < 1:
            need = "a GPU" if "num_gpus" in resources else f"{self.settings.cpus} CPUs"
            raise WeedsegError(f"the Ray cluster has no room for a worker ({need}); lower --ray-cpus or add nodes")
        parts = chunks(jobs, count)
        count = min(count, len(parts))
        spec = self.spec(out)
        worker_class = ray.remote(PredictWorker).options(**resources)
        log.info("Ray: %d workers of %s, %d chunks of up to %d images", count,
                 " and ".join(f"{v} {k.removeprefix('num_')[:3].upper()}" for k, v in resources.items()), len(parts),
                 max(map(len, parts)))
        bar = tqdm(total=len(jobs), unit="img", desc="predicting", disable=not progress, smoothing=0.1)
        dispatch = Dispatch(lambda: worker_class.remote(spec), count, parts, jobs, on_row, journal, bar)
        dispatch.told.update(kind for *_, kind in self.said.records)
        try:
            dispatch.go()
        finally:
            for worker in dispatch.workers:  # an interrupted run leaves no worker writing into the folder
                ray.kill(worker)
            bar.close()
            self.done_by = dispatch.done_by


def predict_on_ray(input_path: str | Path, out: str | Path, settings: RaySettings, options: PredictOptions,
                   progress: bool = True) -> RunSummary:
    """`weedseg predict --ray`: predict_path with the per-image work on a Ray cluster's workers.

    The driver opens the model too (on its CPU, one thread), for the metadata the run record and the
    output names need and to refuse a bad model before any worker starts.
    """
    require_ray()
    model = resolve_model_path(settings.model)
    seg = Segmenter(model, "cpu", 1, spin=False, engine="onnxruntime", tta=settings.tta)
    sha256 = file_sha256(model)
    given = str(model.absolute()) if settings.model else None  # None: each node's own default model
    worker_options = replace(options, workers=options.workers or 2)  # a few CPUs each: the fewest automatic threads

    def spec(folder: Path) -> WorkerSpec:
        record = json.loads((folder / RUN_MANIFEST).read_text())
        return WorkerSpec(__version__, given, sha256, settings.device, settings.engine,
                          settings.threads or settings.cpus, settings.tta, worker_options, folder, record)

    runner = RayRunner(settings, spec)
    weedseg_log = logging.getLogger("weedseg")
    weedseg_log.addHandler(runner.said)
    started = connect(settings.address)
    try:
        # absolute paths: the workers' current folders are Ray's own
        summary = predict_path(Path(input_path).absolute(), Path(out).absolute(), seg, options, progress, runner.run)
    finally:
        weedseg_log.removeHandler(runner.said)
        if started:
            ray.shutdown()
    if runner.done_by:
        log.info("Ray: images per worker: %s", ", ".join(f"{k} {v}" for k, v in sorted(runner.done_by.items())))
    return summary
