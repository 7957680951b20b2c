"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import WeedsegError, __version__
from .familiarity import PROPS_KEY, FamiliarityStats
from .models import MODELS, create_model

FORMAT = "weedseg.checkpoint/1"


def model_metadata(
    model_name: str,
    num_classes: int,
    classes: list[str],
    colors: list[list[int]],
    mean: list[float],
    std: list[float],
) -> dict[str, Any]:
    """The description stored with every checkpoint (and later in ONNX metadata)."""
    return {
        "model": {"name": model_name, "num_classes": num_classes},
        "classes": list(classes),
        "colors": [list(map(int, c)) for c in colors],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
    }


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write with torch.save to a temporary file, then rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], **extra: Any) -> None:
    """Save `model` weights with its metadata; `extra` adds entries such as metrics or train state."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "weedseg_version": __version__, **meta, "state_dict": state, **extra}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a weedseg checkpoint safely (weights_only=True) and check that it is one."""
    path = Path(path)
    if not path.is_file():
        raise WeedsegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, or content that is unsafe to unpickle
        hint = " ONNX models are used with `weedseg predict --model`." if path.suffix == ".onnx" else ""
        raise WeedsegError(
            f"{path} is not a readable weedseg checkpoint: torch could not load it safely ({type(exc).__name__}). "
            f"Checkpoints are the .pt files written by `weedseg train` or `weedseg pretrain`.{hint}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeedsegError(f"{path} is not a weedseg checkpoint (expected format {FORMAT!r})")
    problem = describe_problem(ckpt)
    if problem:
        raise WeedsegError(f"{path} is a damaged or incomplete weedseg checkpoint: {problem}")
    return ckpt


def describe_problem(ckpt: dict[str, Any]) -> str | None:
    """What is missing or malformed in a loaded checkpoint's description, or None when it is complete."""
    spec = ckpt.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("num_classes"), int) or spec["num_classes"] < 1:
        return "no model description (model.name and model.num_classes)"
    if spec.get("name") not in MODELS:
        return f"unknown architecture {spec.get('name')!r} (this weedseg knows {', '.join(MODELS)})"
    n = spec["num_classes"]
    classes, colors, norm = ckpt.get("classes"), ckpt.get("colors"), ckpt.get("normalization")
    if not isinstance(classes, list) or len(classes) != n or not all(isinstance(c, str) for c in classes):
        return f"'classes' must name its {n} classes, got {classes!r}"
    if not isinstance(colors, list) or len(colors) != n or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors):
        return f"'colors' must hold {n} RGB triples in 0..255"
    if not isinstance(norm, dict) or not all(
            isinstance(norm.get(k), list) and len(norm[k]) == 3 and all(isinstance(v, (int, float)) for v in norm[k])
            for k in ("mean", "std")) or min(norm["std"]) <= 0:
        return "'normalization' must hold 3 means and 3 positive stds"
    weights = ckpt.get("state_dict")
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "no weights ('state_dict')"
    if PROPS_KEY in ckpt:
        try:
            FamiliarityStats.from_json(ckpt[PROPS_KEY], "the checkpoint")
        except WeedsegError as exc:
            return str(exc)
    return None


def familiarity_stats(ckpt: dict[str, Any]) -> FamiliarityStats | None:
    """The familiarity statistics a (checked) checkpoint carries, or None (weedseg.familiarity)."""
    return FamiliarityStats.from_json(ckpt[PROPS_KEY], "checkpoint") if PROPS_KEY in ckpt else None


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode); WeedsegError when the
    weights do not fit the architecture it names."""
    spec = ckpt["model"]
    model = create_model(spec["name"], spec["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # missing, unexpected or differently shaped weights
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise WeedsegError(f"the checkpoint's weights do not fit the architecture it names, {spec['name']} with "
                           f"{spec['num_classes']} classes ({detail[:300]}); it is damaged or was edited") from exc
    return model.eval()

