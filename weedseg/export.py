"""ONNX export of a weedseg checkpoint: dynamic batch/height/width, self-describing metadata,
a self-check against torch on real images, and optional static INT8 quantisation."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from . import WeedsegError, __version__
from .checkpoint import familiarity_stats, load_checkpoint, model_from_checkpoint
from .data import EvalResize, LabelledData, SegmentationDataset
from .data.io import read_rgb
from .data.transforms import resize_short_side
from .evaluate import model_short_side
from .familiarity import FEATURES_OUTPUT, UNKNOWN_MESSAGE
from .familiarity.fit import describe_fit, pooled_features, refit_exported
from .infer.atomic import part_path
from .infer.metadata import ModelInfo
from .infer.session import Segmenter
from .metrics import ConfusionMatrix

INPUT_NAME, OUTPUT_NAME = "image", "logits"
OPSET = 17


class _ExportWrapper(nn.Module):
    """Pads every input to the size multiple (possibly by 0) and crops the logits back; the second output is the
    pooled encoder features (N, D) that familiarity scores (weedseg.familiarity).

    The U-Net decides in Python whether to pad, which tracing would freeze for the example size;
    here the pad is computed from the traced shape, so the exported graph is right for any
    height and width of at least one size multiple.
    """

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        logits, features = self.model.segment(x)
        return logits[..., :h, :w], pooled_features(features)


def model_info(ckpt: dict, input_short_side: int, size_multiple: int, precision: str = "fp32",
               train_gsd_cm: float | None = None) -> ModelInfo:
    """The ONNX metadata describing checkpoint `ckpt`."""
    return ModelInfo(
        model_name=ckpt["model"]["name"], classes=list(ckpt["classes"]), colors=ckpt["colors"],
        mean=ckpt["normalization"]["mean"], std=ckpt["normalization"]["std"], size_multiple=size_multiple,
        input_short_side=input_short_side, weedseg_version=__version__, precision=precision,
        train_gsd_cm=train_gsd_cm, familiarity=familiarity_stats(ckpt),
    )


def save_with_metadata(src: str | Path, out: str | Path, info: ModelInfo) -> None:
    """Copy ONNX model `src` to `out` with `info` as its metadata_props, atomically (temp file + rename)."""
    import onnx

    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_props())
    model.producer_name, model.producer_version = "weedseg", __version__
    out = Path(out)
    tmp = part_path(out)
    onnx.save(model, str(tmp))
    os.replace(tmp, out)


def export_onnx(ckpt: dict, out: str | Path, input_short_side: int, train_gsd_cm: float | None = None) -> ModelInfo:
    """Export the checkpoint's model to `out` (FP32, dynamic batch/height/width) with its metadata
    (`train_gsd_cm`: the training images' ground sampling distance at `input_short_side`, where known)."""
    model = model_from_checkpoint(ckpt)
    multiple = int(getattr(model, "size_multiple", 32))
    wrapper = _ExportWrapper(model, multiple).eval()
    info = model_info(ckpt, input_short_side, multiple, train_gsd_cm=train_gsd_cm)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on the U-Net's own (unused) pad branch
            torch.onnx.export(wrapper, torch.zeros(1, 3, 2 * multiple, 3 * multiple), str(raw), dynamo=False,
                              opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, FEATURES_OUTPUT],
                              dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic, FEATURES_OUTPUT: {0: "batch"}})
        save_with_metadata(raw, out, info)
    return info


@dataclass
class ParityReport:
    """How closely ONNX Runtime reproduces torch on a set of inputs."""

    inputs: int
    max_abs_diff: float
    mask_agreement: float


