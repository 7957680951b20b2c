"""The engines that run an exported weedseg ONNX model: ONNX Runtime (always installed) and OpenVINO
(`pip install 'weedseg[openvino]'`).

`auto` takes CUDA through ONNX Runtime when it sees a GPU; on the CPU it times every installed
engine on the model once (a few passes at the model's resolution; for the shipped model, on its
INT8 version too), keeps the fastest and remembers the choice per model file, CPU and thread count
in ~/.cache/weedseg/engines.json. OpenVINO
runs an FP32 model with a bf16 inference precision hint on CPUs that have native bf16 (AVX-512 BF16
or AMX), FP32 elsewhere, and a QDQ model (`weedseg export --int8`) in INT8.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import WeedsegError
from ..familiarity import FEATURES_OUTPUT
from .atomic import atomic_write

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnxruntime", "openvino")
DEFAULT_ENGINE = "auto"  # of the Python API (Segmenter) and of `weedseg predict --engine`
TIMED_PASSES = 5


class Engine(Protocol):
    """What a Segmenter needs from an engine."""

    name: str  # onnxruntime or openvino
    version: str
    precision: str  # fp32, bf16 or int8: what the engine computes in
    provider: str  # where it runs, e.g. CPUExecutionProvider
    metadata: dict[str, str]  # the model's ONNX metadata_props
    input_count: int
    input_shape: list  # NCHW; dynamic dimensions are not ints
    input_type: str  # as the engine names it, e.g. tensor(float) or f32
    input_is_float: bool
    output_channels: int | None
    has_features: bool  # the model outputs pooled encoder features too (weedseg.familiarity)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes, H, W) for a normalised float32 batch (N, 3, H, W)."""

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the pooled encoder features (N, D), from one call; only where `has_features`."""


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


class OnnxRuntimeEngine:
    """An ONNX Runtime session; `spin=False` stops idle threads from busy-waiting, leaving the cores to the
    decoding and writing threads of a pipeline."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            # QDQ propagation would move the INT8 model's first quantisation above the stem's max-pool,
            # whose uint8 kernel is ~2x slower than FP32 there; FP32 models have no QDQ nodes to move.
            self.session = ort.InferenceSession(str(path), opts, providers=choose_providers(device),
                                                disabled_optimizers=["QDQPropagationTransformer"])
        except WeedsegError:
            raise
        except Exception as exc:  # not ONNX, truncated, unsupported operators ...
            raise WeedsegError(f"cannot load ONNX model {path} ({type(exc).__name__}: {exc})") from exc
        self.version = ort.__version__
        self.provider = self.session.get_providers()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = self.metadata.get("weedseg.precision", "fp32")
        first_input, first_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_count = len(self.session.get_inputs())
        self.input_name = first_input.name
        self.input_shape = list(first_input.shape)
        self.input_type = first_input.type
        self.input_is_float = first_input.type == "tensor(float)"
        channels = first_output.shape[1] if len(first_output.shape) > 1 else None
        self.output_channels = channels if isinstance(channels, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_features = self.output_names[1:2] == [FEATURES_OUTPUT]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names[:1], {self.input_name: batch})[0]

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(self.output_names[:2], {self.input_name: batch})
        return logits, features


def openvino_available() -> bool:
    """True when the OpenVINO runtime can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16(core: object) -> bool:
    """Whether OpenVINO's CPU plugin computes natively in bf16 here (AVX-512 BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # type: ignore[attr-defined]


class OpenVinoEngine:
    """An OpenVINO CPU compiled model. `bf16`: None uses a bf16 precision hint where the CPU has bf16."""

    name = "openvino"
    provider = "CPU"

    def __init__(self, path: Path, threads: int, bf16: bool | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise WeedsegError("--engine openvino needs OpenVINO: pip install 'weedseg[openvino]'") from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # not ONNX, truncated, unsupported operators ...
            raise WeedsegError(f"cannot load ONNX model {path} in OpenVINO ({type(exc).__name__}: {exc})") from exc
        # OpenVINO keeps an ONNX model's metadata_props under rt_info "framework"
        keys = model.get_rt_info(["framework"]).astype(dict) if model.has_rt_info(["framework"]) else {}
        self.metadata = {key: model.get_rt_info(["framework", key]).astype(str) for key in keys}
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        use_bf16 = cpu_has_bf16(core) if bf16 is None else bf16
        if use_bf16 and not cpu_has_bf16(core):
            raise WeedsegError("this CPU has no native bf16 (AVX-512 BF16 or AMX); run OpenVINO in FP32")
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if use_bf16 else "f32"}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # an operator or precision the CPU plugin does not support ...
            raise WeedsegError(f"cannot compile ONNX model {path} in OpenVINO ({type(exc).__name__}: {exc})") from exc
        self.precision = "int8" if quantized else ("bf16" if use_bf16 else "fp32")
        self.version = ov.get_version().split("-")[0]
        first_input = model.inputs[0]
        self.input_shape = [d.get_length() if d.is_static else "?" for d in first_input.get_partial_shape()]
        self.input_type = first_input.get_element_type().get_type_name()
        self.input_is_float = first_input.get_element_type() == ov.Type.f32
        channels = model.outputs[0].get_partial_shape()[1]
        self.output_channels = channels.get_length() if channels.is_static else None
        self.has_features = len(model.outputs) > 1 and FEATURES_OUTPUT in model.outputs[1].get_names()
        self.input_count = len(model.inputs)

    def run(self, batch: np.ndarray) -> np.ndarray:
        # one request per call: a compiled model may be shared by threads (the page's visitors)
        return self.compiled.create_infer_request().infer({0: batch})[0]

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled.create_infer_request().infer({0: batch})
        return result[0], result[1]


