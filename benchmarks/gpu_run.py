"""One command for a GPU machine: smoke-test every CUDA path, measure training speed and run the largest
paired pretraining experiment that fits in 8 minutes on one H100, with everything in one output folder.

    benchmarks/gpu_run.sh --make-data ../shared/field_data gpu_data   # once, where the full data is (~40 MB)
    benchmarks/gpu_run.sh --data-root gpu_data --out OUT               # on the GPU machine (<= 8 minutes)
    benchmarks/gpu_run.sh --tiny --data-root gpu_data --out OUT        # the same, tiny, on a CPU

Stages, each a subprocess with its own time limit (a failure is reported and the others still run):
smoke tests of `train` (bf16 autocast on CUDA), `export --int8`, `predict`, `pretrain --method
selective` on the pool (peanut train + unlabelled photos; scoring on the device), `torchrun
--nproc_per_node 1` and `evaluate`; the table of benchmarks/training.py; then the experiment (scratch
vs random vs selective masking, paired seeds, all and 10 % of the peanut labels) with epochs chosen
so that the whole run fits. OUT receives summary.md and gpu_run.tar.gz (logs, JSON results, tables;
no checkpoints). Working files go to --work. Ctrl-C or SIGTERM stops the stages that are running (each runs in
its own session, out of reach of the terminal's Ctrl-C) and still writes the summary and the tarball. See
docs/research/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from weedseg import WeedsegError
from weedseg.data import open_dataset
from weedseg.data.io import find_images, read_label_map, read_rgb
from weedseg.data.locate import find_dataset_root
from weedseg.data.transforms import resize_short_side
from weedseg.experiment import ExperimentConfig, run_experiment
from weedseg.experiment.plan import finetune_schedule
from weedseg.infer.engines import cpu_name
from weedseg.processes import ChildProcesses, sigterm_as_ctrl_c
from weedseg.ssl.pretrain import PretrainConfig, plan_steps

REPO = Path(__file__).resolve().parents[1]
KEPT_SUFFIXES = {".json", ".jsonl", ".md", ".log", ".csv", ".txt"}  # what the tarball keeps (and results.png)
MAX_KEPT_BYTES = 16 << 20
MIN_STAGE_SECONDS = 5.0  # a stage with less time left than this is skipped
SKIPPED = "left out with --skip"
INTERRUPTED = "stopped by Ctrl-C or SIGTERM"
STAGES = ("train", "export-int8", "predict", "pretrain-selective", "torchrun", "evaluate", "throughput", "experiment")


# ---------------------------------------------------------------- the small data folder (--make-data)

def downscaled(image: np.ndarray, short_side: int, nearest: bool = False) -> np.ndarray:
    """`image` with its short side reduced to `short_side` (never enlarged)."""
    return image if min(image.shape[:2]) <= short_side else resize_short_side(image, short_side, nearest)


def write_image(path: Path, rgb: np.ndarray, quality: int) -> None:
    """Write an RGB array as JPEG at `quality`, or losslessly as PNG, by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), bgr, params):
        raise WeedsegError(f"cannot write {path}")


