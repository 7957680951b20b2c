"""The `weedseg` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

from . import WeedsegError, __version__
from .data import DATASETS, SPLITS
from .infer.engines import DEFAULT_ENGINE, ENGINES
from .infer.pipeline import OUTPUTS
from .infer.metadata import MAX_INPUT_SHORT_SIDE
from .labels import FORMATS as LABEL_FORMATS
from .labels.prelabels import PRELABELS

MIN_CROP = 32  # training crops and scoring sizes: one size multiple of the U-Nets at least

# The commands that need PyTorch (`pip install 'weedseg[train]'`) and their one-line help.
TRAINING_COMMANDS = {
    "train": "train a segmentation model on a labelled dataset",
    "curves": "draw the training curves of one or more runs (loss, validation mIoU, best.pt) into a PNG",
    "evaluate": "score a checkpoint on a dataset split (mIoU, per-class IoU, confusion)",
    "export": "export a checkpoint to ONNX (self-checked against torch; optional INT8)",
    "pretrain": "self-supervised pretraining on unlabeled images (selective or random masking)",
    "experiment": "compare training from scratch, random- and selective-masking pretraining",
    "familiarity": "add familiarity statistics (what its training photos looked like) to a checkpoint",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default where it has one and its help does not say it already
    (unlike argparse.ArgumentDefaultsHelpFormatter, no "default: None" for options a preset fills)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def require_torch(command: str) -> None:
    """A WeedsegError saying how to install the training extra when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise WeedsegError(f"`weedseg {command}` needs PyTorch, which this install lacks: "
                           "pip install 'weedseg[train]'") from None


def config_from_args(config_cls: type, presets: dict[str, dict], args: argparse.Namespace, default_out: str):
    """A run config: the --budget preset, overridden by every flag the user gave (flags default to None)."""
    values = {**presets[args.budget], "out": args.out or default_out}
    values.update({f.name: getattr(args, f.name) for f in fields(config_cls)
                   if getattr(args, f.name, None) is not None and f.name != "out"})
    return config_cls(**values)


