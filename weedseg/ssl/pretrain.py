"""Self-supervised pretraining by masked image reconstruction: selective masking or random masking.

Selective masking (Wang & Stavness; see docs/research/pretraining.md), with P interleaved partitions
(partition k = images[k::P]):
  step 0 trains on partition 0 with random masks, from random initialisation;
  step k >= 1 scores partition k with the step k-1 model (S random masks per image, per-cell loss
  averaged over the draws), masks the highest-loss cells for the whole step, and continues
  training from the step k-1 weights with a fresh optimiser and warm-up.
Random masking: one run over all images, a fresh random mask per load, for exactly as many
iterations as selective masking would take (budget parity).

Run folder: step<k>/model.pt (reconstruction checkpoint), step<k>/masks.json (chosen cells and
scores), step<k>/pictures/*.png, log.jsonl, last.pt (resume point), final.pt, summary.json.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import WeedsegError, distributed
from ..checkpoint import model_metadata, save_checkpoint
from ..data import SeededSampler, TrainAugment, channel_stats, open_dataset
from ..data.transforms import normalize, resize_short_side
from ..data.io import find_images
from ..data.unlabeled import UnlabeledImages, open_images
from ..models import count_parameters, create_model
from ..runtime import channels_last, make_loader, mixed_precision, open_run, to_device, truncate_log, warmup_cosine
from .losses import ReconstructionLoss
from .masking import Grid, MaskedImages, apply_mask, make_grid, random_cell_mask, top_cells
from .pictures import heat_map, save_panel, to_rgb

METHODS = ("selective", "random")
RGB, RGB_COLORS = ["red", "green", "blue"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Presets in PRESETS fill these; flags override them."""

    method: str = "selective"
    dataset: str | None = None  # this labelled dataset's TRAIN split images (never its val or test) ...
    images: list[str] | None = None  # ... and/or folders of unlabeled images
    data_root: str | None = None
    out: str = "runs/pretrain"
    model: str = "unet-resnet18-quarter"
    epochs: int = 120  # E: epochs per selective step (over its partition); random: same iterations
    batch_size: int = 8  # global, split over processes
    crop: int = 256
    lr: float = 3e-3
    warmup_epochs: int = 10
    min_lr_ratio: float = 0.01
    partitions: int = 10  # P
    draws: int = 5  # S: random masks per image when scoring
    mask_ratio: float = 0.5
    cells: int = 512  # about sqrt(cells) cells along the short side
    loss: str = "l1+ssim"  # the paper's l1+msssim costs 3x the compact model on a CPU (see losses.py)
    score_short_side: int = 256
    score_batch: int = 8  # images per scoring forward pass (each with `draws` masks)
    pictures: int = 4
    save_every: int = 100  # iterations between resume points (taken at epoch ends)
    seed: int = 0
    workers: int = -1
    device: str = "auto"
    amp: bool = True


PRESETS: dict[str, dict] = {
    # about 15 minutes on 2 CPU cores for the 280 peanut training images (docs/research/pretraining.md);
    # single-scale 3x3 SSIM as in the reference code's selective runs
    "cpu": {"model": "unet-resnet18-quarter", "epochs": 120, "batch_size": 8, "warmup_epochs": 10, "loss": "l1+ssim"},
    # the paper's budget and loss, for GPUs
    "paper": {"model": "unet-resnet34", "epochs": 1000, "batch_size": 64, "warmup_epochs": 10, "loss": "l1+msssim"},
}


def batches_per_epoch(num_images: int, batch_size: int, world: int = 1) -> int:
    """Iterations per epoch: full global batches (one short batch when the images are fewer)."""
    shard, per_process = math.ceil(num_images / world), batch_size // world
    return shard // per_process if shard >= per_process else 1


def plan_steps(method: str, num_images: int, partitions: int, epochs: int, batch_size: int,
               world: int = 1) -> list[tuple[list[int], int]]:
    """(image indices, iterations) per step. Random masking gets the selective total in one step."""
    parts = [list(range(k, num_images, partitions)) for k in range(partitions)]
    if min(map(len, parts)) == 0:
        raise WeedsegError(f"{num_images} images cannot fill {partitions} partitions; lower --partitions")
    steps = [(p, epochs * batches_per_epoch(len(p), batch_size, world)) for p in parts]
    return steps if method == "selective" else [(list(range(num_images)), sum(it for _, it in steps))]


