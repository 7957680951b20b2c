"""Model registry: every segmentation network weedseg trains is created here by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from .unet import UNet

# name -> constructor arguments (besides num_classes). Checkpoints store the name and these.
MODELS: dict[str, dict[str, Any]] = {
    "unet-resnet34": {"depth": 34, "width": 1.0},
    "unet-resnet18": {"depth": 18, "width": 1.0},
    "unet-resnet18-half": {"depth": 18, "width": 0.5},
    "unet-resnet18-quarter": {"depth": 18, "width": 0.25},
}


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """Build the registered model `name` with `num_classes` output channels."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return UNet(num_classes=num_classes, **{**MODELS[name], **overrides})


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
