"""An ONNX Runtime session for an exported weedseg model: providers, threads, input preparation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import WeedsegError
from ..resources import WEIGHTS_DIR
from .metadata import ModelInfo

log = logging.getLogger(__name__)

DEFAULT_MODEL = WEIGHTS_DIR / "weedseg-peanut-default.onnx"


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


def choose_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for `device` (auto: CUDA when onnxruntime-gpu sees a GPU, else CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("auto", "cuda"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device == "cuda":
            raise WeedsegError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu "
                               f"instead of onnxruntime); available: {', '.join(available)}")
        return ["CPUExecutionProvider"]
    raise WeedsegError(f"unknown device {device!r}; use auto, cpu or cuda")


class Segmenter:
    """An exported weedseg model in an ONNX Runtime session, with the metadata that says how to feed it."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0, spin: bool = True) -> None:
        """`spin=False` stops idle ONNX Runtime threads from busy-waiting, leaving the cores to the
        decoding and writing threads of a pipeline."""
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or cpu_count()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            # QDQ propagation would move the INT8 model's first quantisation above the stem's max-pool,
            # whose uint8 kernel is ~2x slower than FP32 there; FP32 models have no QDQ nodes to move.
            self.session = ort.InferenceSession(str(self.path), opts, providers=choose_providers(device),
                                                disabled_optimizers=["QDQPropagationTransformer"])
        except WeedsegError:
            raise
        except Exception as exc:  # not ONNX, truncated, unsupported operators ...
            raise WeedsegError(f"cannot load ONNX model {self.path} ({type(exc).__name__}: {exc})") from exc
        self.info = ModelInfo.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.provider = self.session.get_providers()[0]
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise WeedsegError(f"{self.path}: expected one NCHW image input, found {[i.shape for i in inputs]}")
        channels = outputs[0].shape[1]
        if isinstance(channels, int) and channels != len(self.info.classes):
            raise WeedsegError(f"{self.path}: the model outputs {channels} classes but its metadata names "
                               f"{len(self.info.classes)} ({', '.join(self.info.classes)}); re-export it")
        self.input_name = inputs[0].name
        self._scale = (1.0 / (255.0 * np.asarray(self.info.std, np.float32))).astype(np.float32)
        self._shift = (np.asarray(self.info.mean, np.float32) / np.asarray(self.info.std, np.float32)).astype(np.float32)
        log.info("ONNX Runtime %s on %s (%s threads): %s", ort.__version__, self.provider,
                 opts.intra_op_num_threads, self.path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes, H, W) for a normalised float32 batch (N, 3, H, W)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> normalised 3xHxW float32, as the model was trained."""
        x = rgb.astype(np.float32) * self._scale - self._shift
        return np.ascontiguousarray(x.transpose(2, 0, 1))