@torch.no_grad()
def score_cells(model: nn.Module, images: UnlabeledImages, indices: list[int], cfg: PretrainConfig, step: int,
                mean: list[float], std: list[float], device: torch.device) -> dict[int, tuple[Grid, np.ndarray]]:
    """Per-cell loss of each image (resized to cfg.score_short_side), averaged over cfg.draws random masks.

    Masks are seeded by (seed, step, image index) only, so any split over processes gives the same result.
    """
    model = distributed.unwrap(model)
    was_training = model.training
    model.eval()
    criterion = ReconstructionLoss(cfg.loss, mean, std).to(device)
    result = {}
    for start in range(0, len(indices), cfg.score_batch):
        by_shape: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for i in indices[start : start + cfg.score_batch]:
            view = normalize(resize_short_side(images.load(i), cfg.score_short_side), mean, std)
            by_shape.setdefault(tuple(view.shape), []).append((i, view))
        for (_, h, w), items in by_shape.items():
            grid = make_grid(h, w, cfg.cells)
            draws = [np.random.default_rng([cfg.seed, step, i]) for i, _ in items]
            pixels = np.stack([[grid.expand(random_cell_mask(grid.num_cells, cfg.mask_ratio, rng))
                                for _ in range(cfg.draws)] for rng in draws])
            targets = torch.stack([v for _, v in items]).unsqueeze(1).expand(-1, cfg.draws, -1, -1, -1)
            inputs = apply_mask(targets, torch.from_numpy(pixels)).flatten(0, 1).to(device)
            pred = model(inputs)
            loss = criterion.per_cell(pred, targets.flatten(0, 1).to(device), torch.from_numpy(grid.labels()),
                                      grid.num_cells)
            for (i, _), cell_loss in zip(items, loss.view(len(items), cfg.draws, -1).mean(1).cpu().numpy()):
                result[i] = (grid, cell_loss)
    model.train(was_training)
    return result


def save_pictures(model: nn.Module, images: UnlabeledImages, indices: list[int], cfg: PretrainConfig, step: int,
                  mean: list[float], std: list[float], device: torch.device, folder: Path) -> None:
    """For each image: input | input with its highest-loss cells masked | reconstruction | per-cell loss."""
    scores = score_cells(model, images, indices, cfg, step, mean, std, device)
    model = distributed.unwrap(model).eval()
    for i in indices:
        grid, cell_loss = scores[i]
        selected = top_cells(cell_loss, cfg.mask_ratio)
        view = normalize(resize_short_side(images.load(i), cfg.score_short_side), mean, std)
        masked = apply_mask(view, torch.from_numpy(grid.expand(selected)))
        with torch.no_grad():
            recon = model(masked[None].to(device))[0]
        save_panel(folder / f"{i:05d}_{images.paths[i].stem}.png", [
            ("input", to_rgb(view, mean, std)), ("highest-loss cells masked", to_rgb(masked, mean, std)),
            ("reconstruction", to_rgb(recon, mean, std)),
            (f"cell loss (mean of {cfg.draws} random masks)", heat_map(cell_loss, grid, selected))])
    model.train()


def choose_masks(model: nn.Module, images: UnlabeledImages, indices: list[int], cfg: PretrainConfig, step: int,
                 mean: list[float], std: list[float], device: torch.device) -> tuple[dict, dict]:
    """Score a partition (split over the processes, then gathered) and mask each image's highest-loss cells.

    Returns the cell masks (image index -> (grid, flat mask)) and their JSON record (see masks_record).
    """
    start = time.perf_counter()
    world = distributed.world_size()
    mine = score_cells(model, images, indices[distributed.rank()::world], cfg, step, mean, std, device)
    scores = {i: v for part in distributed.all_gather_objects(mine) for i, v in part.items()}
    chosen = {i: (grid, top_cells(s, cfg.mask_ratio), s) for i, (grid, s) in scores.items()}
    record = masks_record(step, images, chosen, time.perf_counter() - start)
    return {i: (grid, mask) for i, (grid, mask, _) in chosen.items()}, record