def refuse_settings_on_resume(config_cls: type, args: argparse.Namespace) -> None:
    """With --resume, a run continues with the settings it was started with: any flag that sets one is refused
    (where the run is, --out, and how it runs, --device and --workers, may be given)."""
    if not getattr(args, "resume", False):
        return
    given = [f"--{f.name.replace('_', '-')}" for f in fields(config_cls)
             if f.name not in ("out", "device", "workers") and getattr(args, f.name, None) is not None]
    if given:
        raise WeedsegError(f"--resume continues the run in --out with the settings it was started with, so "
                           f"{', '.join(given)} cannot change them; resume without them, or start a new run "
                           "with another --out")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .losses import LOSSES
    from .models import MODELS
    from .train import PRESETS, TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("train", help=TRAINING_COMMANDS["train"],
                       description="Train a crop/weed segmentation model. A --budget preset sets the model and "
                                   "schedule; any flag given overrides it. Progress is saved after each validation "
                                   "and at least every 30 s; after Ctrl-C continue with --resume.")
    p.add_argument("--dataset", choices=DATASETS, help="labelled dataset to use (default peanut)")
    p.add_argument("--data-root", help="folder holding the dataset (default: $WEEDSEG_DATA, then field_data/)")
    p.add_argument("--budget", choices=sorted(PRESETS), default="cpu",
                   help="cpu: compact model, about 30 min on 2 cores; paper: ResNet-34 U-Net, 500 epochs (GPU)")
    p.add_argument("--out", help="run folder for checkpoints and logs (default: runs/<dataset>-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out already holds a run")
    p.add_argument("--model", choices=list(MODELS))
    p.add_argument("--iterations", type=int_in(1),
                   help="budget in optimiser steps, whatever the dataset size (the cpu preset: 8000; on peanut 2800 "
                        "takes a third of the time for about 2 mIoU less, 14000 gained 0.3 val mIoU more)")
    p.add_argument("--epochs", type=int_in(1), help="budget in epochs instead of --iterations (the paper preset: 500)")
    p.add_argument("--warmup-iterations", type=int_in(0),
                   help="with --iterations: warm-up steps (the cpu preset: 350; else an eighth of --iterations)")
    p.add_argument("--batch-size", type=int_in(1))
    p.add_argument("--crop", type=int_in(MIN_CROP, MAX_INPUT_SHORT_SIDE),
                   help=f"training crop size in pixels (default {defaults.crop})")
    p.add_argument("--crop-zoom", type=comma_floats(2),
                   help="instead of --crop-scale: a crop covers (crop x zoom) pixels of the photo at the "
                        "--eval-short-side resolution, as MIN,MAX (e.g. 0.73,1.45: objects within 0.7-1.4x their "
                        "inference size, whatever the photo size)")
    p.add_argument("--crop-scale", type=comma_floats(2),
                   help="area fraction of the photo a training crop covers, as MIN,MAX (default "
                        f"{','.join(map(str, defaults.crop_scale))}; for native-scale crops of a 960x720 photo at "
                        "--crop 256: 0.05,0.2)")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {defaults.lr})")
    p.add_argument("--warmup-epochs", type=int_in(0))
    p.add_argument("--loss", choices=LOSSES, help="default: focal+dice (cpu preset), jaccard (paper preset)")
    p.add_argument("--class-weights", help="none (default), auto (1/sqrt of class frequency) or numbers, e.g. 1,2,4 "
                   "(auto cost 0.6 val mIoU on peanut: for fields where a class is rare)")
    p.add_argument("--eval-short-side", type=int_in(0, MAX_INPUT_SHORT_SIDE), help=f"validation resolution (default {defaults.eval_short_side})")
    p.add_argument("--eval-every", type=int_in(1), help="validate every N epochs (default: about 40 validations per run)")
    p.add_argument("--smooth-evals", type=int_in(1),
                   help=f"best.pt is where the mean of the last N validation mIoUs peaks; the first N-1 count only until "
                        f"N have run (default {defaults.smooth_evals})")
    p.add_argument("--train-fraction", type=fraction, help="use only this fraction of the training split (low-data runs)")
    p.add_argument("--pseudo-labels", nargs="+", metavar="FOLDER",
                   help="train also on the masks `weedseg predict --outputs mask` wrote into FOLDER for unlabelled "
                        "photos of the same field (self-training; photos of the val or test split are left out)")
    p.add_argument("--copy-paste", nargs="+", metavar="CLASS",
                   help="copy-paste augmentation: half of the training crops get the CLASS pixels (e.g. weed) of "
                        "another photo's crop pasted over them, image and label alike")
    p.add_argument("--rotate90", action=argparse.BooleanOptionalAction, default=None,
                   help="also rotate training crops by a random multiple of 90 degrees (with the flip, all 8 "
                        "symmetries of a square; the cpu preset does, +0.20 val mIoU on peanut in 3 of 3 seeds): for "
                        "photos taken looking down, which have no 'up'; --no-rotate90 for photos taken at a slant")
    p.add_argument("--seed", type=int, help="seed for weights, data order and augmentation (default 0)")
    p.add_argument("--workers", type=int_in(-1), help="data loader processes (default -1: automatic)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision (used on CUDA and on CPUs with native bf16)")
    p.add_argument("--init", help="where the weights start: 'field' (default: the shipped field-pretrained model, "
                                  "models/weedseg-field-pretrained.pt, for unet-resnet18-quarter), 'scratch' "
                                  "(random weights), or a checkpoint of `weedseg pretrain` or `weedseg train` (encoder "
                                  "and decoder are copied, its normalisation is used; a trained head is matched by "
                                  "class name)")
    p.add_argument("--init-head", action="store_true", default=None,
                   help="with --init, also copy the head when its shape matches (default: re-initialise it)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train import PRESETS, TrainConfig, train

    refuse_settings_on_resume(TrainConfig, args)
    args.dataset = args.dataset or "peanut"
    cfg = config_from_args(TrainConfig, PRESETS, args, f"runs/{args.dataset}-{args.budget}")
    if args.epochs is not None and args.iterations is None:  # an explicit epoch budget replaces the preset's
        cfg.iterations = cfg.warmup_iterations = None
    try:
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        distributed.shutdown()
    return 0


def add_curves_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curves", help=TRAINING_COMMANDS["curves"],
                       description="Train loss and validation mIoU per iteration of `weedseg train` runs, with the "
                                   "validation best.pt holds marked; several runs share one picture. Works while a "
                                   "run trains (`weedseg train` writes <out>/curves.png when it ends).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the --out of `weedseg train`)")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png for one run, curves.png for several)")
    p.set_defaults(func=run_curves)


def run_curves(args: argparse.Namespace) -> int:
    from .curves import plot_curves

    runs = [Path(run) for run in args.runs]
    default = runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png")
    print(f"training curves written to {plot_curves(runs, Path(args.out) if args.out else default)}")
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=TRAINING_COMMANDS["evaluate"],
                       description="Evaluate a checkpoint over a whole split; prints the metrics and writes them as JSON.")
    p.add_argument("checkpoint", help="a .pt file written by `weedseg train`")
    p.add_argument("--dataset", choices=DATASETS, default="peanut", help="labelled dataset to use")
    p.add_argument("--data-root")
    p.add_argument("--split", choices=SPLITS, default="test", help="split to score")
    p.add_argument("--short-side", type=int_in(0, MAX_INPUT_SHORT_SIDE),
                   help="input resolution: resize the short side to this, 0 = native (default: the resolution the "
                        "model was validated at during training, from the checkpoint)")
    scoring = p.add_mutually_exclusive_group()  # one scoring resolution per run
    scoring.add_argument("--full-res", action="store_true",
                         help="score at the original mask resolution (logits upsampled)")
    scoring.add_argument("--score-short-side", type=int_in(1, MAX_INPUT_SHORT_SIDE),
                         help="score on masks resized to this short side (default: the input resolution)")
    add_tta_arguments(p, "")
    p.add_argument("--out", help="JSON file for the metrics (default: <checkpoint>.<dataset>-<split>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint
    from .metrics import format_summary

    out, where = metrics_path(args)
    check_writable(out)  # before the evaluation, not after it
    summary = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, args.data_root,
                                  args.short_side, args.full_res, args.device, tta_mode(args),
                                  args.score_short_side)
    print(f"{args.dataset} {args.split}: {summary['images']} images, scored at {summary['scored_at']}")
    print(format_summary(summary))
    out.write_text(json.dumps(summary, indent=2))
    print(f"metrics written to {out}{where}")
    return 0


