"""ONNX export: parity with torch on odd sizes and batches, metadata round trip, INT8, clear errors."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from weedseg import WeedsegError, __version__
from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.cli import main
from weedseg.export import export_onnx, model_info, save_with_metadata
from weedseg.infer.metadata import ModelInfo, read_model_info
from weedseg.infer.session import Segmenter


@pytest.fixture(scope="module")
def exported(trained_run, peanut_root, tmp_path_factory) -> tuple[Path, str]:
    """`weedseg export --int8` of the trained test model, and what it printed."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(trained_run / "best.pt"), "--out", str(out), "--int8", "--calibration-images", "8",
                     "--data-root", str(peanut_root)])
    assert code == 0
    return out, printed.getvalue()


def test_export_prints_self_check_and_int8_cost(exported):
    out, printed = exported
    assert "max abs logit difference" in printed and "mask agreement 100.000 %" in printed
    assert out.with_name("model.int8.onnx").is_file()
    line = next(ln for ln in printed.splitlines() if ln.startswith("INT8 model"))
    fp32, int8 = map(float, re.search(r"FP32 ([\d.]+), INT8 ([\d.]+)", line).groups())
    assert fp32 > 30 and abs(fp32 - int8) < 3.0  # a short training run; INT8 must stay close


@pytest.mark.parametrize("shape", [(1, 3, 257, 341), (3, 3, 256, 352), (1, 3, 33, 45), (2, 3, 96, 64)])
def test_onnx_matches_torch_at_any_size_and_batch(exported, trained_run, shape):
    model = model_from_checkpoint(load_checkpoint(trained_run / "best.pt"))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    got = Segmenter(exported[0], device="cpu", engine="onnxruntime").run(x.numpy())
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_metadata_round_trip(exported, trained_run):
    ckpt = load_checkpoint(trained_run / "best.pt")
    info = read_model_info(str(exported[0]))
    assert info == model_info(ckpt, 256, 32)
    assert (info.classes, info.size_multiple, info.input_short_side, info.weedseg_version) == (
        ["soil", "crop", "weed"], 32, 256, __version__)
    assert info.mean == ckpt["normalization"]["mean"] and info.colors == ckpt["colors"]
    props = {p.key: p.value for p in onnx.load(str(exported[0])).metadata_props}
    assert ModelInfo.from_props(props, "x") == info
    int8 = read_model_info(str(exported[0].with_name("model.int8.onnx")))
    assert int8.precision == "int8" and int8.classes == info.classes
    seg = Segmenter(exported[0].with_name("model.int8.onnx"), device="cpu", engine="onnxruntime")
    assert seg.provider == "CPUExecutionProvider"


def test_export_fails_loudly_past_tolerance(random_checkpoint, peanut_root, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["export", str(random_checkpoint), "--out", str(out), "--tolerance", "0", "--data-root", str(peanut_root)])
    assert code == 2
    assert "does not reproduce torch" in capsys.readouterr().err
    assert not out.exists()


def test_model_without_or_with_wrong_metadata_gives_clear_error(random_checkpoint, tmp_path):
    ckpt = load_checkpoint(random_checkpoint)
    good = tmp_path / "good.onnx"
    info = export_onnx(ckpt, good, 256)

    bare = onnx.load(str(good))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(WeedsegError, match="not a weedseg ONNX model"):
        Segmenter(tmp_path / "bare.onnx")

    two_classes = ModelInfo(**{**info.__dict__, "classes": ["soil", "plant"], "colors": [[0, 0, 0], [0, 255, 0]]})
    save_with_metadata(good, tmp_path / "wrong.onnx", two_classes)
    with pytest.raises(WeedsegError, match="outputs 3 classes but its metadata names 2"):
        Segmenter(tmp_path / "wrong.onnx")

    props = info.to_props()
    props["weedseg.normalization"] = '{"mean": [0.5, 0.5]}'
    with pytest.raises(WeedsegError, match="metadata"):
        ModelInfo.from_props(props, "m.onnx")

    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(WeedsegError, match="cannot load ONNX model"):
        Segmenter(tmp_path / "junk.onnx")
