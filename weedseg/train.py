"""Supervised training of a segmentation model: one loop, plain config values, resumable.

Every epoch appends a line to <out>/metrics.jsonl. <out>/last.pt (model, optimiser, schedule, best score)
is rewritten after each validation, at the end, and at least every CHECKPOINT_EVERY_S seconds (not every
epoch: a run on 28 images has hundreds of epochs); <out>/best.pt holds the weights with the best validation mIoU.
`train(cfg, resume=True)` continues from last.pt with the exact data order of an unbroken run.
`cfg.init` starts from a pretrained checkpoint (see weedseg.ssl.transfer for what is copied) and
uses its normalisation. Under torchrun the loop runs with DistributedDataParallel (weedseg.distributed);
the batch size is global and only rank 0 validates and writes files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import WeedsegError, distributed
from .checkpoint import load_checkpoint, model_metadata, save_checkpoint
from .curves import SMOOTH_EVALS, best_rank, plot_curves
from .data import CopyPaste, EvalResize, SeededSampler, SegmentationDataset, TrainAugment, channel_stats, open_dataset
from .data.pseudo import add_pseudo_labels
from .data.splits import few
from .evaluate import evaluate_model
from .familiarity.fit import add_familiarity, field_name
from .losses import build_loss, inverse_sqrt_frequency_weights
from .models import count_parameters, create_model
from .resources import WEIGHTS_DIR
from .runtime import channels_last, make_loader, mixed_precision, open_run, to_device, truncate_log, warmup_cosine
from .ssl.transfer import check_init_model, format_report, transfer_weights


@dataclass
class TrainConfig:
    """Everything a training run depends on. Presets in PRESETS fill these; flags override them."""

    dataset: str = "peanut"
    data_root: str | None = None
    out: str = "runs/peanut"
    model: str = "unet-resnet18-quarter"
    epochs: int = 80
    iterations: int | None = None  # budget in optimiser steps; when set it decides the epochs (any dataset size)
    batch_size: int = 8
    crop: int = 256
    crop_scale: tuple[float, float] = (0.25, 1.0)  # area fraction of the photo each training crop covers ...
    crop_zoom: tuple[float, float] | None = None  # ... unless set: crop x zoom pixels at the eval resolution
    lr: float = 3e-3
    warmup_epochs: int = 10
    warmup_iterations: int | None = None  # with `iterations`: linear warm-up steps (default an eighth of them)
    min_lr_ratio: float = 0.01  # warm-up starts at, and cosine decays to, lr * min_lr_ratio
    loss: str = "jaccard"
    class_weights: str = "none"  # none | auto (1/sqrt(frequency)) | comma-separated numbers
    eval_short_side: int = 256
    eval_every: int = 0  # validate every N epochs; 0: automatic, about 40 validations per run
    smooth_evals: int = SMOOTH_EVALS  # best.pt = the weights where the mean of the last N validation mIoUs peaks
    train_fraction: float = 1.0
    pseudo_labels: tuple[str, ...] = ()  # `weedseg predict` output folders whose masks join the train split
    copy_paste: tuple[str, ...] = ()  # classes pasted from another crop into half of the training crops
    rotate90: bool = False  # also rotate training crops by multiples of 90 degrees (photos taken looking down; cpu preset)
    seed: int = 0
    workers: int = -1  # -1: automatic
    device: str = "auto"
    amp: bool = True  # mixed precision: CUDA, and CPUs with native bf16
    init: str | None = "field"  # 'field' (the shipped field-pretrained model), 'scratch', or a checkpoint path
    init_head: bool = False  # also copy the head from `init` when its shape matches


# the starting point `--init field` (the default) names: pretrained on 3,580 field photos (models/README.md)
FIELD_PRETRAINED, FIELD_PRETRAINED_MODEL = "weedseg-field-pretrained.pt", "unet-resnet18-quarter"
CHECKPOINT_EVERY_S = 30.0  # the most training an interruption between validations can lose

PRESETS: dict[str, dict] = {
    # 8000 iterations (229 epochs of the 280 peanut training images), counted in iterations so that a small
    # dataset trains as long as peanut; 256 px crops of the photo at short side 480, zoomed 0.69-1.45x, focal +
    # soft Dice loss, quarter-turn rotations besides the mirror, inference at short side 480: the best recipe on
    # peanut validation (docs/research/accuracy.md)
    "cpu": {"model": "unet-resnet18-quarter", "iterations": 8000, "batch_size": 8, "warmup_iterations": 350,
            "crop_zoom": (0.685, 1.45), "eval_short_side": 480, "loss": "focal+dice", "rotate90": True},
    # the paper's fine-tuning budget, for a GPU
    "paper": {"model": "unet-resnet34", "epochs": 500, "batch_size": 8, "warmup_epochs": 10},
}


def resolve_init(init: str | None, model: str, verbose: bool = True) -> Path | None:
    """The checkpoint a run starts from: None for 'scratch'; for 'field' the shipped field-pretrained model
    (FIELD_PRETRAINED), or None with a note when it holds another architecture than `model`; else `init` itself."""
    if init in (None, "", "scratch"):
        return None
    if init != "field":
        return Path(init)
    if model != FIELD_PRETRAINED_MODEL:
        if verbose:
            print(f"starting {model} from random weights: the field-pretrained model is a {FIELD_PRETRAINED_MODEL}")
        return None
    return WEIGHTS_DIR / FIELD_PRETRAINED


def augmentation(cfg: TrainConfig) -> TrainAugment:
    """The training augmentation: crops by area fraction, or by zoom at the evaluation resolution."""
    zoom = tuple(cfg.crop_zoom) if cfg.crop_zoom else None
    return TrainAugment(cfg.crop, tuple(cfg.crop_scale), zoom=zoom, input_short_side=cfg.eval_short_side,
                        rotate90=cfg.rotate90)


def copy_paste(classes: tuple[str, ...], data_classes: list[str]) -> CopyPaste | None:
    """The copy-paste augmentation for these class names (None when none are given)."""
    if not classes:
        return None
    unknown = [c for c in classes if c not in data_classes]
    if unknown:
        raise WeedsegError(f"--copy-paste {' '.join(unknown)}: not a class of this dataset; its classes are "
                           + ", ".join(data_classes))
    return CopyPaste(tuple(data_classes.index(c) for c in classes))


def schedule(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """(total iterations, warm-up iterations, epochs): from cfg.iterations when set, else from cfg.epochs."""
    if cfg.iterations:
        warmup = cfg.warmup_iterations if cfg.warmup_iterations is not None else cfg.iterations // 8
        return cfg.iterations, warmup, -(-cfg.iterations // steps_per_epoch)
    return cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch, cfg.epochs


def parse_class_weights(spec: str, dataset: SegmentationDataset, num_classes: int) -> torch.Tensor | None:
    """Class weights from a config string (see TrainConfig.class_weights)."""
    if spec == "none":
        return None
    if spec == "auto":
        from .infer.tables import class_counts  # counts in strips: memory stays small on large masks

        counts = sum(class_counts(dataset.load(i)[1], num_classes) for i in range(len(dataset)))  # ignored left out
        return inverse_sqrt_frequency_weights(torch.from_numpy(counts))
    try:
        weights = [float(v) for v in spec.split(",")]
    except ValueError:
        weights = []
    if len(weights) != num_classes:
        raise WeedsegError(f"--class-weights needs 'none', 'auto' or {num_classes} comma-separated numbers, got {spec!r}")
    return torch.tensor(weights)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per `cfg` (or continue the run in cfg.out when `resume`); returns the best validation metrics.

    An existing run in cfg.out is an error unless `resume` (continue it) or `overwrite` (start afresh).
    """
    out = Path(cfg.out)
    last_path, log_path = out / "last.pt", out / "metrics.jsonl"
    state = open_run(out, resume, overwrite)
    if state is not None:
        cfg = TrainConfig(**{**state["train_state"]["config"], "out": cfg.out})

    device = distributed.init(cfg.device)
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if cfg.batch_size % world:
        raise WeedsegError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes")
    init_path = resolve_init(cfg.init, cfg.model, verbose=main and state is None)
    pretrained = load_checkpoint(init_path) if init_path and state is None else None
    if pretrained is not None:
        check_init_model(pretrained, cfg.model, init_path)
    data = open_dataset(cfg.dataset, cfg.data_root, cfg.train_fraction)
    if cfg.pseudo_labels:
        labelled = len(data.splits["train"])
        added, left_out = add_pseudo_labels(data.splits, list(cfg.pseudo_labels), data.classes)
        if main:
            print(f"pseudo-labels: {added} predicted photos train beside the {labelled} labelled ones", flush=True)
            if left_out:
                print(f"pseudo-labels: {len(left_out)} left out, never trained on: {few(left_out, 3)}", flush=True)
    num_classes = len(data.classes)
    train_ds = SegmentationDataset(data.layout, data.splits["train"], augmentation(cfg), [0.0] * 3, [1.0] * 3,
                                   copy_paste(cfg.copy_paste, data.classes))
    train_ds.preload("loading train images")
    if state is not None or pretrained is not None:  # a fine-tuned model keeps its pretraining normalisation
        mean, std = (state or pretrained)["normalization"]["mean"], (state or pretrained)["normalization"]["std"]
    else:
        mean, std = channel_stats(train_ds)
    train_ds.mean, train_ds.std = mean, std
    val_ds = SegmentationDataset(data.layout, data.splits["val"], EvalResize(cfg.eval_short_side), mean, std)
    val_ds.preload("loading val images")

    sampler = SeededSampler(len(train_ds), cfg.seed, rank, world)
    loader = make_loader(train_ds, sampler, cfg.batch_size // world, cfg.workers, device)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes)
    if pretrained is not None:
        report = {"init": str(init_path), **transfer_weights(model, pretrained, cfg.init_head, data.classes)}
        if main:
            print(format_report(report))
    model = channels_last(model.to(device))
    meta = model_metadata(cfg.model, num_classes, data.classes, data.colors, mean, std)
    weights = parse_class_weights(cfg.class_weights, train_ds, num_classes)
    if main and weights is not None:
        print("class weights: " + ", ".join(f"{name} {w:.2f}" for name, w in zip(data.classes, weights.tolist())))
    criterion = build_loss(cfg.loss, None if weights is None else weights.to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = len(loader)
    total, warmup, epochs = schedule(cfg, steps)
    eval_every = cfg.eval_every or max(1, epochs // 40)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, warmup, cfg.min_lr_ratio)
    )
    use_amp, amp_dtype, scaler = mixed_precision(cfg.amp, device)

    start_epoch, best, recent = 0, {"miou": -1.0, "smoothed": -1.0, "full": False}, []
    saved_epoch, saved_at = 0, time.monotonic()  # epochs in last.pt, and when it was written
    if state is None:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            for stale in (log_path, last_path, out / "best.pt", out / "init_report.json"):
                stale.unlink(missing_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            if pretrained is not None:
                (out / "init_report.json").write_text(json.dumps(report, indent=2))
    else:
        model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        start_epoch, best, recent = ts["epoch"] + 1, ts["best"], ts.get("recent", [])
        saved_epoch = start_epoch
        if main:
            truncate_log(log_path, "epoch", ts["epoch"] + 1)
            print(f"resuming {out} at epoch {start_epoch + 1}/{epochs}")

    if main:
        print(f"training {cfg.model} ({count_parameters(model) / 1e6:.2f} M parameters) on {cfg.dataset}: "
              f"{len(train_ds)} train / {len(val_ds)} val images, {total} iterations ({epochs} epochs of {steps}), "
              f"batch {cfg.batch_size}, validation every {eval_every} epoch(s), "
              f"device {device}{f' with {str(amp_dtype)[6:]} mixed precision' if use_amp else ''}"
              f"{f', {world} processes' if world > 1 else ''}")
    model = distributed.wrap_model(model, device)
    bar = tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs, desc="epochs", unit="epoch",
               disable=not main)
    try:
        for epoch in bar:
            torch.manual_seed((cfg.seed * 1_000_003 + epoch) * world + rank)  # dropout stream: (seed, epoch, rank)
            sampler.set_epoch(epoch)
            model.train()
            t0, total_loss, done = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
            for images, masks in tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not main):
                if epoch * steps + done == total:  # an iteration budget may end inside the last epoch
                    break
                images, masks = to_device(images, device), to_device(masks, device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = criterion(model(images), masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.detach()  # no host synchronisation per step; read once per epoch
                done += 1
            seconds = time.perf_counter() - t0
            distributed.sync_buffers(model)
            record = {"epoch": epoch + 1, "iteration": epoch * steps + done,
                      "train_loss": distributed.mean(total_loss.item() / max(1, done)),
                      "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 2),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "images_per_s": round(done * cfg.batch_size / seconds, 2)}
            if not main:
                continue
            validate = (epoch + 1) % eval_every == 0 or epoch + 1 == epochs
            if validate:
                val = evaluate_model(distributed.unwrap(model), val_ds, num_classes, device).summary(data.classes)
                recent = (recent + [val["miou"]])[-max(1, cfg.smooth_evals):]
                full, smoothed = best_rank(recent, cfg.smooth_evals)
                record.update(val_miou=val["miou"], val_iou=val["iou"], val_miou_smoothed=smoothed)
                if (full, smoothed) > (best.get("full", "smoothed" in best), best.get("smoothed", -1.0)):
                    best = {"epoch": epoch + 1, "miou": val["miou"], "iou": val["iou"], "smoothed": smoothed,
                            "full": full}
                    save_checkpoint(out / "best.pt", model, meta, metrics={"val": val, "epoch": epoch + 1},
                                    config=asdict(cfg))
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if validate or time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
                train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "scaler": scaler.state_dict(), "epoch": epoch, "best": best, "recent": recent,
                               "config": asdict(cfg)}
                save_checkpoint(last_path, model, meta, train_state=train_state)
                saved_epoch, saved_at = epoch + 1, time.monotonic()
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_miou=f"{record.get('val_miou', float('nan')):.3f}",
                            best=f"{best['miou']:.3f}")
    except KeyboardInterrupt:
        bar.close()
        if not saved_epoch:
            raise WeedsegError(f"interrupted before the first checkpoint of {out}; start the run again") from None
        raise WeedsegError(f"interrupted; epochs 1-{saved_epoch} are saved in {last_path}. "
                           f"Continue with: weedseg train --resume --out {out}") from None
    bar.close()
    distributed.barrier()
    if not main:
        return best
    try:
        curves = f"curves in {plot_curves([out], out / 'curves.png')}"
    except WeedsegError as exc:  # the run itself is complete
        curves = f"no curves.png: {exc}"
    try:  # what its training photos looked like, so predict can flag unlike ones (weedseg.familiarity)
        add_familiarity(out / "best.pt", data, field_name(cfg.dataset, data), short_side=cfg.eval_short_side)
    except WeedsegError as exc:  # the run itself is complete
        print(f"no familiarity statistics in best.pt: {exc}")
    window = f"the last {cfg.smooth_evals}" if best.get("full", True) else "all"  # fewer ran than the window
    print(f"best validation mIoU {best['miou']:.4f} at epoch {best.get('epoch')} (mean of {window} validations up to "
          f"it {best.get('smoothed', best['miou']):.4f}); weights in {out / 'best.pt'}; {curves}")
    return best

