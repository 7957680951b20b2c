"""The experiment's settings and its runs: which pretraining and fine-tuning jobs, with which commands.

Every job is one `weedseg pretrain` or `weedseg train` (+ `weedseg evaluate` on the test split)
command in its own folder under the experiment folder:

    OUT/pretrain/<method>-seed<k>/                 weedseg pretrain (random or selective masking)
    OUT/finetune/labels-<pct>/<method>-seed<k>/    weedseg train (+ test.json from weedseg evaluate)

Seed k is shared by every method: pretraining of seed k uses seed k, and its fine-tuning uses seed
k, so the runs of one seed see the same data order, augmentation and head initialisation.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import WeedsegError

METHODS = ("scratch", "random", "selective")  # scratch: no pretraining; else the pretraining masking


@dataclass
class ExperimentConfig:
    """What the experiment runs. Presets in PRESETS fill these; flags override them."""

    dataset: str = "peanut"
    data_root: str | None = None
    out: str = "runs/experiment-peanut-cpu"
    budget: str = "cpu"  # the pretrain / train preset the runs start from (loss, learning rate, ...)
    model: str = "unet-resnet18-quarter"
    seeds: int = 5
    methods: tuple[str, ...] = METHODS
    fractions: tuple[float, ...] = (1.0, 0.25, 0.1)  # of the labelled training images
    pretrain_images: tuple[str, ...] = ()  # unlabelled image folders pooled with the dataset's train images
    pretrain_epochs: int = 40  # E per selective step; random masking trains as many iterations
    pretrain_warmup_epochs: int = 4
    pretrain_batch_size: int = 8
    finetune_epochs: int = 40  # with all labels; a fraction f trains round(epochs / sqrt(f)) epochs
    finetune_warmup_epochs: int = 4  # scaled like the epochs
    finetune_batch_size: int = 8
    evals_per_run: int = 20  # validation passes per fine-tuning run (the best one is kept)
    crop: int = 256
    mask_ratio: float = 0.5  # pretraining: fraction of the cells masked
    cells: int = 512  # pretraining: about sqrt(cells) cells along the short side (12 px cells at 256 px)
    init_head: bool = False  # fine-tuning: also copy the pretrained head (default: re-initialise it)
    pictures: int = 2  # pretraining pictures per step
    jobs: int = 0  # runs at once; 0: one per CPU core (up to 8) on a CPU, one on a GPU
    device: str = "auto"


PRESETS: dict[str, dict] = {
    # about 2 hours on 2 CPU cores (docs/research/results.md)
    "cpu": {"model": "unet-resnet18-quarter", "pretrain_epochs": 40, "pretrain_batch_size": 8,
            "finetune_epochs": 40, "finetune_batch_size": 8, "pretrain_warmup_epochs": 4,
            "finetune_warmup_epochs": 4},
    # the paper's budgets, for a GPU
    "paper": {"model": "unet-resnet34", "pretrain_epochs": 1000, "pretrain_batch_size": 64,
              "finetune_epochs": 500, "finetune_batch_size": 8, "pretrain_warmup_epochs": 10,
              "finetune_warmup_epochs": 10},
}

# settings that may change between invocations on the same folder (they add or leave out runs)
MAY_CHANGE = {"seeds", "methods", "fractions", "jobs", "device", "data_root", "out"}


@dataclass
class Job:
    """One run: its commands (run in order), the file that says it is done, and the jobs it needs first."""

    name: str
    folder: Path
    commands: list[list[str]]
    done_file: Path
    needs: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.done_file.is_file()

    @property
    def log(self) -> Path:
        return self.folder / "job.log"


def fraction_tag(fraction: float) -> str:
    """Folder name of a label fraction: labels-100, labels-25, labels-10."""
    return f"labels-{100 * fraction:g}"


def finetune_schedule(cfg: ExperimentConfig, fraction: float) -> tuple[int, int, int]:
    """(epochs, warm-up epochs, validate every) for a label fraction.

    Fewer labels mean shorter epochs, so epochs grow as 1 / sqrt(fraction): 10 % of the labels
    trains 3.2x the epochs, i.e. 32 % of the iterations of a full-label run.
    """
    scale = 1 / math.sqrt(fraction)
    epochs = max(1, round(cfg.finetune_epochs * scale))
    warmup = min(epochs - 1, round(cfg.finetune_warmup_epochs * scale))
    return epochs, max(0, warmup), max(1, epochs // max(1, cfg.evals_per_run))


def weedseg_command(*args: str) -> list[str]:
    """A weedseg command line run with this Python (works without the console script on PATH)."""
    return [sys.executable, "-m", "weedseg.cli", *args]


def start_or_resume(cmd: list[str], folder: Path, cfg: ExperimentConfig) -> list[str]:
    """`cmd` started afresh, or, when `folder` holds an unfinished run, the same command resumed (a resumed
    run keeps the settings it was started with, so only --out and --device are passed)."""
    if (folder / "last.pt").is_file():
        return weedseg_command(cmd[3], "--resume", "--out", str(folder), "--device", cfg.device)
    return [*cmd, "--overwrite"]


def data_args(cfg: ExperimentConfig) -> list[str]:
    return ["--dataset", cfg.dataset] + (["--data-root", cfg.data_root] if cfg.data_root else [])


def pretrain_pool_args(cfg: ExperimentConfig) -> list[str]:
    """The extra unlabelled folders pretraining pools with the dataset's train split (`weedseg pretrain --images`)."""
    return ["--images", *cfg.pretrain_images] if cfg.pretrain_images else []