def spread_subset(paths: list[Path], count: int) -> list[Path]:
    """`count` paths evenly spaced through `paths` (all of them when there are fewer)."""
    if count >= len(paths):
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_data(src: Path, dst: Path, short_side: int, quality: int, unlabeled: int, max_mb: float,
              test_short_side: int | None = None, original_splits: tuple[str, ...] = ()) -> str:
    """Build DST in SRC's layout, smaller: DST/peanut (every peanut photo downscaled, masks nearest-neighbour,
    same names, so the committed split applies) and DST/unlabeled (`unlabeled` photos spread evenly over
    SRC/unlabeled's folders), for `--data-root DST` and `pretrain --dataset peanut --images DST/unlabeled`.
    `test_short_side` shrinks the test split further: runs that are scored elsewhere need only its names.
    The photos and masks of `original_splits` are copied byte for byte, to score them on the GPU machine as here."""
    if dst.exists() and any(dst.iterdir()):
        raise WeedsegError(f"{dst} exists and is not empty; remove it or choose another folder")
    peanut = open_dataset("peanut", src)
    samples = [(s, name) for name, split in peanut.splits.items() for s in split]
    for sample, split in samples:
        if split in original_splits:
            for path, folder in [(sample.image, "images"), (sample.mask, "labels")]:
                (dst / "peanut" / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst / "peanut" / folder / path.name)
            continue
        side = test_short_side if split == "test" and test_short_side else short_side
        image = downscaled(read_rgb(sample.image), side)
        write_image(dst / "peanut" / "images" / sample.image.name, image, quality)
        write_image(dst / "peanut" / "labels" / sample.mask.with_suffix(".png").name,
                    downscaled(read_label_map(sample.mask), side, nearest=True), quality)
    groups = sorted(p for p in (src / "unlabeled").glob("*") if p.is_dir())
    if unlabeled and not groups:
        raise WeedsegError(f"{src / 'unlabeled'} holds no folders of photos; pass --unlabeled 0 to leave them out")
    copied = 0
    for k, group in enumerate(groups):
        share = unlabeled // len(groups) + (k < unlabeled % len(groups))
        for path in spread_subset(find_images(group), share):
            name = path.relative_to(group).with_suffix(".jpg")
            write_image(dst / "unlabeled" / group.name / name, downscaled(read_rgb(path), short_side), quality)
            copied += 1
    for readme, target in [(find_dataset_root("peanut", src) / "README.md", dst / "peanut" / "README.md"),
                           (src / "unlabeled" / "README.md", dst / "unlabeled" / "README.md")]:
        if readme.is_file() and target.parent.is_dir():
            shutil.copyfile(readme, target)  # sources, licences and attributions travel with the photos
    split_note = (f" The test photos and masks are only {test_short_side} px on the short side: score test on the "
                 "original photos." if test_short_side else "")
    if original_splits:
        split_note += f" The {' and '.join(original_splits)} photos and masks are the originals, unchanged."
    (dst / "README.md").write_text(
        "# Small copy of weedseg's field data for benchmarks/gpu_run.sh (git-ignored: never commit it)\n\n"
        f"Made by `benchmarks/gpu_run.sh --make-data {src} {dst} --short-side {short_side} --quality {quality} "
        f"--unlabeled {unlabeled}{f' --test-short-side {test_short_side}' if test_short_side else ''}"
        f"{' --original-splits ' + ' '.join(original_splits) if original_splits else ''}`.\n\n"
        f"- `peanut/`: the {len(samples)} peanut photos and masks (CC BY-SA 4.0, see peanut/README.md), short side "
        f"at most {short_side} px, JPEG quality {quality}, masks resized nearest-neighbour; same names, so the "
        f"committed split applies.{split_note}\n"
        f"- `unlabeled/`: {copied} photos for pretraining, short side at most {short_side} px (sources, licences "
        "and attribution in unlabeled/README.md).\n")
    mb = folder_bytes(dst) / 1e6
    if mb > max_mb:
        raise WeedsegError(f"{dst} holds {mb:.1f} MB, over --max-mb {max_mb:g}: remove it and make it again with "
                           "a lower --unlabeled, --short-side or --quality")
    return f"{dst}: {len(samples)} labelled peanut photos and {copied} unlabelled photos, {mb:.1f} MB"


# ---------------------------------------------------------------- how big each part of the run is

@dataclass(frozen=True)
class Assumed:
    """What the experiment's epochs are planned from: one H100 with the code of issue 11's report."""

    train_rate: float = 332.0  # images/s of `weedseg train --budget paper` (batch 8)
    pretrain_rate: float = 245.0  # images/s of `weedseg pretrain --method selective --budget paper` (batch 64)
    run_overhead: float = 20.0  # seconds per run beyond training: start, CUDA set-up, validation, test scoring
    parallel_gain: float = 2.0  # throughput of the runs that share the GPU at once, over one run alone


@dataclass(frozen=True)
class Setting:
    """The sizes of one run: FULL for one H100, TINY to test the whole command on a CPU."""

    seconds: float  # the whole run; stages are cut to fit
    smoke_seconds: float  # the smoke tests, both lanes together
    bench_seconds: float
    reserve_seconds: float  # kept for the report of an unfinished experiment, the summary and the tarball
    limits: dict[str, float]  # per smoke stage
    train: tuple[str, ...]  # flags of the smoke `train`
    torchrun: tuple[str, ...]  # flags of the `train` under torchrun
    pretrain: tuple[str, ...]
    export: tuple[str, ...]
    predict_images: int
    bench: tuple[str, ...]  # flags of benchmarks/training.py
    experiment: dict = field(default_factory=dict)  # ExperimentConfig fields
    experiment_epochs: tuple[int, int] | None = None  # (pretraining, fine-tuning); None: the most that fit