def masks_record(step: int, images: UnlabeledImages, chosen: dict[int, tuple[Grid, np.ndarray, np.ndarray]],
                 seconds: float) -> dict:
    """The JSON record of a step's masks: per image the grid, masked cells and scores; plus summary statistics."""
    masked = np.concatenate([s[m] for _, m, s in chosen.values()])
    visible = np.concatenate([s[~m] for _, m, s in chosen.values()])
    return {
        "step": step, "score_seconds": round(seconds, 3),
        "mean_loss_masked_cells": float(masked.mean()), "mean_loss_visible_cells": float(visible.mean()),
        "masked_fraction": float(len(masked) / (len(masked) + len(visible))),
        "images": [{"index": i, "path": str(images.paths[i]), "grid_y": list(g.y), "grid_x": list(g.x),
                    "masked_cells": np.flatnonzero(m).tolist(), "cell_loss": np.round(s, 5).tolist()}
                   for i, (g, m, s) in sorted(chosen.items())],
    }


def masks_from_record(record: dict) -> dict[int, tuple[Grid, np.ndarray]]:
    """Cell masks (image index -> (grid, flat mask)) from a masks.json record."""
    out = {}
    for item in record["images"]:
        grid = Grid(tuple(item["grid_y"]), tuple(item["grid_x"]))
        mask = np.zeros(grid.num_cells, bool)
        mask[item["masked_cells"]] = True
        out[item["index"]] = (grid, mask)
    return out


