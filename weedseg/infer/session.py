"""An exported weedseg model ready to run: the default model, the engine (weedseg.infer.engines), input preparation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from .. import WeedsegError
from ..data.io import printable
from ..resources import WEIGHTS_DIR
from ..tta import tta_logits
from .engines import DEFAULT_ENGINE, choose_faster, open_engine
from .metadata import ModelInfo, check_output_size

log = logging.getLogger(__name__)

DEFAULT_MODEL = WEIGHTS_DIR / "weedseg-peanut-default.onnx"
DEFAULT_INT8_MODEL = WEIGHTS_DIR / "weedseg-peanut-default.int8.onnx"  # `auto` may run it for DEFAULT_MODEL


def resolve_model_path(path: str | Path | None) -> Path:
    """The model to use: `path`, or the shipped default model when `path` is None."""
    model = Path(path) if path else DEFAULT_MODEL
    if not model.is_file():
        if path:
            raise WeedsegError(f"model not found: {model}")
        raise WeedsegError(f"no --model given and the default model {model} is absent; export one with "
                           "`weedseg export CHECKPOINT --out MODEL.onnx` and pass --model MODEL.onnx")
    return model


def cpu_count() -> int:
    """CPU cores this process may use (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Segmenter:
    """An exported weedseg model in an inference engine, with the metadata that says how to feed it.

    `engine`: auto (the default, as for `weedseg predict`: the fastest on this machine, see
    weedseg.infer.engines; for the shipped model possibly its INT8 version, which `path` then names),
    onnxruntime or openvino. `threads`: 0 uses every core this process may use. `spin=False` stops idle
    ONNX Runtime threads from busy-waiting, leaving the cores to the decoding and writing threads of a pipeline.
    `tta`: a test-time augmentation of weedseg.tta: flip (the mean of the logits of each input and of its mirror
    image, twice the model calls), rotate (also the quarter turns of both, 8 calls), or None.
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0, spin: bool = True,
                 engine: str = DEFAULT_ENGINE, tta: str | None = None) -> None:
        self.path = Path(path)
        if printable(str(self.path)) != str(self.path):  # the engines take paths as UTF-8 text
            raise WeedsegError(f"{printable(str(self.path))}: the model's path is not valid UTF-8, which the inference "
                               "engines cannot open; rename the file (or its folder)")
        self.tta = tta
        threads = threads or cpu_count()
        self.engine = open_engine(self.path, engine, device, threads, spin)
        self.info = ModelInfo.from_props(self.engine.metadata, str(self.path))
        shape = self.engine.input_shape
        if self.engine.input_count != 1 or len(shape) != 4:
            raise WeedsegError(f"{self.path}: expected one NCHW image input, found {self.engine.input_count} "
                               f"input(s), the first shaped {shape}")
        if shape[1] != 3 or not self.engine.input_is_float:
            raise WeedsegError(f"{self.path}: the model takes {shape[1]}-channel {self.engine.input_type} images; "
                               "weedseg feeds 3-channel float RGB, export the model with `weedseg export`")
        channels = self.engine.output_channels
        if channels is not None and channels != len(self.info.classes):
            raise WeedsegError(f"{self.path}: the model outputs {channels} classes but its metadata names "
                               f"{len(self.info.classes)} ({', '.join(self.info.classes)}); re-export it")
        check_output_size(self.engine.run, self.info, str(self.path))
        if engine == "auto":
            int8 = DEFAULT_INT8_MODEL if self.path.resolve() == DEFAULT_MODEL.resolve() and DEFAULT_INT8_MODEL.is_file() \
                else None
            self.engine, self.path = choose_faster(self.path, self.engine, threads, int8, spin)
            self.info = ModelInfo.from_props(self.engine.metadata, str(self.path))
        self.provider = self.engine.provider
        # what familiarity scores with: the model's statistics, where it also outputs the features they describe
        self.familiarity = self.info.familiarity if self.engine.has_features else None
        self._scale = (1.0 / (255.0 * np.asarray(self.info.std, np.float32))).astype(np.float32)
        self._shift = (np.asarray(self.info.mean, np.float32) / np.asarray(self.info.std, np.float32)).astype(np.float32)
        log.info("engine: %s %s, %s, on %s (%s threads): %s", self.engine.name, self.engine.version,
                 self.engine.precision.upper(), self.provider, threads, self.path)

    def run(self, batch: np.ndarray, features: list[np.ndarray] | None = None) -> np.ndarray:
        """Logits (N, classes, H, W) for a normalised float32 batch (N, 3, H, W). With a `features` list and a
        model that outputs them, the batch's pooled encoder features (N, D) are appended to it (of the batch as
        given, not of its TTA copies): what familiarity scores (weedseg.familiarity)."""
        wanted = features is not None and self.engine.has_features

        def call(b: np.ndarray) -> np.ndarray:
            nonlocal wanted
            if not wanted:
                return self.engine.run(np.ascontiguousarray(b))
            logits, pooled = self.engine.run_features(np.ascontiguousarray(b))
            features.append(pooled)
            wanted = False  # the first view is the batch as given
            return logits

        return tta_logits(call, batch, self.tta)

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> normalised 3xHxW float32, as the model was trained: one OpenCV pass per colour plane
        (30 times faster than numpy broadcasting over the last axis and transposing, docs/inference.md)."""
        x = np.empty((3, *rgb.shape[:2]), np.float32)
        for c, plane in enumerate(cv2.split(rgb)):
            cv2.addWeighted(plane, float(self._scale[c]), plane, 0.0, -float(self._shift[c]), dst=x[c], dtype=cv2.CV_32F)
        return x