FULL = Setting(
    seconds=470, smoke_seconds=130, bench_seconds=100, reserve_seconds=40,
    limits={"train": 75, "export-int8": 75, "evaluate": 40, "predict": 40, "pretrain-selective": 75, "torchrun": 60},
    train=("--budget", "paper", "--epochs", "2", "--warmup-epochs", "1", "--train-fraction", "0.25"),
    torchrun=("--budget", "paper", "--epochs", "2", "--warmup-epochs", "1", "--train-fraction", "0.1"),
    pretrain=("--budget", "paper", "--epochs", "1", "--warmup-epochs", "1", "--partitions", "3", "--pictures", "1"),
    export=("--calibration-images", "16"),
    predict_images=8,
    bench=(),
    experiment={"model": "unet-resnet34", "budget": "paper", "seeds": 3, "fractions": (1.0, 0.1),
                "pretrain_batch_size": 64, "finetune_batch_size": 8, "evals_per_run": 5, "crop": 256,
                "pictures": 1, "jobs": 4},
)
TINY_MODEL = ("--model", "unet-resnet18-quarter", "--epochs", "1", "--warmup-epochs", "0", "--crop", "64",
              "--workers", "0")
TINY = Setting(
    seconds=900, smoke_seconds=400, bench_seconds=200, reserve_seconds=60,  # limits for a busy machine
    limits=dict.fromkeys(STAGES[:6], 200),
    train=(*TINY_MODEL, "--train-fraction", "0.05", "--batch-size", "4", "--eval-short-side", "64"),
    torchrun=(*TINY_MODEL, "--train-fraction", "0.05", "--batch-size", "4", "--eval-short-side", "64"),
    pretrain=(*TINY_MODEL, "--partitions", "2", "--batch-size", "4", "--score-short-side", "64", "--cells", "64",
              "--draws", "1", "--pictures", "1"),
    export=("--calibration-images", "4"),
    predict_images=4,
    bench=("--models", "unet-resnet18-quarter", "--steps", "2", "--batch", "8", "--size", "32"),
    experiment={"model": "unet-resnet18-quarter", "budget": "cpu", "seeds": 1, "fractions": (1.0,),
                "methods": ("random",), "pretrain_batch_size": 8, "finetune_batch_size": 8,
                "evals_per_run": 1, "crop": 64, "pictures": 1, "jobs": 2},
    experiment_epochs=(1, 1),
)