def add_tta_arguments(p: argparse.ArgumentParser, flip_gain: str) -> None:
    """--tta and --tta-rotate (weedseg.tta); `flip_gain` ends the --tta help with what it measured."""
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation: average the logits of each image "
                                                    f"and its mirror image (twice the compute{flip_gain})")
    p.add_argument("--tta-rotate", action="store_true",
                   help="also average over the quarter turns of both: all 8 symmetries of a square (8 times the "
                        "compute), for photos taken looking straight down (docs/research/accuracy.md)")


def tta_mode(args: argparse.Namespace) -> str | None:
    """The weedseg.tta mode the TTA flags ask for."""
    return "rotate" if args.tta_rotate else "flip" if args.tta else None


def metrics_path(args: argparse.Namespace) -> tuple[Path, str]:
    """Where `evaluate` writes its JSON, and why there when not obvious: --out, else next to the checkpoint
    when that folder is writable and is not the shipped models' folder, else the
    current folder. The name holds the dataset (and a folder dataset's folder name) and split."""
    from .resources import WEIGHTS_DIR

    if args.out:
        return Path(args.out), ""
    ckpt = Path(args.checkpoint)
    data = args.dataset if args.dataset != "folder" or not args.data_root else f"folder-{Path(args.data_root).resolve().name}"
    name = f"{ckpt.stem}.{data}-{args.split}.json"
    folder = ckpt.resolve().parent
    if folder.is_relative_to(WEIGHTS_DIR.resolve()):
        return Path.cwd() / name, " (the current folder: the checkpoint is one shipped with weedseg)"
    if not os.access(folder, os.W_OK):
        return Path.cwd() / name, f" (the current folder: {folder} is not writable)"
    return ckpt.with_name(name), ""


