"""Hostile and careless inputs: bounded memory, no silent loss or mixing of outputs, one-line errors.

Every test writes its own hostile files; docs/reliability.md says what each one guarantees.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import filelock
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from streamlit.testing.v1 import AppTest

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.cli import main, metrics_path
from weedseg.data.io import DECODE_PIXEL_BYTES, RUN_MANIFEST, read_rgb
from weedseg.export import export_checkpoint, save_with_metadata
from weedseg.infer import atomic, image, outdir
from weedseg.infer.budget import MemoryBudget
from weedseg.infer.image import SessionBudget, decode_image
from weedseg.infer.metadata import ModelInfo
from weedseg.infer.session import Segmenter
from weedseg.resources import APP_SCRIPT, WEIGHTS_DIR
from weedseg.runtime import truncate_log


def photo(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A small colour photo (random pixels) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)).save(path)
    return path


def png_header_only(path: Path, width: int, height: int, bit_depth: int = 8, colour: int = 2) -> Path:
    """A tiny PNG whose header claims width x height (no pixel data): only a header check can refuse it cleanly."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def predict(*args: str) -> int:
    return main(["predict", *map(str, args)])


# --- 1. memory bounded by design ---------------------------------------------------------------------------

def test_pixel_budget_is_checked_from_the_header_before_decoding(tmp_path):
    with pytest.raises(WeedsegError, match="13000 x 13000 = 169.0 megapixels, over the limit of 50"):
        read_rgb(png_header_only(tmp_path / "onebit.png", 13000, 13000, bit_depth=1, colour=0))
    with pytest.raises(WeedsegError, match="over the limit of 50"):
        decode_image(png_header_only(tmp_path / "rgb.png", 8000, 7000).read_bytes())


def test_model_resolution_is_bounded_whatever_the_aspect_ratio(model, tmp_path):
    photo(tmp_path / "in" / "ok.png")
    Image.new("RGB", (2000, 1), (90, 140, 60)).save(tmp_path / "in" / "thin.png")
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "--model", model, "--out", out, "--short-side", "256") == 1
    rows = summary(out)
    assert rows["ok.png"]["status"] == "predicted"
    assert "would be 512000 x 256 = 131.1 megapixels, over the limit of 8" in rows["thin.png"]["error"]


def test_onnx_metadata_resolution_out_of_range_is_refused(model):
    props = Segmenter(model).info.to_props()
    with pytest.raises(WeedsegError, match="input_short_side must be 0 .* got 60000"):
        ModelInfo.from_props({**props, "weedseg.input_short_side": "60000"}, "m.onnx")


def test_read_ahead_is_bounded_in_pixels():
    budget = MemoryBudget(100)
    assert budget.try_take(60) and not budget.try_take(60) and budget.try_take(40)
    budget.give(100)
    assert budget.try_take(500)  # larger than the whole budget: let in alone
    assert not budget.try_take(1)


def test_page_session_budget(model, tmp_path, monkeypatch):
    budget = SessionBudget()
    budget.admit(100_000_000)
    with pytest.raises(WeedsegError, match="at most 150 megapixels of photos at once \\(100.0 held, this one 60.0\\)"):
        budget.admit(60_000_000)
    monkeypatch.setattr(image, "SESSION_FILES", 2)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(model.read_bytes())
    monkeypatch.setenv("WEEDSEG_MODELS", str(tmp_path / "models"))
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    uploads = [(f"{i}.png", photo(tmp_path / f"{i}.png", seed=i).read_bytes(), "image/png") for i in range(3)]
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["`2.png` could not be segmented: the page segments at most 2 photos at "
                                           "once; remove some from the uploader, or use `weedseg predict` for whole "
                                           "folders"]
    at.file_uploader[0].set_value(uploads[1:]).run()  # one removed: the refused photo is segmented now
    assert not at.exception and not at.error and [h.value for h in at.subheader][:2] == ["1.png", "2.png"]