def with_epochs(cfg: ExperimentConfig, pretrain: int, finetune: int) -> ExperimentConfig:
    """`cfg` with these epochs and warm-ups of a tenth of them (at least one epoch)."""
    return replace(cfg, pretrain_epochs=pretrain, finetune_epochs=finetune,
                   pretrain_warmup_epochs=max(1, pretrain // 10), finetune_warmup_epochs=max(1, finetune // 10))


def experiment_estimate(cfg: ExperimentConfig, train_images: int, assumed: Assumed) -> float:
    """Seconds the experiment takes if runs go as `assumed`."""
    pretrained = [m for m in cfg.methods if m != "scratch"]
    pretrain_loads = sum(iterations * min(len(indices), cfg.pretrain_batch_size)
                         for method in pretrained
                         for indices, iterations in plan_steps(method, train_images, PretrainConfig().partitions,
                                                               cfg.pretrain_epochs, cfg.pretrain_batch_size))
    finetune_loads = 0
    for fraction in cfg.fractions:
        images = max(1, round(train_images * fraction))
        batch = cfg.finetune_batch_size
        per_epoch = images if images < batch else images // batch * batch  # full batches only
        finetune_loads += len(cfg.methods) * finetune_schedule(cfg, fraction)[0] * per_epoch
    runs = len(pretrained) + len(cfg.methods) * len(cfg.fractions)
    compute = pretrain_loads / assumed.pretrain_rate + finetune_loads / assumed.train_rate
    return cfg.seeds * (runs * assumed.run_overhead / max(1, cfg.jobs) + compute / assumed.parallel_gain)


def fit_epochs(cfg: ExperimentConfig, train_images: int, seconds: float, assumed: Assumed) -> ExperimentConfig:
    """`cfg` with the most epochs (the same number for each selective step and for fine-tuning with all
    labels) whose estimate fits in `seconds`; at least one."""
    epochs = 1
    while epochs < 1000 and experiment_estimate(with_epochs(cfg, epochs + 1, epochs + 1), train_images,
                                                assumed) <= seconds:
        epochs += 1
    return with_epochs(cfg, epochs, epochs)


def describe_plan(cfg: ExperimentConfig, train_images: int, estimate: float | None, seconds: float) -> str:
    """The experiment's plan in one paragraph: model, seeds, iterations, runs and time."""
    pretrained = [m for m in cfg.methods if m != "scratch"]
    steps = plan_steps("selective", train_images, PretrainConfig().partitions, cfg.pretrain_epochs,
                       cfg.pretrain_batch_size)
    finetune = "; ".join(f"{100 * f:g} % of the labels: {finetune_schedule(cfg, f)[0]} epochs "
                         f"(warm-up {finetune_schedule(cfg, f)[1]})" for f in cfg.fractions)
    runs = cfg.seeds * (len(pretrained) + len(cfg.methods) * len(cfg.fractions))
    timing = f"estimated {estimate:.0f} s" if estimate is not None else "epochs fixed"
    return (f"experiment: {cfg.model}, {cfg.seeds} paired seed(s) x {', '.join(cfg.methods)}; pretraining on the "
            f"{train_images} peanut training photos only: "
            f"{cfg.pretrain_epochs} epochs per selective step (warm-up {cfg.pretrain_warmup_epochs}) = "
            f"{sum(it for _, it in steps)} iterations of batch {cfg.pretrain_batch_size}, random masking the same "
            f"iterations; fine-tuning at batch {cfg.finetune_batch_size}, {finetune}; {runs} runs, {cfg.jobs} at a "
            f"time; {timing}, {seconds:.0f} s allotted")


# ---------------------------------------------------------------- stages

@dataclass
class Stage:
    """One command with a time limit, the text its log must hold to pass, and the stage it needs first."""

    name: str
    command: list[str]
    seconds: float
    expect: tuple[str, ...] = ()
    needs: str | None = None
    skip: bool = False  # left out on request (--skip)


@dataclass
class Outcome:
    """How a stage went."""

    name: str
    status: str  # ok, failed, timed out, skipped
    seconds: float
    note: str  # the log line that shows what ran, or why it did not pass


# The stage processes running now. Each leads its own process group in its own session (so that a stage past
# its limit is stopped with everything it started), which also keeps the terminal's Ctrl-C from reaching it:
# gpu_run stops them itself when it is interrupted (RUNNING.stop(): Ctrl-C, then a kill after 20 s).
RUNNING = ChildProcesses(grace=20.0, own_groups=True)


def log_lines(text: str) -> list[str]:
    """A log's lines, progress-bar redraws split apart, blanks dropped."""
    return [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]


def run_stage(stage: Stage, logs: Path, deadline: float, env: dict[str, str]) -> Outcome:
    """Run a stage's command (its own process group) until it ends or its limit or the deadline passes. A Ctrl-C
    (or SIGTERM, see sigterm_as_ctrl_c) while it waits in the main thread stops every running stage (RUNNING.stop())
    and returns 'interrupted': the caller ends the run."""
    if stage.skip:
        return Outcome(stage.name, "skipped", 0.0, SKIPPED)
    if RUNNING.stopping.is_set():
        return Outcome(stage.name, "skipped", 0.0, INTERRUPTED)
    limit = min(stage.seconds, deadline - time.monotonic())
    if limit < MIN_STAGE_SECONDS:
        return Outcome(stage.name, "skipped", 0.0, "no time left")
    log = logs / f"{stage.name}.log"
    start = time.monotonic()
    with log.open("w") as f:
        f.write(f"$ {shlex.join(stage.command)}\n")
        f.flush()
        proc = RUNNING.start(stage.command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                            env=env)
        if proc is None:  # stopped since the check above
            return Outcome(stage.name, "skipped", 0.0, INTERRUPTED)
        try:
            code = RUNNING.wait(proc, timeout=limit)
        except KeyboardInterrupt:
            RUNNING.stop()
            code = proc.wait()
    seconds = time.monotonic() - start
    lines = log_lines(log.read_text(errors="replace"))
    if code and RUNNING.stopping.is_set():
        return Outcome(stage.name, "interrupted", seconds, f"{INTERRUPTED} after {seconds:.0f} s; last line: "
                                                           f"{lines[-1][:200]}")
    if code is None:
        return Outcome(stage.name, "timed out", seconds, f"stopped after {limit:.0f} s; last line: {lines[-1][:200]}")
    if code:
        return Outcome(stage.name, "failed", seconds, f"exit status {code}: {lines[-1][:200]}")
    missing = [e for e in stage.expect if not any(e in line for line in lines)]
    if missing:
        return Outcome(stage.name, "failed", seconds, f"its log lacks {missing[0]!r}")
    shown = [line for line in lines if stage.expect and stage.expect[0] in line] or lines[-1:]
    return Outcome(stage.name, "ok", seconds, shown[-1][:240])


def run_lane(stages: list[Stage], logs: Path, deadline: float, env: dict[str, str]) -> list[Outcome]:
    """Run stages one after another; one whose needed stage did not pass is skipped (left out with --skip, as
    that stage was)."""
    outcomes: dict[str, Outcome] = {}
    for stage in stages:
        need = outcomes.get(stage.needs) if stage.needs else None
        if RUNNING.stopping.is_set():
            outcomes[stage.name] = Outcome(stage.name, "skipped", 0.0, INTERRUPTED)
        elif need is not None and need.note == SKIPPED:
            outcomes[stage.name] = Outcome(stage.name, "skipped", 0.0, SKIPPED)
        elif need is not None and need.status != "ok":
            outcomes[stage.name] = Outcome(stage.name, "skipped", 0.0, f"needs {stage.needs}, which did not pass")
        else:
            outcomes[stage.name] = run_stage(stage, logs, deadline, env)
    return list(outcomes.values())


def smoke_lanes(s: Setting, data_root: Path, work: Path, device: str) -> list[list[Stage]]:
    """The smoke tests in two lanes that run side by side: train -> export --int8 -> predict, and
    pretrain -> torchrun train -> evaluate (of the torchrun model)."""
    cli = [sys.executable, "-m", "weedseg.cli"]
    data = ["--dataset", "peanut", "--data-root", str(data_root)]
    smoke = work / "smoke"
    best, onnx, ddp_best = smoke / "train" / "best.pt", smoke / "model.onnx", smoke / "torchrun" / "best.pt"
    trained = ("device cuda with bfloat16 mixed precision",) if device == "cuda" else ("device cpu",)
    predict_in = smoke / "predict-input"
    predict_in.mkdir(parents=True)
    for sample in open_dataset("peanut", data_root).splits["test"][: s.predict_images]:
        shutil.copyfile(sample.image, predict_in / sample.image.name)
    return [
        [Stage("train", [*cli, "train", *data, *s.train, "--device", device, "--out", str(best.parent)],
               s.limits["train"], (*trained, "best validation mIoU")),
         Stage("export-int8", [*cli, "export", str(best), "--out", str(onnx), "--int8", *data, *s.export],
               s.limits["export-int8"], ("INT8 model",), needs="train"),
         Stage("predict", [*cli, "predict", str(predict_in), "--model", str(onnx), "--out", str(smoke / "predict")],
               s.limits["predict"], (" 0 failed",), needs="export-int8")],
        [Stage("pretrain-selective", [*cli, "pretrain", "--method", "selective", *data, "--images",
                                      str(data_root / "unlabeled"), *s.pretrain, "--device", device,
                                      "--out", str(smoke / "pretrain")],
               s.limits["pretrain-selective"], ("scored", f"device {device}")),
         Stage("torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                            "-m", "weedseg.cli", "train", *data, *s.torchrun, "--device", device,
                            "--out", str(ddp_best.parent)], s.limits["torchrun"], trained),
         Stage("evaluate", [*cli, "evaluate", str(ddp_best), *data, "--split", "test", "--device", device,
                            "--out", str(smoke / "test.json")], s.limits["evaluate"], ("mIoU",), needs="torchrun")],
    ]


# ---------------------------------------------------------------- GPU utilisation

def start_gpu_monitor(path: Path) -> subprocess.Popen | None:
    """nvidia-smi writing GPU utilisation and memory once a second to `path` (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    with path.open("w") as f:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                 "--format=csv,noheader,nounits", "-lms", "1000"],
                                stdout=f, stderr=subprocess.DEVNULL)


def gpu_use(path: Path, start: datetime, end: datetime) -> tuple[float, float] | None:
    """(mean utilisation in %, peak memory in MiB) of the nvidia-smi samples between start and end."""
    samples = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = [p.strip() for p in line.split(",")]
        try:
            when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
            samples.append((when, float(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            continue  # a line cut short when the monitor stopped
    inside = [(u, m) for when, u, m in samples if start <= when <= end]
    if not inside:
        return None
    return sum(u for u, _ in inside) / len(inside), max(m for _, m in inside)


# ---------------------------------------------------------------- summary and tarball

def machine_lines(device: str) -> list[str]:
    """What ran the stages: GPU, torch, CUDA, CPU, commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:  # no git on the machine
        commit = ""
    gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if device == "cuda" else "none (CPU run)"
    return [f"- GPU: {gpu}", f"- torch {torch.__version__}; CPU: {cpu_name()}, {os.cpu_count()} logical cores",
            f"- weedseg commit: {commit or 'unknown'}"]


def stage_table(outcomes: list[Outcome]) -> list[str]:
    rows = ["| stage | result | seconds | what the log shows |", "|---|---|---|---|"]
    return rows + [f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.note.replace('|', '/')} |" for o in outcomes]


def demoted(markdown: str) -> list[str]:
    """Markdown with every heading two levels down, to sit under this summary's headings."""
    return [f"##{line}" if line.startswith("#") else line for line in markdown.splitlines()]


def write_tarball(work: Path, path: Path) -> int:
    """Pack the work folder's logs, JSON, tables and charts (no checkpoints, nothing over 16 MiB); returns files."""
    count = 0
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(work.rglob("*")):
            keep = file.suffix in KEPT_SUFFIXES or file.name == "results.png"
            if file.is_file() and keep and file.stat().st_size <= MAX_KEPT_BYTES:
                tar.add(file, arcname=str(Path("gpu_run") / file.relative_to(work)))
                count += 1
    return count


# ---------------------------------------------------------------- the run

def prepare_work(work: Path, out: Path) -> None:
    """An empty work folder (a previous gpu_run's is replaced; any other non-empty folder is refused)."""
    if out.resolve().is_relative_to(work.resolve()):
        raise WeedsegError(f"--out {out} must not lie inside --work {work} (the work folder is emptied first)")
    if work.exists() and any(work.iterdir()) and not (work / "gpu_run.json").is_file():
        raise WeedsegError(f"--work {work} holds files gpu_run did not write; choose another folder")
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)