def pretrain_job(cfg: ExperimentConfig, method: str, seed: int) -> Job:
    folder = Path(cfg.out) / "pretrain" / f"{method}-seed{seed}"
    cmd = weedseg_command(
        "pretrain", "--method", method, *data_args(cfg), *pretrain_pool_args(cfg), "--budget", cfg.budget,
        "--model", cfg.model,
        "--epochs", str(cfg.pretrain_epochs), "--warmup-epochs", str(cfg.pretrain_warmup_epochs),
        "--batch-size", str(cfg.pretrain_batch_size), "--crop", str(cfg.crop), "--seed", str(seed),
        "--mask-ratio", str(cfg.mask_ratio), "--cells", str(cfg.cells),
        "--pictures", str(cfg.pictures), "--device", cfg.device, "--out", str(folder))
    return Job(f"pretrain {method} seed {seed}", folder, [start_or_resume(cmd, folder, cfg)], folder / "final.pt")


def finetune_folder(cfg: ExperimentConfig, method: str, seed: int, fraction: float) -> Path:
    """The run folder of one fine-tuning run."""
    return Path(cfg.out) / "finetune" / fraction_tag(fraction) / f"{method}-seed{seed}"


def finetune_job(cfg: ExperimentConfig, method: str, seed: int, fraction: float) -> Job:
    folder = finetune_folder(cfg, method, seed, fraction)
    epochs, warmup, every = finetune_schedule(cfg, fraction)
    train = weedseg_command(
        "train", *data_args(cfg), "--budget", cfg.budget, "--model", cfg.model, "--epochs", str(epochs),
        "--warmup-epochs", str(warmup), "--batch-size", str(cfg.finetune_batch_size), "--crop", str(cfg.crop),
        "--eval-every", str(every), "--train-fraction", str(fraction), "--seed", str(seed),
        "--device", cfg.device, "--out", str(folder))
    needs = []
    if method == "scratch":
        train += ["--init", "scratch"]
    else:
        pre = pretrain_job(cfg, method, seed)
        train += ["--init", str(pre.done_file)] + (["--init-head"] if cfg.init_head else [])
        needs.append(pre.name)
    train = start_or_resume(train, folder, cfg)
    test = weedseg_command("evaluate", str(folder / "best.pt"), *data_args(cfg), "--split", "test",
                           "--device", cfg.device, "--out", str(folder / "test.json"))
    return Job(f"fine-tune {method} seed {seed} {fraction_tag(fraction)}", folder, [train, test],
               folder / "test.json", needs)


def plan_jobs(cfg: ExperimentConfig) -> list[Job]:
    """Every job of the experiment, in the order they should run: seed by seed its pretraining and
    its fine-tuning with the largest label fraction (so a partial experiment already holds complete
    pairs), then the smaller fractions."""
    pretrained = [m for m in cfg.methods if m != "scratch"]
    fractions = sorted(cfg.fractions, reverse=True)
    jobs = []
    for s in range(cfg.seeds):
        jobs += [pretrain_job(cfg, m, s) for m in pretrained]
        jobs += [finetune_job(cfg, m, s, fractions[0]) for m in cfg.methods]
    for fraction in fractions[1:]:
        jobs += [finetune_job(cfg, m, s, fraction) for s in range(cfg.seeds) for m in cfg.methods]
    return jobs


def check_config(cfg: ExperimentConfig) -> None:
    """Refuse settings that cannot run, and a folder that holds an experiment with other training settings."""
    unknown = set(cfg.methods) - set(METHODS)
    if unknown or not cfg.methods:
        raise WeedsegError(f"--methods takes some of {', '.join(METHODS)}, got {', '.join(cfg.methods) or 'none'}")
    if cfg.seeds < 1 or not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions):
        raise WeedsegError("need at least 1 seed and label fractions in (0, 1]")
    if cfg.jobs < 0:
        raise WeedsegError(f"--jobs must be 0 (automatic) or more, got {cfg.jobs}")
    missing = [f for f in cfg.pretrain_images if not Path(f).is_dir()]
    if missing:
        raise WeedsegError(f"--pretrain-images: no folder {', '.join(missing)}")
    saved = Path(cfg.out) / "experiment.json"
    if saved.is_file():
        now = json.loads(json.dumps(asdict(cfg)))
        before = {**json.loads(json.dumps(asdict(ExperimentConfig()))), **json.loads(saved.read_text())}
        changed = sorted(k for k in now if k not in MAY_CHANGE and before[k] != now[k])
        if changed:
            raise WeedsegError(
                f"{cfg.out} holds an experiment with other settings ({', '.join(f'{k}: {before.get(k)} -> {now[k]}' for k in changed)}); "
                "its finished runs would not be comparable. Choose another --out, or pass the same settings to "
                "continue it")


def default_jobs(device: str) -> int:
    """Runs at once: one per CPU core (each with one thread; up to 8) on a CPU, one on a GPU."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(8, os.cpu_count() or 1))
