"""Real training on peanut images: it learns, it resumes after a kill, it is repeatable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from weedseg import WeedsegError
from weedseg import train as train_module
from weedseg.checkpoint import load_checkpoint, save_checkpoint
from weedseg.cli import build_parser, config_from_args
from weedseg.data import EvalResize, SegmentationDataset
from weedseg.curves import best_rank
from weedseg.data.transforms import TrainAugment
from weedseg.evaluate import evaluate_checkpoint
from weedseg.metrics import ConfusionMatrix
from weedseg.runtime import warmup_cosine
from weedseg.train import (PRESETS, TrainConfig, augmentation, copy_paste, parse_class_weights, resolve_init, schedule,
                           train)


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_training_lowers_loss_and_beats_all_soil(trained_run, peanut):
    log = read_log(trained_run)
    assert [r["epoch"] for r in log] == list(range(1, 9))
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.05
    result = evaluate_checkpoint(trained_run / "best.pt", "peanut", "test", str(peanut.layout.root))
    # the trivial model that predicts soil everywhere, scored the same way
    ds = SegmentationDataset(peanut.layout, peanut.splits["test"], EvalResize(256), [0.0] * 3, [1.0] * 3)
    trivial = ConfusionMatrix(3)
    for i in range(len(ds)):
        mask = ds[i][1]
        trivial.update(torch.zeros_like(mask), mask)
    all_soil = trivial.summary(["soil", "crop", "weed"])["miou"]
    assert result["miou"] > all_soil + 0.10, (result["miou"], all_soil)
    assert result["iou"]["crop"] > 0.2
    assert sum(map(sum, result["confusion_matrix"])) == trivial.matrix.sum().item()


def tiny_config(out, root, epochs=4):
    return TrainConfig(dataset="peanut", data_root=str(root), out=str(out), epochs=epochs, warmup_epochs=1,
                       crop_zoom=PRESETS["cpu"]["crop_zoom"], loss=PRESETS["cpu"]["loss"],  # as the CLI's cpu preset
                       rotate90=PRESETS["cpu"]["rotate90"],
                       train_fraction=0.06, eval_short_side=96, seed=3, workers=0)


def test_resume_after_kill_matches_an_unbroken_run(tmp_path, peanut_root):
    unbroken = tmp_path / "unbroken"
    train(tiny_config(unbroken, peanut_root))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "weedseg.cli", "train", "--dataset", "peanut", "--data-root", str(peanut_root),
           "--out", str(killed), "--epochs", "4", "--warmup-epochs", "1", "--train-fraction", "0.06",
           "--eval-short-side", "96", "--seed", "3", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "metrics.jsonl"
    deadline = time.time() + 600  # generous: shared CI machines can be slow
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = load_checkpoint(killed / "last.pt")["train_state"]["epoch"] + 1
    assert 1 <= done_before_kill < 4

    train(tiny_config(killed, peanut_root), resume=True)
    assert [r["epoch"] for r in read_log(killed)] == [1, 2, 3, 4]
    a = load_checkpoint(unbroken / "last.pt")["state_dict"]
    b = load_checkpoint(killed / "last.pt")["state_dict"]
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name
    for x, y in zip(read_log(unbroken), read_log(killed)):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-5


def test_last_checkpoint_is_written_after_validations_not_every_epoch(tmp_path, peanut_root, monkeypatch):
    """last.pt costs ~0.1 s to write: with hundreds of short epochs it follows validations (or the clock)."""
    written = []

    def recording_save(path, model, meta, **extra):
        if Path(path).name == "last.pt":
            written.append(extra["train_state"]["epoch"] + 1)
        save_checkpoint(path, model, meta, **extra)

    monkeypatch.setattr(train_module, "save_checkpoint", recording_save)
    monkeypatch.setattr(train_module, "CHECKPOINT_EVERY_S", 3600.0)
    cfg = tiny_config(tmp_path / "run", peanut_root, epochs=5)
    cfg.eval_every = 2
    train(cfg)
    assert written == [2, 4, 5]
    assert [r["epoch"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4, 5]

    written.clear()
    monkeypatch.setattr(train_module, "CHECKPOINT_EVERY_S", 0.0)  # a slow epoch: the clock asks for a save
    train(cfg, overwrite=True)
    assert written == [1, 2, 3, 4, 5]


def test_existing_run_is_not_overwritten_by_accident(tmp_path, peanut_root):
    cfg = tiny_config(tmp_path / "run", peanut_root, epochs=1)
    train(cfg)
    with pytest.raises(WeedsegError, match="--resume"):
        train(cfg)
    train(cfg, overwrite=True)
    assert len(read_log(tmp_path / "run")) == 1


def test_class_weights_auto_follow_one_over_sqrt_frequency_and_numbers_are_checked():
    class Masks:
        """Two 'photos' whose masks hold 900 soil, 90 crop, 9 weed and 100 ignored pixels in all."""

        masks = [np.array([0] * 900 + [1] * 40 + [2] * 9 + [255] * 51, np.uint8).reshape(40, 25),
                 np.array([1] * 50 + [255] * 49, np.uint8).reshape(9, 11)]

        def __len__(self) -> int:
            return len(self.masks)

        def load(self, i: int) -> tuple[None, np.ndarray]:
            return None, self.masks[i]

    auto = parse_class_weights("auto", Masks(), 3)
    assert torch.allclose(auto.mean(), torch.tensor(1.0))
    assert torch.allclose(auto / auto[0], torch.tensor([1.0, 900 / 90, 900 / 9]).sqrt())
    assert parse_class_weights("1,2,4", Masks(), 3).tolist() == [1.0, 2.0, 4.0]
    assert parse_class_weights("none", Masks(), 3) is None
    for bad in ("1,2", "1,x,3"):
        with pytest.raises(WeedsegError, match="3 comma-separated numbers"):
            parse_class_weights(bad, Masks(), 3)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10, 0.01) == 0.01
    assert warmup_cosine(10, 100, 10, 0.01) == 1.0
    assert abs(warmup_cosine(100, 100, 10, 0.01) - 0.01) < 1e-12
    assert warmup_cosine(55, 100, 10, 0.01) < warmup_cosine(30, 100, 10, 0.01)


def test_iteration_budget_and_smoothed_best(tmp_path, peanut_root, capsys):
    """An iteration budget fixes the optimiser steps whatever the dataset size (ending inside an epoch);
    best.pt follows the mean of the last `smooth_evals` validations."""
    cfg = TrainConfig(dataset="peanut", data_root=str(peanut_root), out=str(tmp_path / "run"), iterations=7,
                      warmup_iterations=2, eval_every=1, smooth_evals=2, train_fraction=0.06, eval_short_side=96,
                      seed=1, workers=0)
    assert schedule(cfg, 2) == (7, 2, 4)
    assert schedule(TrainConfig(epochs=5, warmup_epochs=1), 3) == (15, 3, 5)
    train(cfg)
    log = read_log(tmp_path / "run")  # 16 images, batch 8: 2 steps per epoch, so 4 epochs, the last one short
    assert [r["iteration"] for r in log] == [2, 4, 6, 7]
    smoothed = [r["val_miou_smoothed"] for r in log]
    assert smoothed[0] == log[0]["val_miou"]
    assert abs(smoothed[2] - (log[1]["val_miou"] + log[2]["val_miou"]) / 2) < 1e-12
    best = load_checkpoint(tmp_path / "run" / "best.pt")["metrics"]["epoch"]
    assert best == 1 + max(range(1, 4), key=lambda i: smoothed[i])  # the first mean (of 1) is not a full window
    assert f"at epoch {best} (mean of the last 2 validations up to it" in capsys.readouterr().out


def test_a_lucky_first_validation_does_not_become_best():
    """A continued run starts near its peak: one high first pass must not outrank the means of full windows."""
    scores, recent = [0.875, 0.5, 0.625, 0.75], []  # binary fractions: exact means
    ranks = [best_rank(recent := (recent + [x])[-2:], 2) for x in scores]
    assert ranks == [(False, 0.875), (True, 0.6875), (True, 0.5625), (True, 0.6875)]
    assert max(range(4), key=lambda i: ranks[i]) == 1  # the first full window; the highest mean is the first pass
    assert best_rank([0.8], 1) == (True, 0.8) and best_rank([0.8], 0) == (True, 0.8)


def test_flip_tta_and_scoring_resolution(trained_run, peanut):
    """Evaluation with flip TTA scores other predictions, and says so; masks can be scored at another resolution
    than the input. (tests/test_tta.py checks the averaging itself.)"""
    root = str(peanut.layout.root)
    plain = evaluate_checkpoint(trained_run / "best.pt", "peanut", "val", root, short_side=128, score_short_side=64)
    tta = evaluate_checkpoint(trained_run / "best.pt", "peanut", "val", root, short_side=128, score_short_side=64,
                              tta="flip")
    pixels = sum(map(sum, plain["confusion_matrix"]))
    assert pixels == sum(map(sum, tta["confusion_matrix"])) == 40 * 64 * 85  # 40 val masks at 64 x 85
    assert plain["scored_at"].startswith("short side 64") and tta["tta"] == "flip"
    assert plain["confusion_matrix"] != tta["confusion_matrix"]


def test_crop_zoom_keeps_the_inference_scale_whatever_the_photo_size():
    native = TrainAugment(256, zoom=(0.5, 1.0), input_short_side=0)
    assert native.area_range(720, 960) == pytest.approx(((128 / 960) * (128 / 720), (256 / 960) * (256 / 720)))
    # a 4000 x 3000 photo run at short side 720 is the 960 x 720 case scaled: the same area fractions
    scaled = TrainAugment(256, zoom=(0.5, 1.0), input_short_side=720).area_range(3000, 4000)
    assert scaled == pytest.approx(native.area_range(720, 960))
    assert TrainAugment(256, zoom=(2.0, 9.0)).area_range(256, 256) == (1.0, 1.0)  # never more than the photo
    assert TrainAugment(256).area_range(720, 960) == (0.25, 1.0)


def test_rotate90_adds_the_quarter_turns_and_moves_image_and_mask_together():
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)  # no two of its 8 symmetries are alike
    image = np.repeat(mask[..., None] * 10, 3, axis=2)
    for rotate90, expected in ((False, 2), (True, 8)):
        augment = TrainAugment(4, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, hue=0.0, rotate90=rotate90)
        seen = set()
        for seed in range(64):
            x, m = augment(image, mask, np.random.default_rng(seed))
            assert (x[..., 0] == m * 10).all() and m.flags.c_contiguous
            seen.add(m.tobytes())
        assert len(seen) == expected


def test_cpu_preset_rotates_unless_no_rotate90_is_given():
    def config(*flags):
        return config_from_args(TrainConfig, PRESETS, build_parser().parse_args(["train", *flags]), "unused")

    assert config().rotate90 and augmentation(config()).rotate90
    assert not config("--no-rotate90").rotate90 and not augmentation(config("--no-rotate90")).rotate90
    assert not config("--budget", "paper").rotate90
    assert not TrainConfig().rotate90  # a run folder written before the option resumes without rotations


def test_copy_paste_pastes_only_the_named_class_over_the_crop_the_seed_gives(peanut):
    samples = peanut.splits["train"][:6]
    plain = SegmentationDataset(peanut.layout, samples, TrainAugment(64), [0.0] * 3, [1.0] * 3)
    pasted = SegmentationDataset(peanut.layout, samples, TrainAugment(64), [0.0] * 3, [1.0] * 3,
                                 copy_paste(("weed",), peanut.classes))
    pasted.paste.p = 1.0
    changed = 0
    for seed in range(8):
        (x0, m0), (x1, m1) = plain[(1, seed)], pasted[(1, seed)]
        kept = (m1 == m0) & (x1 == x0).all(0)  # pixels the paste left alone are the plain crop's
        assert (m1[~kept] == 2).all()  # everything else became weed, label and image together
        changed += int((~kept).sum())
    assert changed > 0  # some of the donors' weed landed
    with pytest.raises(WeedsegError, match="weeds: not a class of this dataset; its classes are soil, crop, weed"):
        copy_paste(("weeds",), peanut.classes)
    assert copy_paste((), peanut.classes) is None


def test_default_init_is_the_shipped_field_pretrained_model(capsys):
    field = resolve_init(TrainConfig().init, "unet-resnet18-quarter")
    assert field is not None and field.is_file() and field.name == "weedseg-field-pretrained.pt"
    assert load_checkpoint(field)["model"]["name"] == "unet-resnet18-quarter"
    assert resolve_init("field", "unet-resnet34") is None  # another architecture starts from random weights
    assert "random weights" in capsys.readouterr().out
    assert resolve_init("scratch", "unet-resnet18-quarter") is None
    assert resolve_init("runs/x/final.pt", "unet-resnet34") == Path("runs/x/final.pt")