def plan_experiment(s: Setting, args: argparse.Namespace, data_root: Path, work: Path, device: str,
                    train_images: int) -> tuple[ExperimentConfig, str]:
    """The experiment's config (epochs fixed, or the most that fit its share of the time) and its plan in words."""
    allotted = s.seconds - s.smoke_seconds - s.bench_seconds - s.reserve_seconds
    cfg = ExperimentConfig(dataset="peanut", data_root=str(data_root), out=str(work / "experiment"), device=device,
                           **s.experiment)
    epochs = args.experiment_epochs or s.experiment_epochs
    if epochs:
        cfg = with_epochs(cfg, *epochs)
        return cfg, describe_plan(cfg, train_images, None, allotted)
    cfg = fit_epochs(cfg, train_images, allotted, Assumed())
    estimate = experiment_estimate(cfg, train_images, Assumed())
    return cfg, describe_plan(cfg, train_images, estimate, allotted) + f" (assumed: {asdict(Assumed())})"


def run_stages(s: Setting, args: argparse.Namespace, data_root: Path, work: Path, device: str, config: Path,
               t0: float, outcomes: list[Outcome], phases: list[tuple[str, datetime, datetime]]) -> None:
    """Smoke tests (two lanes side by side), throughput, then the experiment; appends each outcome and when each
    phase ran as they come, so a run stopped part way still reports them."""
    logs, deadline = work / "logs", t0 + s.seconds - s.reserve_seconds
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "10"}
    lanes = smoke_lanes(s, data_root, work, device)
    bench = Stage("throughput", [sys.executable, str(REPO / "benchmarks" / "training.py"), "--devices", device,
                                 "--data-root", str(data_root), "--json", str(work / "training.json"), *s.bench],
                  s.bench_seconds, ("| device | model |",))
    experiment = Stage("experiment", [sys.executable, __file__, "--run-experiment", str(config)], s.seconds,
                       ("results:",))
    for stage in [*(stage for lane in lanes for stage in lane), bench, experiment]:
        stage.skip = stage.name in args.skip

    def here(stage: Stage, until: float) -> None:
        """Run a stage in this thread, where a Ctrl-C lands, and report it; one that was interrupted ends the run."""
        outcomes.append(run_stage(stage, logs, until, env))
        print(stage_table(outcomes)[-1], flush=True)
        if RUNNING.stopping.is_set():
            raise KeyboardInterrupt

    begin, smoke_deadline = datetime.now(), min(deadline, time.monotonic() + s.smoke_seconds)
    with ThreadPoolExecutor(len(lanes)) as pool:
        running = [pool.submit(run_lane, lane, logs, smoke_deadline, env) for lane in lanes]
        try:
            wait(running)
        except KeyboardInterrupt:  # the lanes' stages are stopped first: leaving the block waits for the lanes
            RUNNING.stop()
            raise
        finally:  # what the lanes did is reported, also when interrupted
            outcomes += [o for lane in running for o in lane.result()]
    phases.append(("smoke tests", begin, datetime.now()))
    print("\n".join(stage_table(outcomes)), flush=True)

    begin = datetime.now()
    here(bench, deadline)
    phases.append(("throughput", begin, datetime.now()))

    begin = datetime.now()
    here(experiment, deadline)
    phases.append(("experiment", begin, datetime.now()))
    if outcomes[-1].status == "timed out":  # the tables of the runs that finished
        here(Stage("experiment-report", [*experiment.command, "--report-only"], s.reserve_seconds, ("results:",)),
             t0 + s.seconds)


