"""Inference engines (ONNX Runtime, OpenVINO, auto) on the shipped model and real peanut images, and
`weedseg predict --outputs`."""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest

from weedseg import WeedsegError
from weedseg.cli import build_parser, main
from weedseg.data.io import read_rgb
from weedseg.data.transforms import resize_short_side
from weedseg.infer import engines
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.tiling import run_padded


@pytest.fixture(scope="module")
def peanut_batch(peanut_root) -> np.ndarray:
    """Two real test photos at the shipped model's resolution, as one batch."""
    seg = Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="onnxruntime")
    images = sorted((peanut_root / "images").glob("*.jpg"))[:2]
    return np.stack([seg.model_input(resize_short_side(read_rgb(p), seg.info.input_short_side)) for p in images])


def masks(seg: Segmenter, batch: np.ndarray) -> np.ndarray:
    return run_padded(seg.run, batch, seg.info.size_multiple).argmax(1)


@pytest.mark.parametrize("model, least_agreement", [(DEFAULT_MODEL, 0.999),
                                                     (DEFAULT_MODEL.with_name("weedseg-peanut-default.int8.onnx"), 0.97)])
def test_openvino_masks_agree_with_onnxruntime_fp32(peanut_batch, model, least_agreement):
    pytest.importorskip("openvino")
    reference = masks(Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="onnxruntime"), peanut_batch)
    seg = Segmenter(model, device="cpu", threads=1, engine="openvino")
    assert seg.engine.name == "openvino" and seg.info.classes == ["soil", "crop", "weed"]
    assert seg.engine.precision == ("int8" if "int8" in model.name else seg.engine.precision)
    assert (masks(seg, peanut_batch) == reference).mean() >= least_agreement


def test_auto_times_the_engines_once_and_remembers(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="auto")
    choices = json.loads((tmp_path / "weedseg" / "engines.json").read_text())
    (choice,) = choices.values()
    assert set(choice["images_per_s"]) == {"onnxruntime", "openvino", "onnxruntime int8", "openvino int8"}
    assert choice["engine"] == max(choice["images_per_s"], key=choice["images_per_s"].get)
    assert f"{first.engine.name}{' int8' if first.engine.precision == 'int8' else ''}" == choice["engine"]
    assert first.path.name.endswith(".int8.onnx") == choice["engine"].endswith(" int8")

    def no_timing(*_):
        raise AssertionError("timed again")

    monkeypatch.setattr(engines, "images_per_second", no_timing)
    assert Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="auto").engine.name == choice["engine"].split()[0]


@pytest.mark.parametrize("step", ["read_model", "compile_model", "run"])
def test_auto_falls_back_to_onnxruntime_when_openvino_fails(tmp_path, monkeypatch, caplog, step):
    ov = pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def fails(*_args, **_kwargs):
        raise RuntimeError(f"Exception from src/core: {step} failed\nthe rest of OpenVINO's trace")

    monkeypatch.setattr(engines.OpenVinoEngine if step == "run" else ov.Core, step, fails)
    with caplog.at_level(logging.WARNING, logger=engines.__name__):
        seg = Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="auto")
    assert seg.engine.name == "onnxruntime"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{step} failed" in warning and "onnxruntime runs it" in warning and "\n" not in warning


def test_remembered_choice_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engines.remember("model|cpu|1 threads", "onnxruntime", {"onnxruntime": 10.0, "openvino": 5.0})
    assert [p.name for p in (tmp_path / "weedseg").iterdir()] == ["engines.json"]
    assert engines.remembered("model|cpu|1 threads") == "onnxruntime"

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engines.os, "replace", full_disk)
    engines.remember("model|cpu|2 threads", "openvino", {"onnxruntime": 5.0, "openvino": 10.0})  # only logged
    assert [p.name for p in (tmp_path / "weedseg").iterdir()] == ["engines.json"]
    assert engines.remembered("model|cpu|2 threads") is None


def test_engine_errors_are_one_line():
    with pytest.raises(WeedsegError, match="unknown engine"):
        Segmenter(DEFAULT_MODEL, engine="tensorrt")
    ov = pytest.importorskip("openvino")
    if engines.cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has bf16")
    with pytest.raises(WeedsegError, match="no native bf16"):
        engines.OpenVinoEngine(DEFAULT_MODEL, threads=1, bf16=True)


def test_predict_outputs_mask_only_then_all(tmp_path, peanut_root):
    image = sorted((peanut_root / "images").glob("*.jpg"))[0]
    out = tmp_path / "out"
    assert main(["predict", str(image), "--out", str(out), "--outputs", "mask", "--engine", "onnxruntime"]) == 0
    assert (out / f"{image.stem}.mask.png").is_file()
    rest = [out / f"{image.stem}.{kind}" for kind in ("overlay.jpg", "grid.csv", "spray.geojson")]
    assert not any(p.exists() for p in rest)
    assert main(["predict", str(image), "--out", str(out), "--engine", "onnxruntime"]) == 0  # the rest is added
    assert all(p.is_file() for p in rest)
    with pytest.raises(SystemExit):  # a usage error
        main(["predict", str(image), "--out", str(out), "--outputs", "mask,spray"])


@pytest.mark.parametrize("engine", ["auto", "openvino"])
def test_unusable_models_fail_before_any_timing(tmp_path, monkeypatch, engine):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    onnx = pytest.importorskip("onnx")
    bare = onnx.load(str(DEFAULT_MODEL))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(WeedsegError, match="not a weedseg ONNX model"):
        Segmenter(tmp_path / "bare.onnx", device="cpu", threads=1, engine=engine)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(WeedsegError, match="cannot load ONNX model"):
        Segmenter(tmp_path / "junk.onnx", device="cpu", threads=1, engine=engine)
    assert not (tmp_path / "weedseg").exists()  # nothing timed or remembered


def test_the_python_api_and_the_cli_default_to_the_same_engine():
    cli_default = build_parser(["predict"]).parse_args(["predict", "x.jpg", "--out", "o"]).engine
    assert inspect.signature(Segmenter).parameters["engine"].default == cli_default == engines.DEFAULT_ENGINE


def test_auto_considers_the_int8_version_of_the_shipped_model_only(tmp_path, monkeypatch):
    """Another model's `.int8.onnx` may come from another checkpoint: auto runs the file it is given."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "m.onnx").write_bytes(DEFAULT_MODEL.read_bytes())
    (tmp_path / "m.int8.onnx").write_bytes(DEFAULT_MODEL.with_name("weedseg-peanut-default.int8.onnx").read_bytes())
    seg = Segmenter(tmp_path / "m.onnx", device="cpu", threads=1, engine="auto")
    assert seg.path == tmp_path / "m.onnx" and seg.engine.precision != "int8"
    if (tmp_path / "weedseg" / "engines.json").is_file():  # timed: OpenVINO is installed
        (choice,) = json.loads((tmp_path / "weedseg" / "engines.json").read_text()).values()
        assert set(choice["images_per_s"]) == {"onnxruntime", "openvino"}


def test_model_input_is_the_training_normalisation():
    seg = Segmenter(DEFAULT_MODEL, device="cpu", threads=1, engine="onnxruntime")
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    expected = ((rgb / 255.0 - np.asarray(seg.info.mean)) / np.asarray(seg.info.std)).transpose(2, 0, 1)
    x = seg.model_input(rgb)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, expected, atol=1e-5)