def check_writable(path: Path) -> None:
    """Create `path`'s folder and make sure a file can be written there; WeedsegError saying what to do if not."""
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise WeedsegError(f"cannot write {path} ({exc.strerror or exc}); choose another --out") from exc
    if not existed:
        path.unlink()


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    from .models import MODELS
    from .ssl.losses import RECON_LOSSES
    from .ssl.pretrain import METHODS, PRESETS, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help=TRAINING_COMMANDS["pretrain"],
                       description="Pretrain a model by masked image reconstruction, then fine-tune it with "
                                   "`weedseg train --init <out>/final.pt`. A --budget preset sets the model and "
                                   "schedule; any flag given overrides it. Ctrl-C keeps the progress: continue "
                                   "with --resume. Runs under torchrun for several processes.")
    p.add_argument("--method", choices=METHODS, help=f"which cells are masked (default {d.method})")
    p.add_argument("--dataset", choices=DATASETS,
                   help="use this dataset's TRAIN split images (default peanut when no --images is given); "
                        "its val and test images are never used")
    p.add_argument("--images", nargs="+", metavar="FOLDER",
                   help="folders of unlabeled images (searched recursively); with --dataset, pooled with its train split")
    p.add_argument("--data-root", help="folder holding --dataset")
    p.add_argument("--budget", choices=sorted(PRESETS), default="cpu",
                   help="cpu: compact model, about 15 min on 2 cores for 280 images; paper: ResNet-34 U-Net, "
                        "1000 epochs per step, batch 64 (GPU)")
    p.add_argument("--out", help="run folder (default: runs/pretrain-<method>-<dataset or folder>-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out already holds a run")
    p.add_argument("--model", choices=list(MODELS))
    p.add_argument("--epochs", type=int_in(1), help="epochs per selective step, E (random masking trains as many iterations)")
    p.add_argument("--batch-size", type=int_in(1), help="global batch, split over processes")
    p.add_argument("--crop", type=int_in(MIN_CROP, MAX_INPUT_SHORT_SIDE), help=f"training crop size (default {d.crop})")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup-epochs", type=int_in(0))
    p.add_argument("--partitions", type=int_in(1), help=f"P, selective steps (default {d.partitions})")
    p.add_argument("--draws", type=int_in(1), help=f"S, random masks per image when scoring (default {d.draws})")
    p.add_argument("--mask-ratio", type=open_fraction, help=f"fraction of cells masked (default {d.mask_ratio})")
    p.add_argument("--cells", type=int_in(1), help=f"about sqrt(N) cells along the short side (default {d.cells})")
    p.add_argument("--loss", choices=RECON_LOSSES, help=f"reconstruction loss (default {d.loss})")
    p.add_argument("--score-short-side", type=int_in(MIN_CROP, MAX_INPUT_SHORT_SIDE), help=f"scoring resolution (default {d.score_short_side})")
    p.add_argument("--score-batch", type=int_in(1), help=f"images per scoring pass (default {d.score_batch})")
    p.add_argument("--pictures", type=int_in(0), help=f"images drawn after every step (default {d.pictures})")
    p.add_argument("--save-every", type=int_in(1), help=f"iterations between resume points (default {d.save_every})")
    p.add_argument("--seed", type=int, help="seed for weights, masks, data order and augmentation (default 0)")
    p.add_argument("--workers", type=int_in(-1), help="data loader processes (default -1: automatic)")
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision (used on CUDA and on CPUs with native bf16)")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from . import distributed
    from .ssl.pretrain import PRESETS, PretrainConfig, pretrain

    refuse_settings_on_resume(PretrainConfig, args)
    args.method = args.method or PretrainConfig.method
    if args.dataset is None and not args.images:
        args.dataset = "peanut"
    source = "+".join(([args.dataset] if args.dataset else []) + [Path(f).name for f in args.images or []])
    cfg = config_from_args(PretrainConfig, PRESETS, args, f"runs/pretrain-{args.method}-{source}-{args.budget}")
    cfg.dataset = args.dataset
    try:
        pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        distributed.shutdown()
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=TRAINING_COMMANDS["export"],
                       description="Export a checkpoint to ONNX with dynamic batch, height and width and its class "
                                   "names, colours, normalisation and input resolution in the ONNX metadata. The "
                                   "export is checked against torch on real images and fails past --tolerance. "
                                   "--int8 also writes MODEL.int8.onnx (static QDQ per-channel quantisation, "
                                   "calibrated on real training images) and reports FP32 and INT8 mIoU.")
    p.add_argument("checkpoint", help="a .pt file written by `weedseg train`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="also write an INT8 model next to --out (<out>.int8.onnx)")
    p.add_argument("--input-short-side", type=int_in(0, MAX_INPUT_SHORT_SIDE),
                   help="resolution predict feeds the model: short side in pixels, 0 = native "
                        "(default: the checkpoint's eval short side, else 256)")
    p.add_argument("--dataset", choices=DATASETS, default="peanut",
                   help="labelled images for the self-check, INT8 calibration (train) and scoring")
    p.add_argument("--data-root")
    p.add_argument("--split", choices=SPLITS, default="val", help="split the FP32 and INT8 mIoU are scored on")
    p.add_argument("--calibration-images", type=int_in(1), default=32, help="training images that calibrate INT8")
    p.add_argument("--tolerance", type=float_in(0), default=1e-3, help="largest allowed |ONNX - torch| logit difference")
    p.add_argument("--train-gsd", type=positive_float, metavar="CM_PER_PIXEL",
                   help="ground sampling distance of the training images at --input-short-side, where known; "
                        "predict then warns when an image's is far from it (docs/spray-maps.md)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .export import export_checkpoint

    data = open_dataset(args.dataset, args.data_root)
    export_checkpoint(args.checkpoint, args.out, data, args.input_short_side, tolerance=args.tolerance,
                      int8=args.int8, calibration_images=args.calibration_images, score_split=args.split,
                      train_gsd_cm=args.train_gsd)
    return 0


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment an image or a folder tree with an ONNX model",
                       description="Segment images (JPG, PNG, TIFF; a folder is searched recursively) into a class "
                                   "mask PNG, a colour overlay and a weed grid CSV per image, mirroring the input "
                                   "tree in --out, plus OUT/summary.csv. Large images are tiled and blended. Images "
                                   "already done are skipped (resume); unreadable ones are reported and skipped, and "
                                   "the exit status is 1 if any failed.")
    p.add_argument("input", help="an image or a folder")
    p.add_argument("--model", help="an ONNX file from `weedseg export` (default: the shipped weedseg-peanut-default.onnx)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--short-side", type=int_in(0, MAX_INPUT_SHORT_SIDE),
                   help="resize images to this short side before the model, 0 = native (default: the model's)")
    p.add_argument("--tile", type=int_in(32), default=1024, help="tile size in model pixels for large images (default 1024)")
    p.add_argument("--overlap", type=int_in(0), default=128, help="tile overlap in model pixels (default 128)")
    p.add_argument("--batch-size", type=int_in(1), default=4, help="images (or tiles) per model call")
    p.add_argument("--grid-cell", type=int_in(1), default=256, help="weed grid cell size in image pixels (default 256)")
    p.add_argument("--overlay-format", choices=["jpg", "png"], default="jpg", help="file type of the colour overlays")
    p.add_argument("--outputs", type=output_kinds, default=OUTPUTS, metavar="mask,overlay,grid",
                   help="files to write per image (default: all three); the mask is always written, as it marks an "
                        "image done, so `--outputs mask` skips the overlay and grid work; add prelabels for the "
                        "run's masks as COCO RLE and Label Studio predictions in OUT/prelabels/ (docs/labelling.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every image; the outputs of earlier runs in --out are removed first, so it holds "
                        "this run's alone")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when onnxruntime-gpu sees a GPU, else the CPU")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="auto: on the CPU, the faster installed engine for this model, timed once and remembered "
                        "(docs/inference.md); openvino needs pip install 'weedseg[openvino]'")
    p.add_argument("--threads", type=int_in(0), default=0, help="inference threads (default: all cores)")
    p.add_argument("--workers", type=int_in(0), default=0, help="reader and writer threads each (default: automatic)")
    add_tta_arguments(p, "; on peanut +0.3 val mIoU for models trained on 28 or 70 photos, +0.1 to +0.2 on all "
                         "280, +0.07 for the shipped default")
    g = p.add_argument_group("ground units and spot spraying (docs/spray-maps.md)")
    g.add_argument("--gsd", type=float, metavar="CM_PER_PIXEL",
                   help="ground sampling distance of every image (default: a GeoTIFF's pixel scale, or EXIF with "
                        "--altitude; without one, areas stay in pixels)")
    g.add_argument("--altitude", type=positive_float, metavar="M", help="camera height above the ground, for the GSD from "
                   "the EXIF focal length (35 mm equivalent, or with --sensor-width-mm)")
    g.add_argument("--sensor-width-mm", type=positive_float, metavar="MM",
                   help="the long side of the camera's sensor, with --altitude")
    g.add_argument("--cell-m", type=float, metavar="M", help="grid cell size in metres, e.g. a boom section "
                   "(images with a GSD; others use --grid-cell pixels)")
    g.add_argument("--spray-threshold", type=float_in(0, 100), default=1.0, metavar="PCT",
                   help="weed cover of a cell, in percent, from which it is sprayed (default 1)")
    g.add_argument("--min-patch", type=float_in(0), default=0.0, metavar="SIZE",
                   help="weed patches smaller than this are ignored as specks: cm² with a GSD, pixels without "
                        "(default 0: none)")
    g.add_argument("--patches", action="store_true", help="also draw each weed patch as a polygon in the spray maps")
    o = p.add_argument_group("orthomosaics (docs/drone-survey.md; needs pip install 'weedseg[geo]')")
    o.add_argument("--stream", action="store_true", help="stream every GeoTIFF window by window as an orthomosaic "
                   "(default: those over the 50-megapixel photo limit)")
    o.add_argument("--bands", type=band_list, metavar="R,G,B",
                   help="the red, green and blue bands of a multi-band orthomosaic, 1-based (default: from its "
                        "colour interpretation)")
    o.add_argument("--input-gsd", type=float, metavar="CM_PER_PIXEL",
                   help="ground sampling distance the model sees an orthomosaic at (default: the model's training "
                        "GSD where its card has one, else its photo-to-input ratio)")
    r = p.add_argument_group("on a Ray cluster (docs/cluster.md; pip install 'weedseg[cluster]')")
    r.add_argument("--ray", metavar="ADDRESS", help="spread the images over a Ray cluster: auto (the cluster this "
                   "computer belongs to), local (a Ray instance of its own on this computer) or HOST:6379; input and --out "
                   "must be on storage every node mounts at the same path")
    r.add_argument("--ray-cpus", type=int_in(1), default=1, metavar="N",
                   help="CPUs per Ray worker: one worker, with one model session, per N CPUs of the cluster")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from .infer.geo import GroundOptions
    from .infer.ortho import OrthoOptions
    from .infer.pipeline import PredictOptions, predict_path
    from .infer.session import Segmenter, resolve_model_path
    from .infer.spray import SpraySettings
    from .labels.prelabels import run_photos, write_prelabels

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = PredictOptions(args.short_side, args.tile, args.overlap, args.batch_size, args.grid_cell,
                             args.overlay_format, args.overwrite, args.workers,
                             GroundOptions(args.gsd, args.altitude, args.sensor_width_mm),
                             SpraySettings(args.spray_threshold, args.min_patch, args.cell_m, args.patches),
                             args.outputs, OrthoOptions(args.bands, args.input_gsd, args.stream))
    try:
        if args.ray:
            from .infer.cluster import RaySettings, predict_on_ray  # imports Ray, which a local run does not need

            settings = RaySettings(args.ray, args.ray_cpus, args.model, args.device, args.engine, args.threads,
                                   tta_mode(args))
            summary = predict_on_ray(args.input, args.out, settings, options)
        else:
            seg = Segmenter(resolve_model_path(args.model), args.device, args.threads, spin=False,
                            engine=args.engine, tta=tta_mode(args))
            summary = predict_path(args.input, args.out, seg, options)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished images are kept (see {Path(args.out) / 'summary.csv'}): "
              "run the same command again to resume", file=sys.stderr)
        return 130
    counts = summary.counts()
    print(f"{len(summary.rows)} images in {summary.seconds:.1f} s: {counts['predicted']} predicted, "
          f"{counts['done before']} already done, {counts['failed']} failed; summary: {Path(args.out) / 'summary.csv'}")
    for row in summary.failed:
        print(f"  failed: {row['image']}: {row['error']}", file=sys.stderr)
    if PRELABELS in args.outputs:
        folder = write_prelabels(Path(args.out), run_photos(Path(args.out), summary.rows), seg.info.classes,
                                 seg.info.colors, seg.path.name)
        print(f"prelabels for CVAT and Label Studio (COCO RLE, brush predictions): {folder}")
    return 1 if summary.failed else 0