def check_parity(seg: Segmenter, model: nn.Module, images: list[np.ndarray]) -> ParityReport:
    """Compare ONNX Runtime with torch on real RGB images: each at the model's input resolution (the
    first two also as one batch of 2), the first at full resolution and an odd-sized 257 x 341 crop."""
    small = [seg.model_input(resize_short_side(im, seg.info.input_short_side)) for im in images]
    batches = [x[None] for x in small] + [seg.model_input(images[0])[None], seg.model_input(images[0][:257, :341])[None]]
    if len(small) >= 2 and small[0].shape == small[1].shape:
        batches.append(np.stack(small[:2]))
    worst, same, total = 0.0, 0, 0
    for x in batches:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = seg.run(x)
        if got.shape != ref.shape:
            raise WeedsegError(f"ONNX export check: output shape {got.shape} differs from torch {ref.shape} "
                               f"for input {x.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        same += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return ParityReport(len(batches), worst, same / total)


def evaluate_onnx(path: str | Path, data: LabelledData, split: str, device: str = "cpu") -> dict:
    """mIoU of an exported model on a labelled split, scored as training validates (short side resize)."""
    seg = Segmenter(path, device=device, engine="onnxruntime")
    info = seg.info
    ds = SegmentationDataset(data.layout, data.splits[split], EvalResize(info.input_short_side), info.mean, info.std)
    cm = ConfusionMatrix(len(info.classes))
    for i in tqdm(range(len(ds)), desc=f"scoring {Path(path).name}", unit="img", leave=False):
        image, mask = ds[i]
        logits = seg.run(image.numpy()[None])
        cm.update(torch.from_numpy(logits.argmax(1)[0]), mask)
    return cm.summary(info.classes)


class CalibrationImages(CalibrationDataReader):
    """Feeds real field images, one at a time at the model's input resolution, to the INT8 calibrator."""

    def __init__(self, ds: SegmentationDataset, count: int) -> None:
        step = max(1, len(ds) // max(1, count))
        self.indices = list(range(0, len(ds), step))[:count]
        self.ds, self.pos = ds, 0
        self.progress = tqdm(total=len(self.indices), desc="calibrating INT8", unit="img", leave=False)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.indices):
            self.progress.close()
            return None
        image, _ = self.ds[self.indices[self.pos]]
        self.pos += 1
        self.progress.update()
        return {INPUT_NAME: image.numpy()[None]}

    def rewind(self) -> None:
        self.pos = 0


def float_ends(path: Path) -> list[str]:
    """Nodes kept in FP32: everything before the second convolution (input padding, the 3-channel stem
    convolution and its pooling, which ONNX Runtime runs slower in INT8 than in FP32) and everything
    after the last convolution (full-resolution upsampling and cropping, so logits keep full precision)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    return [n.name for i, n in enumerate(nodes) if i < convs[1] or i > convs[-1]]


def quantize_int8(fp32_path: str | Path, out: str | Path, data: LabelledData, split: str = "train",
                  images: int = 32) -> ModelInfo:
    """Static INT8 quantisation (QDQ, per-channel weights) calibrated on real images of `split`.

    Activations are uint8 and weights int8 (U8S8): ONNX Runtime's CPU provider fuses that into
    QLinearConv on x86; with int8 activations most convolutions stayed in float between Q/DQ pairs.
    The two ends of the network stay FP32 (see `float_ends`). Familiarity statistics are fitted again on the
    INT8 model's own features, from `data`'s train and val photos.
    """
    info = Segmenter(fp32_path, device="cpu", engine="onnxruntime").info
    ds = SegmentationDataset(data.layout, data.splits[split], EvalResize(info.input_short_side), info.mean, info.std)
    reader = CalibrationImages(ds, images)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_ends(prepared))
        familiarity = (refit_exported(quantized, data, info.familiarity, info.mean, info.std)
                       if info.familiarity else None)
        if familiarity:
            print(f"{describe_fit(familiarity)}; refitted on the INT8 model's own features")
        int8 = ModelInfo(**{**info.__dict__, "precision": "int8", "familiarity": familiarity})
        save_with_metadata(quantized, out, int8)
    return int8


def int8_path(fp32_path: str | Path) -> Path:
    """model.onnx -> model.int8.onnx"""
    p = Path(fp32_path)
    return p.with_name(p.stem + ".int8" + p.suffix)


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: LabelledData, input_short_side: int | None = None,
                      check_split: str = "val", check_images: int = 4, tolerance: float = 1e-3,
                      int8: bool = False, calibration_images: int = 32, score_split: str = "val",
                      train_gsd_cm: float | None = None) -> dict:
    """`weedseg export`: export, self-check against torch, optionally quantise and score FP32 vs INT8.

    Prints what it measures and raises WeedsegError when ONNX Runtime disagrees with torch beyond
    `tolerance` (max abs logit difference) or on more than 0.1 % of mask pixels.
    """
    out = Path(out)
    if out.is_dir():
        raise WeedsegError(f"--out {out} is a folder; give the model file to write, e.g. --out {out / 'model.onnx'}")
    ckpt = load_checkpoint(checkpoint)
    if input_short_side is None:
        input_short_side = model_short_side(ckpt)
    q = int8_path(out)
    if q.is_dir():
        raise WeedsegError(f"{q}, where the INT8 model of --out {out} goes, is a folder; choose another --out")
    temps = [part_path(out)] + ([part_path(q)] if int8 else [])
    try:
        try:  # before minutes of work, not after
            out.parent.mkdir(parents=True, exist_ok=True)
            temps[0].write_bytes(b"")
        except OSError as exc:
            raise WeedsegError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out") from exc
        info = export_onnx(ckpt, temps[0], input_short_side, train_gsd_cm)
        print(f"exported {checkpoint} ({info.model_name}, classes {', '.join(info.classes)}, "
              f"input short side {info.input_short_side or 'native'})")
        print(f"familiarity: threshold {info.familiarity.threshold:.2f} on {info.familiarity.dim} pooled features, "
              f"fitted on {info.familiarity.field} photos" if info.familiarity else f"note: {UNKNOWN_MESSAGE}")
        images = [read_rgb(s.image) for s in data.splits[check_split][: max(1, check_images)]]
        parity = check_parity(Segmenter(temps[0], device="cpu", engine="onnxruntime"), model_from_checkpoint(ckpt), images)
        print(f"self-check on {parity.inputs} real inputs vs torch: max abs logit difference "
              f"{parity.max_abs_diff:.2e}, mask agreement {100 * parity.mask_agreement:.3f} %")
        if parity.max_abs_diff > tolerance or parity.mask_agreement < 0.999:
            raise WeedsegError(f"ONNX export of {checkpoint} does not reproduce torch (max abs logit difference "
                               f"{parity.max_abs_diff:.2e} > {tolerance:g} or mask agreement below 99.9 %); "
                               f"nothing was written{' and the existing ' + str(out) + ' is unchanged' if out.exists() else ''}")
        report = {"onnx": str(out), "parity": parity.__dict__}
        if int8:
            quantize_int8(temps[0], temps[1], data, "train", calibration_images)
            fp32 = evaluate_onnx(temps[0], data, score_split)["miou"]
            i8 = evaluate_onnx(temps[1], data, score_split)["miou"]
            print(f"INT8 model: mIoU on {score_split} ({len(data.splits[score_split])} images) "
                  f"FP32 {100 * fp32:.2f}, INT8 {100 * i8:.2f} ({100 * (i8 - fp32):+.2f} points)")
            report.update(int8=str(q), miou_fp32=fp32, miou_int8=i8)
        for temp, final in zip(temps, [out, q]):  # only now are the old files replaced
            os.replace(temp, final)
            print(f"wrote {final}")
        if not int8 and q.is_file():  # the INT8 model of the model just replaced: another checkpoint, maybe another size
            q.unlink()
            print(f"removed {q}, the INT8 model of the {out.name} this export replaced (export with --int8 to "
                  "make a new one)")
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return report

