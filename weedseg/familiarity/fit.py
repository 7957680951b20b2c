"""Fitting a model's familiarity statistics (needs torch): its pooled encoder features over its training photos
at its input resolution, a Gaussian with Ledoit-Wolf shrunk covariance, and a threshold from its validation
photos. `weedseg train` fits them at the end of a run; `weedseg familiarity fit` adds them to any checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn
from tqdm import tqdm

from .. import WeedsegError
from ..checkpoint import atomic_torch_save, load_checkpoint, model_from_checkpoint
from ..data import LabelledData
from ..data.io import read_rgb
from ..data.transforms import normalize, resize_short_side
from ..evaluate import model_short_side
from ..infer.engines import OnnxRuntimeEngine
from ..infer.session import cpu_count
from . import PROPS_KEY, THRESHOLD_Z, FamiliarityStats

MIN_VAL_PHOTOS = 3  # the threshold's log-normal needs a spread


def pooled_features(features: list[torch.Tensor]) -> torch.Tensor:
    """(N, D): each encoder feature map averaged over height and width, concatenated."""
    return torch.cat([f.mean(dim=(2, 3)) for f in features], dim=1)


@torch.no_grad()
def photo_features(model: nn.Module, photos: list[Path], short_side: int, mean: list[float], std: list[float],
                   desc: str) -> np.ndarray:
    """(N, D) pooled encoder features of `photos`, each resized to `short_side` as predict feeds the model."""
    rows = []
    for path in tqdm(photos, desc=desc, unit="img", leave=False):
        x = normalize(resize_short_side(read_rgb(path), short_side), mean, std)[None]
        rows.append(pooled_features(model.segment(x)[1])[0].numpy())
    return np.stack(rows).astype(np.float64)


def onnx_features(path: Path, photos: list[Path], short_side: int, mean: list[float], std: list[float],
                  desc: str) -> np.ndarray:
    """(N, D) pooled features of `photos` from the `features` output of exported model `path`, as predict gets them."""
    engine = OnnxRuntimeEngine(path, "cpu", cpu_count())
    rows = [engine.run_features(normalize(resize_short_side(read_rgb(p), short_side), mean, std)[None].numpy())[1][0]
            for p in tqdm(photos, desc=desc, unit="img", leave=False)]
    return np.stack(rows).astype(np.float64)


def refit_exported(path: Path, data: LabelledData, stats: FamiliarityStats, mean: list[float],
                   std: list[float]) -> FamiliarityStats:
    """`stats` fitted again on the features of exported model `path`, e.g. an INT8 copy, whose quantised features
    sit a little away from the FP32 ones (the same photos and rule: train for the Gaussian, val for the threshold)."""
    feats = {split: onnx_features(path, [s.image for s in data.splits[split]], stats.short_side, mean, std,
                                  f"familiarity: {split} photos") for split in ("train", "val")}
    return fit_stats(feats["train"], feats["val"], stats.field, stats.short_side)


def fit_stats(train: np.ndarray, val: np.ndarray, field: str, short_side: int) -> FamiliarityStats:
    """The Gaussian of `train` features (Ledoit-Wolf shrinkage) and a threshold from `val` features: the 99th
    percentile of a log-normal fitted to their distances (steadier than their largest with few val photos)."""
    if len(val) < MIN_VAL_PHOTOS:
        raise WeedsegError(f"familiarity needs at least {MIN_VAL_PHOTOS} validation photos to choose its threshold, "
                           f"the dataset has {len(val)}; give its split more val photos")
    gauss = LedoitWolf().fit(train)
    stats = FamiliarityStats(field, short_side, gauss.location_.astype(np.float32),
                             gauss.precision_.astype(np.float32), 1.0)
    logs = np.log(stats.distances(val))
    threshold = float(np.exp(logs.mean() + THRESHOLD_Z * logs.std(ddof=1)))
    fitted_on = {"train_photos": len(train), "val_photos": len(val), "shrinkage": round(float(gauss.shrinkage_), 5),
                 "threshold_rule": "99th percentile of a log-normal fitted to the val photos' distances",
                 "val_distance_median": round(float(np.exp(np.median(logs))), 4),
                 "val_flagged": int((logs > np.log(threshold)).sum())}
    return FamiliarityStats(field, short_side, stats.mean, stats.precision, threshold, fitted_on)


def fit_model(model: nn.Module, ckpt: dict, data: LabelledData, field: str, short_side: int) -> FamiliarityStats:
    """Fit `model`'s stats on `data`'s train photos, threshold on its val photos, at `short_side`."""
    norm = ckpt["normalization"]
    feats = {split: photo_features(model.eval(), [s.image for s in data.splits[split]], short_side, norm["mean"],
                                   norm["std"], f"familiarity: {split} photos") for split in ("train", "val")}
    return fit_stats(feats["train"], feats["val"], field, short_side)


def field_name(dataset: str, data: LabelledData) -> str:
    """What the photos show, for messages: the dataset's name, or a folder dataset's folder name."""
    return data.layout.root.name if dataset == "folder" else dataset


def add_familiarity(checkpoint: str | Path, data: LabelledData, field: str, out: str | Path | None = None,
                    short_side: int | None = None) -> FamiliarityStats:
    """`weedseg familiarity fit`: fit the stats of a checkpoint's model on `data` and save the checkpoint with them
    (to `out`, else in place, atomically); its weights and everything else are unchanged."""
    ckpt = load_checkpoint(checkpoint)
    if sorted(ckpt["classes"]) != sorted(data.classes):
        raise WeedsegError(f"{checkpoint} segments {ckpt['classes']} but the dataset's classes are {data.classes}: "
                           "fit familiarity on the dataset the model was trained on")
    side = model_short_side(ckpt) if short_side is None else short_side
    stats = fit_model(model_from_checkpoint(ckpt), ckpt, data, field, side)
    atomic_torch_save({**ckpt, PROPS_KEY: stats.to_json()}, out or checkpoint)
    print(describe_fit(stats) + f"; saved in {out or checkpoint}")
    return stats


def describe_fit(stats: FamiliarityStats) -> str:
    """One line on fitted stats."""
    f = stats.fitted_on
    return (f"familiarity: fitted on {f['train_photos']} {stats.field} training photos at short side "
            f"{stats.short_side or 'native'} ({stats.dim} features, shrinkage {f['shrinkage']:.3f}); threshold "
            f"{stats.threshold:.2f} from {f['val_photos']} val photos (median distance {f['val_distance_median']:.2f}, "
            f"{f['val_flagged']} over it)")