def write_summary(path: Path, args: argparse.Namespace, device: str, started: datetime, t0: float, s: Setting,
                  outcomes: list[Outcome], phases: list[tuple[str, datetime, datetime]], plan: str, work: Path) -> None:
    """summary.md: machine, stages, GPU use, the throughput table and the experiment's tables."""
    logs = work / "logs"
    lines = [f"# weedseg gpu_run{' --tiny' if args.tiny else ''}, {started:%Y-%m-%d %H:%M}", "",
             *machine_lines(device), f"- command: `{shlex.join(sys.argv)}`",
             f"- took {time.monotonic() - t0:.0f} s of at most {s.seconds:.0f} s", "",
             "## Stages (smoke tests of every CUDA path, throughput, experiment)", "", *stage_table(outcomes), ""]
    use = [(name, gpu_use(logs / "gpu.csv", a, b)) for name, a, b in phases]
    if any(u for _, u in use):
        lines += ["GPU use (nvidia-smi, one sample a second): " + "; ".join(
            f"{name} {u[0]:.0f} % busy, peak {u[1]:.0f} MiB" for name, u in use if u), ""]
    bench_log = logs / "throughput.log"
    table = [line for line in log_lines(bench_log.read_text()) if line.startswith("|")] if bench_log.is_file() else []
    lines += ["## Throughput (benchmarks/training.py)", "", *(table or ["no table (see the throughput stage)"]), ""]
    results = work / "experiment" / "results.md"
    lines += ["## Experiment", "", plan, "",
              *(demoted(results.read_text()) if results.is_file() else ["no results (see the experiment stage)"])]
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    """The whole run; returns 0 when every stage passed (or was left out with --skip), 1 otherwise; the
    summary is written either way. On Ctrl-C or SIGTERM the running stages are stopped, the summary is written
    and KeyboardInterrupt goes on up (main returns 130)."""
    s = TINY if args.tiny else FULL
    if args.skip - set(STAGES):
        raise WeedsegError(f"--skip takes stage names ({', '.join(STAGES)}), got {', '.join(sorted(args.skip))}")
    started, t0 = datetime.now(), time.monotonic()
    data_root, work, out = (Path(p).resolve() for p in (args.data_root, args.work, args.out))  # stages run in REPO
    train_images = len(open_dataset("peanut", data_root).splits["train"])
    if not (data_root / "unlabeled").is_dir():
        raise WeedsegError(f"{data_root}/unlabeled not found: make the data folder with --make-data SRC {data_root}")
    prepare_work(work, out)
    out.mkdir(parents=True, exist_ok=True)
    (work / "gpu_run.json").write_text(json.dumps({"argv": sys.argv, "tiny": args.tiny, "started": str(started)}))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, plan = plan_experiment(s, args, data_root, work, device, train_images)
    config = work / "experiment-config.json"
    config.write_text(json.dumps(asdict(cfg), indent=2))
    print(f"gpu_run {'--tiny ' if args.tiny else ''}on {device}: at most {s.seconds:.0f} s; logs in {work / 'logs'}\n"
          f"{plan}", flush=True)

    outcomes: list[Outcome] = []
    phases: list[tuple[str, datetime, datetime]] = []
    monitor = start_gpu_monitor(work / "logs" / "gpu.csv")
    RUNNING.reset()
    try:
        with sigterm_as_ctrl_c():
            run_stages(s, args, data_root, work, device, config, t0, outcomes, phases)
    except KeyboardInterrupt:
        RUNNING.stop()  # any still running (run_stage and run_stages stop them where the interrupt lands)
        raise
    finally:  # what ran is reported even when the run stops part way (Ctrl-C, SIGTERM, an error)
        RUNNING.reset()  # every stage has ended: a later run in this process starts afresh
        if monitor is not None:
            monitor.terminate()
            monitor.wait()
        write_summary(work / "summary.md", args, device, started, t0, s, outcomes, phases, plan, work)
        shutil.copyfile(work / "summary.md", out / "summary.md")
        files = write_tarball(work, out / "gpu_run.tar.gz")
        print(f"\nsummary: {out / 'summary.md'}\nlogs and results: {out / 'gpu_run.tar.gz'} ({files} files)")
    passed = [o.status == "ok" or o.note == SKIPPED for o in outcomes if o.name != "experiment-report"]
    return 0 if all(passed) else 1