def cache_file() -> Path:
    """Where `auto` remembers its choices ($XDG_CACHE_HOME or ~/.cache, then weedseg/engines.json)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weedseg" / "engines.json"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def choice_key(path: Path, threads: int) -> str:
    """One model file version on one CPU with one thread count."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{cpu_name()}|{threads} threads"


def images_per_second(engine: Engine, batch: np.ndarray) -> float:
    """Median speed of TIMED_PASSES passes after one warm-up pass."""
    engine.run(batch)
    times = []
    for _ in range(TIMED_PASSES):
        start = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / float(np.median(times))


_cache_lock = threading.Lock()


def remember(key: str, name: str, rates: dict[str, float]) -> None:
    """Store a choice; a cache that cannot be written is only logged."""
    path = cache_file()
    with _cache_lock:
        try:
            choices = json.loads(path.read_text()) if path.is_file() else {}
            choices[key] = {"engine": name, "images_per_s": {k: round(v, 2) for k, v in rates.items()}}
            atomic_write(path, json.dumps(choices, indent=1).encode())
        except (OSError, ValueError) as exc:
            log.debug("engine choice not cached (%s)", exc)


def remembered(key: str) -> str | None:
    """The engine chosen before for this key, if any."""
    try:
        return json.loads(cache_file().read_text()).get(key, {}).get("engine")
    except (OSError, ValueError, AttributeError):
        return None


def probe_batch(metadata: dict[str, str]) -> np.ndarray:
    """One 4:3 input at the model's resolution (short side 256 for native-resolution models)."""
    short = int(metadata.get("weedseg.input_short_side", "256") or 256) or 256
    multiple = int(metadata.get("weedseg.size_multiple", "32") or 32)
    long = -(-round(short * 4 / 3) // multiple) * multiple
    short = -(-short // multiple) * multiple
    return np.random.default_rng(0).standard_normal((1, 3, short, long)).astype(np.float32)


def open_engine(path: Path, engine: str = "auto", device: str = "auto", threads: int = 1,
                spin: bool = True) -> Engine:
    """The engine named for `path`; for `auto`, ONNX Runtime, which `choose_faster` may replace once the
    model has been checked."""
    if engine not in ENGINES:
        raise WeedsegError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
    if engine == "openvino":
        if device == "cuda":
            raise WeedsegError("--engine openvino runs on the CPU; use --engine onnxruntime with --device cuda")
        return OpenVinoEngine(path, threads)
    return OnnxRuntimeEngine(path, device, threads, spin)


def choose_faster(path: Path, ort_engine: Engine, threads: int, int8: Path | None = None,
                  spin: bool = True) -> tuple[Engine, Path]:
    """`--engine auto` for a checked model: ONNX Runtime on a GPU, else the fastest of ONNX Runtime and (where
    installed) OpenVINO on `path` and, when given, on its INT8 version `int8` (the shipped model's), remembered
    for this model, CPU and thread count, else timed now. Returns the engine and the model file it runs. A model
    OpenVINO cannot read, compile or run stays with ONNX Runtime, with a one-line warning."""
    if ort_engine.provider != "CPUExecutionProvider":
        return ort_engine, path
    files = {"": path, **({" int8": int8} if int8 is not None else {})}
    # every candidate by the name it is remembered under: the model file it runs and how to open it
    candidates: dict[str, tuple[Path, Callable[[], Engine]]] = {}
    for kind, model in files.items():
        candidates[f"onnxruntime{kind}"] = (model, (lambda: ort_engine) if model == path else
                                            (lambda m=model: OnnxRuntimeEngine(m, "cpu", threads, spin)))
        if openvino_available():
            candidates[f"openvino{kind}"] = (model, lambda m=model: OpenVinoEngine(m, threads))
    names = list(candidates)
    if names == ["onnxruntime"]:
        return ort_engine, path
    key = choice_key(path, threads) + ("|int8 considered" if int8 is not None else "")
    chosen = remembered(key)
    if chosen == "onnxruntime" or chosen not in (None, *names):
        return ort_engine, path
    if chosen is not None:
        try:
            return candidates[chosen][1](), candidates[chosen][0]
        except Exception:  # noqa: BLE001 - timed again below, where a failure is explained
            pass
    batch = probe_batch(ort_engine.metadata)
    rates, built, failed = {}, {}, {}
    for name in names:
        try:
            built[name] = candidates[name][1]()
            rates[name] = images_per_second(built[name], batch)
        except Exception as exc:  # noqa: BLE001 - OpenVINO and the INT8 model are optional: ONNX Runtime remains
            reason = str(exc) if isinstance(exc, WeedsegError) else f"{type(exc).__name__}: {exc}"
            failed.setdefault("OpenVINO" if name.startswith("openvino") else "ONNX Runtime (INT8)", reason)
    for runtime, reason in failed.items():
        log.warning("engine auto: %s cannot run this model, so onnxruntime runs it (%s)", runtime,
                    reason.strip().splitlines()[0][:300])
    best = max(rates, key=rates.get)
    log.info("engine auto: %s (images/s at %dx%d, %d threads: %s); remembered in %s", best, batch.shape[3],
             batch.shape[2], threads, ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), cache_file())
    remember(key, best, rates)
    return built[best], candidates[best][0]