def peak_rss_mb(tmp_path: Path, *command: str) -> tuple[float, str]:
    """Peak RSS in MB of `command` run as the only child of a fresh Python process, and its output."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
             "print(r.stdout + r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True,
                          cwd=tmp_path)
    *output, peak_kib = done.stdout.rstrip().split("\n")
    return int(peak_kib) / 1024, "\n".join(output)


def big_pngs(folder: Path, count: int) -> list[Path]:
    """`count` 7000 x 7000 (49 megapixel) field-coloured PNGs of about 650 KB each."""
    folder.mkdir(exist_ok=True)
    for i in range(count):
        Image.new("RGB", (7000, 7000), (90 + 10 * i, 140, 60)).save(folder / f"big{i}.png", compress_level=1)
    return sorted(folder.glob("big*.png"))


@pytest.mark.slow
def test_page_session_peak_memory(tmp_path):
    """The shipped model on the page: four 49-megapixel uploads, three segmented and held, the fourth refused,
    stay under 2 GB (docs/reliability.md)."""
    big_pngs(tmp_path / "in", 4)
    script = tmp_path / "page.py"
    script.write_text(f"""
from pathlib import Path
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(APP_SCRIPT)!r}, default_timeout=900)
at.run()
at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/png") for p in sorted(Path("in").glob("*.png"))]).run()
print("errors:", [e.value for e in at.error])
""")
    peak, output = peak_rss_mb(tmp_path, sys.executable, str(script))
    assert "errors: ['`big3.png` could not be segmented: the page holds at most 150 megapixels" in output, output
    print(f"page session peak RSS {peak:.0f} MB")  # quoted in docs/reliability.md (pytest -s)
    assert peak < 2000, f"peak RSS {peak:.0f} MB"


@pytest.mark.slow
def test_predict_peak_memory_on_hostile_folder(tmp_path):
    """Default settings, shipped model: three 49-megapixel PNGs of a few hundred KB, a 1-bit 169-megapixel PNG
    and a 2000 x 1 PNG in one folder stay under 1.5 GB (about 0.8 GB measured; docs/reliability.md)."""
    folder = tmp_path / "hostile"
    big_pngs(folder, 3)
    Image.new("1", (13000, 13000), 1).save(folder / "onebit.png")
    Image.new("RGB", (2000, 1), (90, 140, 60)).save(folder / "thin.png")
    for i in range(4):
        Image.new("RGB", (120, 1), (90 + i, 140, 60)).save(folder / f"thin120-{i}.png")  # 30720 x 256 each
    peak, _ = peak_rss_mb(tmp_path, sys.executable, "-m", "weedseg.cli", "predict", str(folder), "--out", "out",
                          "--short-side", "256")  # the 120 x 1 strips then sit just under the 8 MP budget
    rows = summary(tmp_path / "out")
    assert [rows[f"big{i}.png"]["status"] for i in range(3)] == ["predicted"] * 3
    assert rows["onebit.png"]["status"] == rows["thin.png"]["status"] == "failed"
    assert rows["thin120-0.png"]["status"] == "predicted"
    print(f"predict peak RSS {peak:.0f} MB")  # quoted in docs/reliability.md (pytest -s)
    assert peak < 1500, f"peak RSS {peak:.0f} MB"


# --- 2. no silent loss ------------------------------------------------------------------------------------

def test_output_names_never_collide(model, tmp_path):
    for i, name in enumerate(["a.jpg", "a.png", "a.jpg.png", "b.jpg", "b.jpg.png"]):
        photo(tmp_path / "in" / name, seed=i)
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0
    masks = [row["mask"] for row in summary(out).values()]
    assert len(set(masks)) == 5 and all((out / m).is_file() for m in masks)
    assert sorted(masks) == ["a.jpg.mask.png", "a.jpg.png.mask.png", "a.png.mask.png", "b.jpg.png.mask.png",
                             "b.mask.png"]


def test_failed_export_keeps_the_existing_model(checkpoint, peanut, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the working model")
    with pytest.raises(WeedsegError, match="does not reproduce torch.*existing .* is unchanged"):
        export_checkpoint(checkpoint, out, peanut, 64, check_images=1, tolerance=1e-30)
    assert out.read_bytes() == b"the working model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


def test_rerun_with_another_model_or_options_refuses_instead_of_mixing(model, tmp_path, capsys):
    photo(tmp_path / "in" / "a.png")
    other = tmp_path / "other.onnx"
    info = Segmenter(model).info
    save_with_metadata(model, other, ModelInfo(**{**info.__dict__, "model_name": "retrained"}))
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0
    manifest = json.loads((out / RUN_MANIFEST).read_text())
    assert manifest["model"]["sha256"] == outdir.file_sha256(model) and manifest["options"]["short_side"] == 64
    assert manifest["input"] == str((tmp_path / "in").resolve()) and manifest["model"]["classes"] == info.classes

    photo(tmp_path / "elsewhere" / "a.png")  # the same name from another folder must not pass as done
    assert predict(tmp_path / "elsewhere", "--model", model, "--out", out) == 2
    assert f"photos from {(tmp_path / 'in').resolve()} -> {(tmp_path / 'elsewhere').resolve()}" in capsys.readouterr().err

    assert predict(tmp_path / "in", "--model", other, "--out", out) == 2
    assert "holds outputs made with other settings (model model.onnx" in capsys.readouterr().err
    assert predict(tmp_path / "in", "--model", model, "--out", out, "--tile", "512") == 2
    assert "tile: 1024 -> 512" in capsys.readouterr().err
    assert predict(tmp_path / "in", "--model", model, "--out", out, "--tta") == 2
    assert "tta: None -> flip" in capsys.readouterr().err
    assert predict(tmp_path / "in", "--model", other, "--out", out, "--overwrite") == 0
    assert summary(out)["a.png"]["status"] == "predicted"
    assert json.loads((out / RUN_MANIFEST).read_text())["model"]["file"] == "other.onnx"


def test_outputs_older_than_the_settings_are_redone(model, tmp_path):
    """An --overwrite run killed half-way leaves outputs of the old settings: the run journal, emptied when the
    settings changed, does not list them, so the next run redoes them."""
    photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0
    (out / outdir.JOURNAL).write_bytes(b"")  # as if the --overwrite run was killed before it finished a.png
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0
    assert summary(out)["a.png"]["status"] == "predicted"


def test_out_is_locked_against_a_second_run(model, tmp_path, capsys):
    photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(out / outdir.LOCK):  # another run holds the folder
        assert predict(tmp_path / "in", "--model", model, "--out", out) == 2
    assert "another `weedseg predict` is writing into" in capsys.readouterr().err
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0  # released


def test_part_files_of_a_killed_run_are_removed(model, tmp_path):
    photo(tmp_path / "in" / "sub" / "a.png")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / ".a.mask.png.4242.part").write_bytes(b"half a mask")
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 0
    assert not list(out.rglob("*.part"))


def test_an_earlier_out_inside_the_input_is_not_read(model, tmp_path):
    photo(tmp_path / "in" / "a.png")
    assert predict(tmp_path / "in", "--model", model, "--out", tmp_path / "in" / "run1") == 0
    assert predict(tmp_path / "in", "--model", model, "--out", tmp_path / "in" / "run2") == 0
    assert list(summary(tmp_path / "in" / "run2")) == ["a.png"]
    assert predict(tmp_path / "in" / "run1", "--model", model, "--out", tmp_path / "run3") == 2  # outputs as input


def test_images_in_unreadable_folders_are_reported(model, tmp_path, monkeypatch, capsys):
    photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "locked" / "b.png")
    scandir = os.scandir

    def denied(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)  # root reads any folder, so the denial is simulated
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "--model", model, "--out", out) == 1
    rows = summary(out)
    assert rows["a.png"]["status"] == "predicted"
    locked = rows[str(tmp_path / "in" / "locked")]
    assert locked["status"] == "failed" and "cannot list this folder (Permission denied)" in locked["error"]


# --- 3. one clear line, never a traceback ----------------------------------------------------------------

@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a folder even root cannot write (sysfs)")
def test_unwritable_out_is_refused_before_inference(model, tmp_path, capsys, monkeypatch):
    photo(tmp_path / "in" / "a.png")
    monkeypatch.setattr(Segmenter, "run", lambda *a: pytest.fail("inference ran"))
    assert predict(tmp_path / "in", "--model", model, "--out", "/sys/kernel/weedseg-out") == 2
    assert "cannot write into --out /sys/kernel/weedseg-out" in capsys.readouterr().err
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: argparse.Namespace(free=5_000_000))
    assert predict(tmp_path / "in", "--model", model, "--out", tmp_path / "full") == 2
    assert "only 5 MB free" in capsys.readouterr().err


def test_disk_full_during_the_run_stops_it_with_one_line(model, tmp_path, capsys, monkeypatch):
    for i in range(3):
        photo(tmp_path / "in" / f"{i}.png", seed=i)
    write = atomic.atomic_write

    def full(path: Path, data: bytes) -> None:
        if path.name.endswith(".mask.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(atomic, "atomic_write", full)
    assert predict(tmp_path / "in", "--model", model, "--out", tmp_path / "out", "--workers", "1") == 2
    err = capsys.readouterr().err
    assert "No space left on device): the run stopped" in err and "Traceback" not in err


def test_checkpoint_without_keys_or_of_another_architecture(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    del ckpt["classes"]
    torch.save(ckpt, tmp_path / "nokeys.pt")
    with pytest.raises(WeedsegError, match="incomplete weedseg checkpoint: 'classes' must name its 3 classes"):
        load_checkpoint(tmp_path / "nokeys.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"]["name"] = "unet-resnet18"
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(WeedsegError, match="weights do not fit the architecture it names, unet-resnet18"):
        model_from_checkpoint(load_checkpoint(tmp_path / "other.pt"))
    assert main(["evaluate", str(tmp_path / "nokeys.pt"), "--out", str(tmp_path / "m.json")]) == 2
    assert "incomplete weedseg checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--grid-cell", "0"], "--grid-cell: must be at least 1, got 0"),
                                            (["--workers", "-1"], "--workers: must be at least 0, got -1"),
                                            (["--short-side", "60000"], "--short-side: must be from 0 to 4096"),
                                            (["--tile", "x"], "--tile: expected a whole number")])
def test_argument_ranges_are_checked_by_the_parser(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_out_and_resolution_are_checked_before_evaluating(checkpoint, tmp_path, capsys, monkeypatch):
    import weedseg.evaluate
    import weedseg.metrics

    monkeypatch.setattr(weedseg.evaluate, "evaluate_checkpoint", lambda *a: pytest.fail("evaluated"))
    assert main(["evaluate", str(checkpoint), "--out", "/sys/kernel/weedseg/m.json"]) == 2
    assert "cannot write /sys/kernel/weedseg/m.json" in capsys.readouterr().err
    # two scoring resolutions at once: refused by the parser, not one of them silently ignored
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(checkpoint), "--full-res", "--score-short-side", "256"])
    assert exit_.value.code == 2
    assert "argument --score-short-side: not allowed with argument --full-res" in capsys.readouterr().err
    monkeypatch.setattr(weedseg.evaluate, "evaluate_checkpoint", lambda *a: {"images": 1, "scored_at": "here"})
    monkeypatch.setattr(weedseg.metrics, "format_summary", lambda summary: "")
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "new" / "folder" / "m.json")]) == 0
    assert json.loads((tmp_path / "new" / "folder" / "m.json").read_text()) == {"images": 1, "scored_at": "here"}


def test_evaluate_default_out_is_never_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = argparse.Namespace(out=None, checkpoint=str(WEIGHTS_DIR / "weedseg-peanut-default.pt"),
                                 dataset="peanut", split="test", data_root=None)
    path, why = metrics_path(shipped)
    assert path == tmp_path / "weedseg-peanut-default.peanut-test.json" and "shipped with weedseg" in why
    mine = argparse.Namespace(out=None, checkpoint=str(tmp_path / "runs" / "best.pt"), dataset="folder",
                              split="val", data_root="/data/field_7")
    (tmp_path / "runs").mkdir()
    assert metrics_path(mine) == (tmp_path / "runs" / "best.folder-field_7-val.json", "")


def test_half_written_metrics_line_is_dropped_on_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    truncate_log(log, "epoch", 2)
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    log.write_text('{"epoch": 1}\n{"ep\n{"epoch": 2}\n')
    with pytest.raises(WeedsegError, match="line 2 is damaged"):
        truncate_log(log, "epoch", 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter, as weedseg export uses it
@pytest.mark.parametrize("channels", [1, 4])
def test_onnx_model_with_other_input_channels_is_refused_at_load(channels, model, tmp_path):
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(torch.nn.Conv2d(channels, 3, 1), torch.zeros(1, channels, 32, 32), str(raw), dynamo=False,
                      input_names=["image"], output_names=["logits"])
    save_with_metadata(raw, tmp_path / "m.onnx", Segmenter(model).info)
    with pytest.raises(WeedsegError, match=f"takes {channels}-channel tensor\\(float\\) images"):
        Segmenter(tmp_path / "m.onnx")


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path), "--epochs", "8", "--lr", "0.1"]) == 2
    assert "--epochs, --lr cannot change them" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["1", "L", "LA", "I;16", "F"])
def test_images_without_colour_are_refused(mode, tmp_path):
    grey = (np.random.default_rng(0).random((40, 60)) * 255).astype(np.uint8)
    image = Image.fromarray(grey).convert(mode) if mode != "F" else Image.fromarray(grey / 255.0, mode="F")
    image.save(tmp_path / ("x.tif" if mode == "F" else "x.png"))
    with pytest.raises(WeedsegError, match="no colour"):
        read_rgb(next(tmp_path.iterdir()))


def test_unusual_colour_images_are_converted(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(rgb.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    for name in ["rgb16.png", "cmyk.tif", "rgba.png"]:
        assert np.abs(read_rgb(tmp_path / name).astype(int) - rgb).max() <= 1, name
    cv2.imwrite(str(tmp_path / "float.tif"), rgb.astype(np.float32) / 255)  # 3-band float: not read by Pillow
    with pytest.raises(WeedsegError, match="TIFFs with floating-point .* save it as 8- or 16-bit RGB"):
        read_rgb(tmp_path / "float.tif")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc (Linux)")
@pytest.mark.parametrize("kind", ["jpeg", "rotated jpeg", "rgba png"])
def test_decoding_holds_at_most_decode_pixel_bytes(kind, tmp_path):
    """read_rgb's peak memory per pixel, from a fresh process's peak RSS (it held 14 bytes a pixel before it
    copied the pixels out band by band), and the pixels it returns."""
    rng = np.random.default_rng(2)
    rgb = cv2.resize(rng.integers(0, 256, (30, 40, 3), np.uint8), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    image = Image.fromarray(rgb)
    path = tmp_path / ("x.png" if kind == "rgba png" else "x.jpg")
    if kind == "rotated jpeg":
        exif = image.getexif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
        image.save(path, exif=exif, quality=95)
    else:
        (image.convert("RGBA") if kind == "rgba png" else image).save(path, **({} if kind == "rgba png" else
                                                                              {"quality": 95}))
    probe = ("import re, sys; from pathlib import Path; from weedseg.data.io import read_rgb\n"
             "def peak(): return int(re.search(r'VmHWM:\\s*(\\d+)', Path('/proc/self/status').read_text())[1])\n"
             "before = peak(); a = read_rgb(sys.argv[1])\n"  # peak RSS of this process alone, in KiB
             "print(a.shape[0], a.shape[1], (peak() - before) * 1024 / (a.shape[0] * a.shape[1]))")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    height, width, per_pixel = done.stdout.split()
    assert (int(height), int(width)) == ((4000, 3000) if kind == "rotated jpeg" else (3000, 4000))
    assert float(per_pixel) <= DECODE_PIXEL_BYTES, f"{per_pixel} bytes a pixel"
    decoded = read_rgb(path)
    with Image.open(path) as im:
        assert np.array_equal(decoded, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    assert not decoded.flags.writeable
