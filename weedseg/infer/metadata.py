"""What an exported weedseg ONNX model says about itself (stored as ONNX metadata_props).

Every value is a string: numbers and lists are JSON. `ModelInfo.from_props` checks the whole
description, so a model that lacks it or contradicts itself fails with a clear message before
any image is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import WeedsegError
from ..familiarity import PROPS_KEY as FAMILIARITY_KEY
from ..familiarity import FamiliarityStats

FORMAT = "weedseg.onnx/1"
MAX_INPUT_SHORT_SIDE = 4096  # a larger model resolution would need gigabytes per image
BACKGROUND_NAMES = ("soil", "background", "ground")  # class names that mean "no plant here" (any letter case)


def background_class(classes: list[str]) -> int | None:
    """Index of the background class (the first named soil, background or ground, in any letter case), or None.

    Overlays leave it untinted and areas and cover are given for the other classes. A model's classes come in
    whatever order its dataset listed them (a dataset.toml may put crop first), so the background is found by
    name, never assumed to be class 0; with no such class every class is tinted and measured.
    """
    names = [c.strip().lower() for c in classes]
    return next((i for i, name in enumerate(names) if name in BACKGROUND_NAMES), None)


@dataclass(frozen=True)
class ModelInfo:
    """How to feed an exported model and how to read its output."""

    model_name: str
    classes: list[str]
    colors: list[list[int]]
    mean: list[float]
    std: list[float]
    size_multiple: int
    input_short_side: int  # the resolution the model was trained and evaluated at (0: native)
    weedseg_version: str
    precision: str = "fp32"  # fp32 or int8
    train_gsd_cm: float | None = None  # ground sampling distance of the training images as the model saw them
    familiarity: FamiliarityStats | None = None  # what its training photos looked like (weedseg.familiarity)

    @property
    def background(self) -> int | None:
        """Index of the background class (see background_class), None if the model names none."""
        return background_class(self.classes)

    def to_props(self) -> dict[str, str]:
        """The metadata_props entries (all strings) that describe this model."""
        gsd = {} if self.train_gsd_cm is None else {"weedseg.train_gsd_cm": str(self.train_gsd_cm)}
        familiar = {} if self.familiarity is None else {FAMILIARITY_KEY: self.familiarity.to_json()}
        return {
            "weedseg.format": FORMAT,
            "weedseg.version": self.weedseg_version,
            "weedseg.model": self.model_name,
            "weedseg.precision": self.precision,
            "weedseg.classes": json.dumps(self.classes),
            "weedseg.colors": json.dumps(self.colors),
            "weedseg.normalization": json.dumps({"mean": self.mean, "std": self.std}),
            "weedseg.size_multiple": str(self.size_multiple),
            "weedseg.input_short_side": str(self.input_short_side),
            **gsd,
            **familiar,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelInfo:
        """Parse and check metadata_props; raise WeedsegError naming `source` if anything is off."""
        def fail(problem: str) -> WeedsegError:
            return WeedsegError(f"{source}: {problem}. Re-export it with `weedseg export CHECKPOINT --out MODEL.onnx`.")

        if props.get("weedseg.format") != FORMAT:
            raise fail(f"not a weedseg ONNX model (metadata 'weedseg.format' is {props.get('weedseg.format')!r}, "
                       f"expected {FORMAT!r})")
        try:
            classes = _json(props, "weedseg.classes")
            colors = _json(props, "weedseg.colors")
            norm = _json(props, "weedseg.normalization")
            info = cls(
                model_name=props.get("weedseg.model", "unknown"),
                classes=[str(c) for c in classes],
                colors=[[int(v) for v in c] for c in colors],
                mean=[float(v) for v in norm["mean"]],
                std=[float(v) for v in norm["std"]],
                size_multiple=int(props["weedseg.size_multiple"]),
                input_short_side=int(props["weedseg.input_short_side"]),
                weedseg_version=props.get("weedseg.version", "unknown"),
                precision=props.get("weedseg.precision", "fp32"),
                train_gsd_cm=float(props["weedseg.train_gsd_cm"]) if "weedseg.train_gsd_cm" in props else None,
                familiarity=(FamiliarityStats.from_json(props[FAMILIARITY_KEY], source)
                             if FAMILIARITY_KEY in props else None),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"metadata missing or malformed ({type(exc).__name__}: {exc})") from exc
        if len(info.classes) < 2 or len(info.colors) != len(info.classes):
            raise fail(f"metadata lists {len(info.classes)} classes but {len(info.colors)} colours")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in info.colors):
            raise fail(f"metadata colours must be RGB triples in 0..255, got {info.colors}")
        if len(info.mean) != 3 or len(info.std) != 3 or min(info.std) <= 0:
            raise fail(f"metadata normalisation needs 3 means and 3 positive stds, got {norm}")
        if info.train_gsd_cm is not None and not info.train_gsd_cm > 0:
            raise fail(f"metadata train_gsd_cm must be positive, got {info.train_gsd_cm}")
        if not 1 <= info.size_multiple <= 256:
            raise fail(f"metadata size_multiple must be 1..256, got {info.size_multiple}")
        if info.input_short_side != 0 and not info.size_multiple <= info.input_short_side <= MAX_INPUT_SHORT_SIDE:
            raise fail(f"metadata input_short_side must be 0 (native) or {info.size_multiple}..{MAX_INPUT_SHORT_SIDE} "
                       f"pixels, got {info.input_short_side}")
        return info


def _json(props: dict[str, str], key: str) -> Any:
    if key not in props:
        raise KeyError(key)
    return json.loads(props[key])


def read_model_info(path: str) -> ModelInfo:
    """Read the weedseg description of an ONNX file (weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # not a protobuf, truncated file ...
        raise WeedsegError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return ModelInfo.from_props({p.key: p.value for p in model.metadata_props}, str(path))