def pool_sources(cfg: PretrainConfig) -> dict[str, list[Path]]:
    """The pretraining images by source: the dataset's TRAIN split and/or each --images folder.

    The val and test images of `cfg.dataset` are never used, even when a folder holds them.
    """
    folders = [cfg.images] if isinstance(cfg.images, str) else list(cfg.images or [])
    if not cfg.dataset and not folders:
        raise WeedsegError("nothing to pretrain on: give --dataset and/or --images FOLDER [FOLDER ...]")
    sources: dict[str, list[Path]] = {}
    held_out: set[Path] = set()
    if cfg.dataset:
        data = open_dataset(cfg.dataset, cfg.data_root)
        sources[f"{cfg.dataset} train split"] = [s.image for s in data.splits["train"]]
        held_out = {s.image.resolve() for split in ("val", "test") for s in data.splits[split]}
    for folder in folders:
        found = find_images(folder)
        kept = [p for p in found if p.resolve() not in held_out]
        if len(kept) < len(found):
            print(f"{folder}: left out {len(found) - len(kept)} {cfg.dataset} val/test images")
        sources[folder] = kept
    return sources


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Pretrain per `cfg` (or continue the run in cfg.out when `resume`); returns the final checkpoint path."""
    out = Path(cfg.out)
    last_path, log_path = out / "last.pt", out / "log.jsonl"
    state = open_run(out, resume, overwrite)
    if state is not None:
        cfg = PretrainConfig(**{**state["pretrain_state"]["config"], "out": cfg.out})
    device = distributed.init(cfg.device)
    world, main = distributed.world_size(), distributed.is_main()
    if cfg.method not in METHODS:
        raise WeedsegError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.batch_size % world:
        raise WeedsegError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes")
    if not (0 < cfg.mask_ratio < 1 and cfg.partitions >= 1 and cfg.draws >= 1 and cfg.epochs >= 1):
        raise WeedsegError("need 0 < --mask-ratio < 1 and at least 1 partition, draw and epoch")

    sources = pool_sources(cfg)
    images, skipped = open_images([p for paths in sources.values() for p in paths], progress=main)
    if main:
        readable = set(images.paths)
        print("pretraining pool: " + ", ".join(
            f"{sum(p in readable for p in paths)} images from {name}" for name, paths in sources.items()))
        if skipped:
            print(f"skipped {len(skipped)} unreadable image file(s):\n  " + "\n  ".join(skipped[:10])
                  + ("\n  ..." if len(skipped) > 10 else ""))
    if state is None:
        mean, std = channel_stats(images)
    else:
        mean, std = state["normalization"]["mean"], state["normalization"]["std"]
    steps = plan_steps(cfg.method, len(images), cfg.partitions, cfg.epochs, cfg.batch_size, world)
    total = sum(it for _, it in steps)

    torch.manual_seed(cfg.seed)
    model = channels_last(create_model(cfg.model, 3).to(device))
    meta = {**model_metadata(cfg.model, 3, RGB, RGB_COLORS, mean, std), "task": "reconstruction"}
    progress = {"step": 0, "iteration": 0, "seconds": {"train": 0.0, "score": 0.0, "total": 0.0}}
    if state is None:
        if main:
            for stale in [log_path, last_path, out / "final.pt", out / "summary.json", *out.glob("step*")]:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        distributed.barrier()
    else:
        model.load_state_dict(state["state_dict"])
        progress = state["pretrain_state"]
        done = sum(it for _, it in steps[: progress["step"]]) + progress["iteration"]
        if main:
            truncate_log(log_path, "global_iteration", done)
            print(f"resuming {out} at step {progress['step'] + 1}/{len(steps)}, iteration {progress['iteration']}")
    ddp = distributed.wrap_model(model, device)
    picture_indices = sorted(set(np.linspace(0, len(images) - 1, cfg.pictures).round().astype(int).tolist()))

    if main:
        per_step = ", ".join(str(it) for _, it in steps)
        print(f"pretraining {cfg.model} ({count_parameters(model) / 1e6:.2f} M parameters) by {cfg.method} masking on "
              f"{len(images)} images, {world} process(es), device {device}, loss {cfg.loss}\n"
              f"budget: {cfg.partitions} partitions x {cfg.epochs} epochs, global batch {cfg.batch_size} = {total} "
              f"iterations ({per_step} per step) = {total * cfg.batch_size} image loads; both methods train "
              f"exactly this many iterations ({total / batches_per_epoch(len(images), cfg.batch_size, world):.1f} "
              f"epochs over all images)")
        if cfg.warmup_epochs >= cfg.epochs:
            print(f"warning: the warm-up ({cfg.warmup_epochs} epochs) is as long as the schedule ({cfg.epochs} epochs), "
                  f"so the learning rate only rises and never reaches --lr {cfg.lr}; lower --warmup-epochs")
    bar = tqdm(total=total, desc="pretraining", unit="it", disable=not main,
               initial=sum(it for _, it in steps[: progress["step"]]) + progress["iteration"])
    start_step = progress["step"] + (progress["iteration"] >= steps[progress["step"]][1])
    try:
        for step in range(start_step, len(steps)):
            t0 = time.perf_counter()
            indices, iterations = steps[step]
            resuming = state is not None and progress["step"] == step
            cell_masks = None
            if cfg.method == "selective" and step > 0:
                masks_path = out / f"step{step}" / "masks.json"
                if resuming and masks_path.exists():
                    cell_masks = masks_from_record(json.loads(masks_path.read_text()))
                else:
                    cell_masks, record = choose_masks(ddp, images, indices, cfg, step, mean, std, device)
                    progress["seconds"]["score"] += record["score_seconds"]
                    if main:
                        masks_path.parent.mkdir(parents=True, exist_ok=True)
                        masks_path.write_text(json.dumps(record))
                        bar.write(f"step {step + 1}: scored {len(indices)} images in {record['score_seconds']:.1f} s; "
                                  f"mean cell loss {record['mean_loss_masked_cells']:.3f} masked vs "
                                  f"{record['mean_loss_visible_cells']:.3f} visible")
            resume_state = dict(progress) if resuming and progress["iteration"] > 0 else None
            dataset = MaskedImages(images, indices, TrainAugment(cfg.crop), mean, std, cfg.mask_ratio, cfg.cells,
                                   cell_masks)
            progress["step"], progress["iteration"] = step, 0
            _train_step(ddp, dataset, step, iterations, cfg, device, ReconstructionLoss(cfg.loss, mean, std).to(device),
                        resume_state, progress, meta, out, bar, sum(it for _, it in steps[:step]), t0)
            if main:
                info = {"method": cfg.method, "step": step, "config": asdict(cfg)}
                save_checkpoint(out / f"step{step}" / "model.pt", ddp, meta, pretrain=info)
                save_pictures(ddp, images, picture_indices, cfg, step, mean, std, device,
                              out / f"step{step}" / "pictures")
    except KeyboardInterrupt:
        bar.close()
        raise WeedsegError(f"interrupted; progress is saved in {last_path}. Continue with: "
                           f"weedseg pretrain --resume --out {out}") from None
    bar.close()
    final = out / "final.pt"
    if main:
        info = {"method": cfg.method, "step": len(steps) - 1, "config": asdict(cfg)}
        save_checkpoint(final, ddp, meta, pretrain=info)
        sec = progress["seconds"]
        summary = {"method": cfg.method, "images": len(images), "iterations": total, "processes": world,
                   "image_loads": total * cfg.batch_size, "seconds": {k: round(v, 1) for k, v in sec.items()},
                   "train_images_per_s": round(total * cfg.batch_size / max(sec["train"], 1e-9), 2),
                   "score_share": round(sec["score"] / max(sec["total"], 1e-9), 4)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"pretrained in {sec['total']:.0f} s ({summary['train_images_per_s']} images/s training, scoring "
              f"{100 * summary['score_share']:.1f} % of the time); weights in {final}\n"
              f"fine-tune with: weedseg train --init {final} --model {cfg.model}")
    distributed.barrier()
    return final


def _train_step(ddp: nn.Module, dataset: MaskedImages, step: int, iterations: int, cfg: PretrainConfig,
                device: torch.device, criterion: nn.Module, resume_state: dict | None, progress: dict, meta: dict,
                out: Path, bar: tqdm, done_before: int, t0: float) -> None:
    """Train one step for `iterations` with a fresh optimiser and warm-up; save resume points in out/last.pt."""
    rank, world = distributed.rank(), distributed.world_size()
    per_process = cfg.batch_size // world
    sampler = SeededSampler(len(dataset), cfg.seed * 1000 + step, rank, world)
    loader = make_loader(dataset, sampler, per_process, cfg.workers, device)
    per_epoch = len(loader)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, iterations, cfg.warmup_epochs * per_epoch, cfg.min_lr_ratio))
    use_amp, amp_dtype, scaler = mixed_precision(cfg.amp, device)
    it = 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        it = resume_state["iteration"]
    zero = torch.zeros((), dtype=torch.float64, device=device)  # losses summed on the device: no sync per step
    epoch, last_save, loss_sum, loss_count = it // per_epoch, it, zero, 0
    t_train, sec = time.perf_counter(), progress["seconds"]
    while it < iterations:
        torch.manual_seed(((cfg.seed * 1_000_003 + step) * 100_003 + epoch) * world + rank)  # dropout stream
        sampler.set_epoch(epoch)
        ddp.train()
        for masked, target in loader:
            masked, target = to_device(masked, device), to_device(target, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                pred = ddp(masked)
            loss = criterion(pred, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum, loss_count, it = loss_sum + loss.detach(), loss_count + 1, it + 1
            bar.update(1)
            if it == iterations:
                break
        epoch += 1
        if it - last_save >= cfg.save_every or it == iterations:
            now = time.perf_counter()
            sec["train"] += now - t_train
            sec["total"] += now - t0
            t_train = t0 = now
            record = {"step": step, "epoch": epoch, "iteration": it, "global_iteration": done_before + it,
                      "loss": distributed.mean(loss_sum.item() / loss_count), "lr": scheduler.get_last_lr()[0]}
            distributed.sync_buffers(ddp)
            if distributed.is_main():
                with (out / "log.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.update(step=step, iteration=it, optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), config=asdict(cfg))
                save_checkpoint(out / "last.pt", ddp, meta, pretrain_state=progress)
            bar.set_postfix(step=f"{step + 1}", loss=f"{record['loss']:.3f}")
            last_save, loss_sum, loss_count = it, zero, 0