def run_experiment_from(path: Path, report_only: bool) -> None:
    """The experiment stage: run_experiment on the config gpu_run wrote (it sets warm-ups the CLI does not take)."""
    values = json.loads(path.read_text())
    values.update(methods=tuple(values["methods"]), fractions=tuple(values["fractions"]))
    run_experiment(ExperimentConfig(**values), report_only=report_only)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--make-data", nargs=2, metavar=("SRC", "DST"),
                        help="build the small data folder DST from SRC (the folder holding peanut/ and unlabeled/)")
    parser.add_argument("--short-side", type=int, default=384, help="--make-data: short side of the photos (px)")
    parser.add_argument("--quality", type=int, default=75, help="--make-data: JPEG quality")
    parser.add_argument("--unlabeled", type=int, default=400, help="--make-data: unlabelled photos for pretraining")
    parser.add_argument("--test-short-side", type=int,
                        help="--make-data: shrink the test split's photos to this short side, to save room when test "
                             "is scored on the original photos elsewhere (default: --short-side)")
    parser.add_argument("--original-splits", nargs="+", default=(), choices=("train", "val", "test"),
                        metavar="SPLIT", help="--make-data: copy these splits' photos and masks unchanged (e.g. val "
                                              "test: scored at full resolution on the GPU machine as on the originals)")
    parser.add_argument("--max-mb", type=float, default=45,
                        help="--make-data: refuse a larger folder (the GPU machine takes 64 MiB with the checkout)")
    parser.add_argument("--data-root", default="gpu_data", help="the folder --make-data built")
    parser.add_argument("--out", default="runs/gpu-run-out", help="folder for summary.md and gpu_run.tar.gz")
    parser.add_argument("--work", default="runs/gpu-run", help="working folder (emptied first)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few iterations: tests it on a CPU")
    parser.add_argument("--experiment-epochs", type=int, nargs=2, metavar=("PRETRAIN", "FINETUNE"),
                        help="fix the experiment's epochs (default: the most that fit)")
    parser.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(), metavar="STAGE[,STAGE]",
                        help="leave stages out: " + ", ".join(STAGES))
    parser.add_argument("--run-experiment", metavar="CONFIG", help=argparse.SUPPRESS)  # the experiment stage
    parser.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.run_experiment:
            run_experiment_from(Path(args.run_experiment), args.report_only)
            return 0
        if args.make_data:
            print(make_data(Path(args.make_data[0]), Path(args.make_data[1]), args.short_side, args.quality,
                            args.unlabeled, args.max_mb, args.test_short_side, tuple(args.original_splits)))
            return 0
        return run(args)
    except WeedsegError as exc:
        print(f"gpu_run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu_run: interrupted: the running stages were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