def band_list(text: str) -> tuple[int, int, int]:
    """`--bands 3,2,1` as three 1-based band numbers."""
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"expected three band numbers from 1, like 1,2,3; got {text!r}")
    return bands  # type: ignore[return-value]


def output_kinds(text: str) -> tuple[str, ...]:
    """`--outputs mask,overlay` as a tuple that always holds the mask."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - {*OUTPUTS, PRELABELS})
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown output {', '.join(unknown)}; choose from "
                                         f"{','.join((*OUTPUTS, PRELABELS))}")
    return tuple(k for k in (*OUTPUTS, PRELABELS) if k in kinds or k == "mask")


def comma_fractions(text: str) -> tuple[float, ...]:
    """`--fractions 1,0.25,0.1` as numbers (argparse reports a bad value as a usage error)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,0.25,0.1, got {text!r}") from None


def int_in(low: int, high: int | None = None):
    """An argparse type: a whole number from `low` (up to `high`), e.g. `--grid-cell` at least 1."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0, e.g. `--lr 0.001`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def float_in(low: float, high: float | None = None):
    """An argparse type: a finite number from `low` (up to `high`), e.g. `--spray-threshold` from 0 to 100."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
            allowed = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be a number {allowed}, got {text}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number above 0 and at most 1, e.g. `--train-fraction 0.1`."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1, e.g. `--mask-ratio 0.5`."""
    value = fraction(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and below 1, got {text}")
    return value


def comma_floats(count: int):
    """An argparse type: exactly `count` comma-separated numbers, e.g. `--crop-scale 0.05,0.2`."""
    def parse(text: str) -> tuple[float, ...]:
        values = comma_fractions(text)
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values
    return parse


def add_experiment_parser(sub: argparse._SubParsersAction) -> None:
    from .experiment import PRESETS, ExperimentConfig
    from .experiment.plan import METHODS
    from .models import MODELS

    d = ExperimentConfig()
    p = sub.add_parser("experiment", help=TRAINING_COMMANDS["experiment"],
                       description="Run, per seed, pretraining by random and by selective masking (same iterations), "
                                   "then fine-tune the same model from scratch and from each pretrained model with "
                                   "the same data order and augmentation; score every run on the test split and "
                                   "write OUT/results.md, results.json and results.png (means, seed spread, paired "
                                   "differences with 95 % intervals). Runs go several at once; the same command "
                                   "continues an interrupted experiment and skips finished runs.")
    p.add_argument("--dataset", choices=DATASETS, default="peanut", help="labelled dataset to use")
    p.add_argument("--data-root")
    p.add_argument("--budget", choices=sorted(PRESETS), default="cpu",
                   help="cpu: compact model, about 2 hours on 2 cores; paper: ResNet-34 U-Net, 1000 pretraining "
                        "epochs per step and 500 fine-tuning epochs (GPU)")
    p.add_argument("--out", help="experiment folder (default: runs/experiment-<dataset>-<budget>)")
    p.add_argument("--seeds", type=int_in(1), help=f"paired seeds 0..N-1 (default {d.seeds})")
    p.add_argument("--methods", type=lambda s: tuple(s.split(",")),
                   help=f"comma-separated, some of {','.join(METHODS)} (default all)")
    p.add_argument("--fractions", type=comma_fractions,
                   help="comma-separated fractions of the labelled training images (default 1,0.25,0.1)")
    p.add_argument("--model", choices=list(MODELS))
    p.add_argument("--pretrain-images", nargs="+", metavar="FOLDER",
                   help="folders of unlabelled images that pretraining pools with the dataset's train split "
                        "(e.g. $WEEDSEG_DATA/unlabeled); its val and test images are never used")
    p.add_argument("--pretrain-epochs", type=int_in(1), help="E, epochs per selective step (random: same iterations)")
    p.add_argument("--finetune-epochs", type=int_in(1), help="fine-tuning epochs with all labels (fewer labels: more epochs)")
    p.add_argument("--evals-per-run", type=int_in(1), help=f"validation passes per fine-tuning run (default {d.evals_per_run})")
    p.add_argument("--crop", type=int_in(MIN_CROP, MAX_INPUT_SHORT_SIDE), help=f"training crop size (default {d.crop})")
    p.add_argument("--mask-ratio", type=open_fraction, help=f"pretraining: fraction of cells masked (default {d.mask_ratio})")
    p.add_argument("--cells", type=int_in(1), help=f"pretraining: about sqrt(N) cells along the short side (default {d.cells})")
    p.add_argument("--init-head", action="store_true", default=None,
                   help="fine-tuning: also copy the pretrained head (default: re-initialise it)")
    p.add_argument("--jobs", type=int_in(0), help="runs at once (default: one per CPU core with one thread each; 1 on a GPU)")
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    p.add_argument("--report-only", action="store_true", help="only rewrite the tables and chart from finished runs")
    p.set_defaults(func=run_experiment_command)


def run_experiment_command(args: argparse.Namespace) -> int:
    from .experiment import PRESETS, ExperimentConfig, run_experiment

    cfg = config_from_args(ExperimentConfig, PRESETS, args, f"runs/experiment-{args.dataset}-{args.budget}")
    run_experiment(cfg, report_only=args.report_only)
    return 0


def add_app_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the upload-and-segment web page (Streamlit)",
                       description="Start a web page where field photos are dropped in and segmented with an ONNX "
                                   "model from the shipped models (default: weedseg-peanut-default.onnx): overlay, mask, "
                                   "crop and weed cover, weed grid and downloads. Open the printed address in a "
                                   "browser; Ctrl-C stops it. See docs/app.md.")
    p.add_argument("--port", type=int_in(1, 65535), default=8501, help="port to serve on (default 8501)")
    p.add_argument("--address", default="localhost",
                   help="address to listen on (default localhost; 0.0.0.0 serves other machines too)")
    p.add_argument("--models", help="folder of ONNX models to offer (default: the shipped models, models/ in a checkout; sets $WEEDSEG_MODELS)")
    p.set_defaults(func=run_app)


def app_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line that serves the shipped page (app/weedseg_app.py in a checkout)."""
    from .resources import APP_SCRIPT

    if not APP_SCRIPT.is_file():
        raise WeedsegError(f"the app script {APP_SCRIPT} is missing; reinstall weedseg (pip install 'weedseg[app]')")
    return [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), "--server.headless", "true",
            "--server.port", str(args.port), "--server.address", args.address,
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]


def run_app(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("streamlit") is None:
        raise WeedsegError("`weedseg app` needs streamlit: pip install 'weedseg[app]'")
    cmd = app_command(args)
    if args.models:
        if not Path(args.models).is_dir():
            raise WeedsegError(f"--models: no such folder: {args.models}")
        os.environ["WEEDSEG_MODELS"] = str(Path(args.models).resolve())
    print(f"weedseg app: open http://{args.address}:{args.port} in a browser (Ctrl-C stops it)", flush=True)
    os.execv(cmd[0], cmd)  # streamlit replaces this process, so Ctrl-C and kill reach it directly


def add_dataset_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="import a labelling tool's export as a dataset, or check one before training",
                       description="Tools for labelled datasets. `weedseg dataset import` turns a CVAT, Label Studio "
                                   "or COCO export into a folder dataset; `weedseg dataset check` validates one "
                                   "before training.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("check", help="validate a dataset and summarise it (exit status 1 when it has problems)",
                           description="Validate a labelled dataset before training: image and mask pairing and "
                                       "sizes, EXIF orientation of the photos against their masks, mask values "
                                       "outside the class map, the split (overlaps, unknown ids), photos repeated "
                                       "across splits and class shares per split. Prints a summary and one line per "
                                       "problem; the exit status is 1 when there are problems.")
    c.add_argument("--dataset", choices=DATASETS, default="folder", help="dataset layout")
    c.add_argument("--data-root", help="folder holding the dataset (for folder: the one with dataset.toml)")
    c.set_defaults(func=run_dataset_check)
    i = actions.add_parser("import", help="turn a CVAT, Label Studio or COCO export into a folder dataset",
                           description="Turn the export of a labelling tool into a weedseg folder dataset (images/, "
                                       "masks/ of class indices, dataset.toml with the class names kept): CVAT "
                                       "\"Segmentation mask 1.1\" (cvat-mask) or \"COCO 1.0\" (cvat-coco), Label "
                                       "Studio's JSON export with brush or polygon labels (labelstudio), COCO JSON "
                                       "with polygons or RLE (coco). Pixels no label covers are the background "
                                       "class. See docs/labelling.md.")
    i.add_argument("export", help="the export: its folder, its JSON file or its .zip")
    i.add_argument("--format", required=True, choices=LABEL_FORMATS, help="which tool and export it is")
    i.add_argument("--out", required=True, help="the dataset folder to write (new or empty)")
    i.add_argument("--images", help="folder holding the photos when the export does not (searched by file name)")
    i.add_argument("--class-map", metavar="LABEL=CLASS,...",
                   help="rename or merge the export's labels, e.g. \"Carrot=crop,Weeds=weed,Shadow=ignore\" "
                        "(ignore: left out of training and scoring); every label must be named")
    i.add_argument("--background", default="soil",
                   help="class of the pixels no label covers, unless the export names one (background, soil, ground)")
    i.add_argument("--keep-empty", action="store_true",
                   help="also import photos without any label, as all background (default: left out, listed)")
    i.set_defaults(func=run_dataset_import)


def run_dataset_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset, format_check

    report = check_dataset(args.dataset, args.data_root)
    print(format_check(report))
    return 1 if report.problems else 0


def add_familiarity_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("familiarity", help=TRAINING_COMMANDS["familiarity"],
                       description="Familiarity statistics let predict and the page flag photos unlike the ones a "
                                   "model learned from (docs/familiarity.md). `weedseg train` fits them itself; "
                                   "`weedseg familiarity fit` adds them to an older checkpoint. Export it again "
                                   "afterwards so its ONNX models carry them.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = actions.add_parser("fit", help="fit the statistics on the model's training photos, threshold on val",
                           description="Fit a checkpoint's familiarity statistics: its pooled encoder features over "
                                       "the dataset's train photos at the model's input resolution, and the "
                                       "threshold on its val photos. Weights are unchanged.")
    f.add_argument("checkpoint", help="a .pt file written by `weedseg train`")
    f.add_argument("--dataset", choices=DATASETS, default="peanut", help="the dataset the model was trained on")
    f.add_argument("--data-root")
    f.add_argument("--out", help="write the checkpoint with statistics here (default: update CHECKPOINT in place)")
    f.set_defaults(func=run_familiarity_fit)


def run_familiarity_fit(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .familiarity.fit import add_familiarity, field_name

    data = open_dataset(args.dataset, args.data_root)
    add_familiarity(args.checkpoint, data, field_name(args.dataset, data), args.out)
    return 0


def add_suggest_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suggest", help="rank unlabelled photos: which to label next (uncertainty and diversity)",
                       description="Segment every photo under PHOTOS with the model and list the N to label next: "
                                   "where the model is least sure (mean per-pixel softmax margin at its input "
                                   "scale), spread out so the list holds no near-copies (greedy k-center over a "
                                   "thumbnail and the pooled class probabilities). Writes OUT (one path per line, "
                                   "for the labelling tool) and OUT with .csv (every photo's scores). It is advice: "
                                   "on peanut, photos it chose did not train a better model than random ones "
                                   "(docs/labelling.md).")
    p.add_argument("photos", help="a folder of unlabelled photos (searched recursively)")
    p.add_argument("--model", help="an ONNX file from `weedseg export` (default: the shipped weedseg-peanut-default.onnx)")
    p.add_argument("-n", type=int_in(1), default=30, help="how many photos to list (default 30)")
    p.add_argument("--out", required=True, help="the list to write, e.g. to-label.txt (scores go to to-label.csv)")
    p.add_argument("--labelled", metavar="FOLDER",
                   help="photos already labelled (e.g. DATASET/images): the list is spread away from them too")
    p.add_argument("--threads", type=int_in(0), default=0, help="inference threads (default: all cores)")
    p.set_defaults(func=run_suggest)


def run_suggest(args: argparse.Namespace) -> int:
    from .infer.session import Segmenter, resolve_model_path
    from .suggest import suggest

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seg = Segmenter(resolve_model_path(args.model), "cpu", args.threads)
    chosen = suggest(seg, args.photos, args.n, args.out, args.labelled)
    print(f"{len(chosen)} photos to label next, most useful first: {args.out} (scores: {Path(args.out).with_suffix('.csv')})")
    return 0


def run_dataset_import(args: argparse.Namespace) -> int:
    from .labels import import_labels

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    report = import_labels(args.export, args.format, args.out, args.images, args.class_map, args.background,
                           args.keep_empty)
    print(f"{report.photos} labelled photos imported into {report.out} (classes: "
          f"{', '.join(f'{name} = {i}' for i, name in enumerate(report.classes))}); next: "
          f"weedseg dataset check --data-root {report.out}")
    return 0


SUBCOMMANDS = {"train": add_train_parser, "curves": add_curves_parser, "evaluate": add_evaluate_parser,
               "export": add_export_parser, "predict": add_predict_parser, "pretrain": add_pretrain_parser,
               "experiment": add_experiment_parser, "app": add_app_parser, "dataset": add_dataset_parser,
               "familiarity": add_familiarity_parser, "suggest": add_suggest_parser}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The command line. A training command not in `commands` (None: all) gets only its help line, so
    that `weedseg predict` and `weedseg app` never import the training code or torch."""
    parser = argparse.ArgumentParser(prog="weedseg", description="Crop / weed / soil segmentation for field images.")
    parser.add_argument("--version", action="version", version=f"weedseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add_parser in SUBCOMMANDS.items():
        if name in TRAINING_COMMANDS and commands is not None and name not in commands:
            sub.add_parser(name, help=TRAINING_COMMANDS[name])
            continue
        if name in TRAINING_COMMANDS:
            require_torch(name)
        add_parser(sub)
    for subparser in sub.choices.values():
        subparser.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `weedseg` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if hasattr(sys.stdout, "reconfigure"):  # names that are not valid UTF-8 print escaped, not as a traceback
        sys.stdout.reconfigure(errors="backslashreplace")
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser([command] if command else []).parse_args(argv)
        return args.func(args)
    except WeedsegError as exc:
        print(f"weedseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
