"""The experiment: run plan and pairing, statistics, resume, and a tiny end-to-end run on a Nassar-layout fixture."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from weedseg import WeedsegError
from weedseg.cli import build_parser, config_from_args, main
from weedseg.experiment import PRESETS, ExperimentConfig, run_experiment
from weedseg.experiment.plan import Job, check_config, finetune_schedule, plan_jobs
from weedseg.experiment.report import paired_difference, read_run, t975
from weedseg.experiment.runner import run_jobs
from weedseg.processes import ChildProcesses, sigterm_as_ctrl_c


def test_paired_difference_interval_by_hand():
    diff = paired_difference([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # differences 1, 2, 3: mean 2, sd 1
    half = 4.303 / math.sqrt(3)
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(2.0) and diff["wins"] == 3
    assert diff["ci95"] == pytest.approx([2 - half, 2 + half])
    assert paired_difference([1.0], [2.0])["ci95"] is None
    assert t975(4) == 2.776 and t975(100) == 1.96


def test_a_run_reports_the_validation_best_pt_holds_not_its_highest_single_pass(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "test.json").write_text(json.dumps({"miou": 0.5, "iou": {"soil": 0.9, "weed": 0.1}}))
    (run / "config.json").write_text(json.dumps({"smooth_evals": 3}))
    passes = [0.80, 0.60, 0.70, 0.72, 0.74, 0.66]  # a lucky first pass; the best mean of 3 ends at epoch 5
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "iteration": 10 * e, "seconds": 6.0, "val_miou": m}) + "\n"
        for e, m in enumerate(passes, 1)))
    summary = read_run(run)
    assert summary["best_epoch"] == 5 and summary["best_val_miou"] == pytest.approx(74.0)
    assert summary["test_miou"] == pytest.approx(50.0) and summary["train_minutes"] == pytest.approx(0.6)


def test_fewer_labels_train_more_epochs_but_fewer_iterations():
    cfg = ExperimentConfig(finetune_epochs=40, finetune_warmup_epochs=4, evals_per_run=20)
    assert finetune_schedule(cfg, 1.0) == (40, 4, 2)
    epochs, warmup, every = finetune_schedule(cfg, 0.25)
    assert (epochs, warmup, every) == (80, 8, 4)
    assert epochs * 0.25 < 40  # 80 epochs over a quarter of the images: half the iterations


def arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_plan_pairs_every_method_by_seed(tmp_path):
    cfg = ExperimentConfig(out=str(tmp_path), seeds=2, fractions=(1.0, 0.1))
    jobs = {j.name: j for j in plan_jobs(cfg)}
    assert len(jobs) == 2 * 2 + 3 * 2 * 2  # pretraining: 2 methods x 2 seeds; fine-tuning: 3 x 2 seeds x 2 fractions
    for seed in range(2):
        for method in ("random", "selective"):
            pre = jobs[f"pretrain {method} seed {seed}"].commands[0]
            assert arg(pre, "--seed") == str(seed) and arg(pre, "--method") == method
        for fraction, tag in ((1.0, "labels-100"), (0.1, "labels-10")):
            runs = {m: jobs[f"fine-tune {m} seed {seed} {tag}"] for m in ("scratch", "random", "selective")}
            trains = {m: j.commands[0] for m, j in runs.items()}
            assert {arg(c, "--seed") for c in trains.values()} == {str(seed)}
            assert {arg(c, "--train-fraction") for c in trains.values()} == {str(fraction)}
            assert arg(trains["scratch"], "--init") == "scratch" and not runs["scratch"].needs
            for m in ("random", "selective"):
                assert arg(trains[m], "--init").endswith(f"pretrain/{m}-seed{seed}/final.pt")
                assert runs[m].needs == [f"pretrain {m} seed {seed}"]
            assert runs["scratch"].commands[1][3] == "evaluate" and runs["scratch"].done_file.name == "test.json"
            assert "--init-head" not in trains["selective"]
    variant = ExperimentConfig(out=str(tmp_path), seeds=1, fractions=(1.0,), cells=64, mask_ratio=0.25, init_head=True)
    jobs = {j.name: j for j in plan_jobs(variant)}
    pre = jobs["pretrain selective seed 0"].commands[0]
    assert arg(pre, "--cells") == "64" and arg(pre, "--mask-ratio") == "0.25"
    assert "--init-head" in jobs["fine-tune selective seed 0 labels-100"].commands[0]
    assert "--images" not in pre


def test_pretraining_pools_extra_folders_given_on_the_command_line(tmp_path):
    args = build_parser().parse_args(["experiment", "--out", str(tmp_path), "--seeds", "1", "--fractions", "1",
                                      "--pretrain-images", "field_a", "field_b"])
    cfg = config_from_args(ExperimentConfig, PRESETS, args, "unused")
    jobs = {j.name: j for j in plan_jobs(cfg)}
    for method in ("random", "selective"):
        pre = jobs[f"pretrain {method} seed 0"].commands[0]
        assert pre[pre.index("--images") + 1: pre.index("--images") + 3] == ["field_a", "field_b"]
        assert arg(pre, "--dataset") == "peanut"  # pooled with the train split, not instead of it
    assert "--images" not in jobs["fine-tune random seed 0 labels-100"].commands[0]


def test_unfinished_runs_resume_and_changed_settings_are_refused(tmp_path):
    cfg = ExperimentConfig(out=str(tmp_path), seeds=1, fractions=(1.0,))
    run = tmp_path / "finetune" / "labels-100" / "scratch-seed0"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    train = {j.name: j for j in plan_jobs(cfg)}["fine-tune scratch seed 0 labels-100"].commands[0]
    assert train[3:] == ["train", "--resume", "--out", str(run), "--device", cfg.device]  # the run keeps its settings
    (tmp_path / "experiment.json").write_text(json.dumps({**cfg.__dict__, "finetune_epochs": 7}))
    with pytest.raises(WeedsegError, match="finetune_epochs: 7 -> 40"):
        check_config(cfg)
    (tmp_path / "experiment.json").write_text(json.dumps({**cfg.__dict__, "seeds": 9}))
    check_config(cfg)  # more or fewer seeds only adds or leaves out runs
    with pytest.raises(WeedsegError, match="--methods"):
        check_config(ExperimentConfig(out=str(tmp_path), methods=("scratch", "mae")))
    with pytest.raises(WeedsegError, match="--jobs must be 0"):
        check_config(ExperimentConfig(out=str(tmp_path / "other"), jobs=-1))
    with pytest.raises(WeedsegError, match="--pretrain-images: no folder .*nowhere"):  # before any run starts
        check_config(ExperimentConfig(out=str(tmp_path / "other"), pretrain_images=(str(tmp_path / "nowhere"),)))


def test_missing_dataset_and_ctrl_c_are_clear_errors(tmp_path, capsys, monkeypatch):
    code = main(["experiment", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert code == 2 and "peanut dataset not found" in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists()  # refused before any run started
    with pytest.raises(SystemExit):
        main(["experiment", "--fractions", "all"])
    assert "expected comma-separated numbers such as 1,0.25,0.1, got 'all'" in capsys.readouterr().err

    import weedseg.experiment as experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_jobs", interrupted)
    root = write_nassar(tmp_path / "nassar", tiles=10)
    code = main(["experiment", "--dataset", "nassar", "--data-root", str(root), "--out", str(tmp_path / "exp2")])
    assert code == 2 and "interrupted; finished runs are kept" in capsys.readouterr().err


@pytest.mark.own_process
def test_sigterm_stops_running_jobs_at_once_even_when_started_in_the_background(tmp_path):
    """Started with `&` or nohup, the experiment has SIGINT ignored and its runs inherited that: the Ctrl-C it
    sends them to stop did nothing (each was killed after 60 s), and SIGTERM ended it and left them running."""
    jobs = [Job(f"sleeper {k}", tmp_path / f"j{k}", [["sleep", "30"]], tmp_path / f"j{k}" / "done") for k in range(2)]
    unhandled = []

    def fallback(signum, frame):  # the default would end pytest
        unhandled.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, fallback)
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            run_jobs(jobs, parallel=2, threads=1, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert not unhandled and time.monotonic() - start < 15


def test_child_processes_stop_one_past_its_timeout_and_start_none_once_stopped():
    children = ChildProcesses(grace=5.0)
    sleeper = children.start(["sleep", "30"], stdin=subprocess.DEVNULL)
    start = time.monotonic()
    assert children.wait(sleeper, timeout=0.3) is None  # stopped by its Ctrl-C, not after the grace
    assert sleeper.returncode is not None and time.monotonic() - start < 3 and children.running == 0
    other = children.start(["sleep", "30"], stdin=subprocess.DEVNULL)
    children.stop()
    assert other.returncode is not None and children.running == 0
    assert children.start(["true"]) is None  # a job's next command does not start once the runs are stopped
    children.reset()
    assert children.wait(children.start(["true"])) == 0


def write_nassar(root: Path, tiles: int = 30) -> Path:
    """Nassar 2020 layout (data/<id>.png + mask/<id>.png, values 0/1/2) with 64 px tiles whose mask follows green."""
    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    (root / "mask").mkdir()
    for i in range(tiles):
        image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (64, 64))
        cv2.imwrite(str(root / "data" / f"{i:05d}.png"), image)
        cv2.imwrite(str(root / "mask" / f"{i:05d}.png"), (image[..., 1] // 86).astype(np.uint8))
    return root


def test_tiny_experiment_end_to_end_and_rerun_skips_finished_runs(tmp_path):
    root = write_nassar(tmp_path / "nassar")
    cfg = ExperimentConfig(dataset="nassar", data_root=str(root), out=str(tmp_path / "exp"), seeds=2,
                           fractions=(1.0,), pretrain_epochs=1, finetune_epochs=2, evals_per_run=2, crop=64,
                           pictures=1, jobs=2)
    results = run_experiment(cfg)
    out = Path(cfg.out)
    assert len(results["runs"]) == 3 * 2  # several fractions: test_plan_pairs_every_method_by_seed
    for group in results["groups"]:
        assert set(group["methods"]) == {"scratch", "random", "selective"}
        assert [(p["a"], p["b"], p["miou"]["n"]) for p in group["pairs"]] == [
            ("selective", "random", 2), ("selective", "scratch", 2), ("random", "scratch", 2)]
    run = results["runs"][0]
    test = json.loads((out / "finetune" / "labels-100" / f"{run['method']}-seed{run['seed']}" / "test.json").read_text())
    assert run["test_miou"] == pytest.approx(100 * test["miou"]) and test["split"] == "test"
    assert "| selective - random | 2 |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert results["best_by_validation"]["fraction"] == 1.0
    masks = results["selective_masks"]  # what the selective masks hid, read against the labels
    assert masks["seeds"] == [0, 1] and sum(masks["mean"]["masked_share"]) == pytest.approx(1.0)
    assert "## What selective masking hides" in (out / "results.md").read_text()

    logs = {p: p.stat().st_mtime_ns for p in out.rglob("job.log")}
    assert len(logs) == 2 * 2 + 6
    again = run_experiment(cfg)  # everything is done: nothing runs again, the same results come back
    assert {p: p.stat().st_mtime_ns for p in out.rglob("job.log")} == logs
    assert again["runs"] == results["runs"]


def test_cli_reports_failed_runs_with_their_logs(tmp_path, capsys):
    root = write_nassar(tmp_path / "nassar", tiles=10)
    for mask in (root / "mask").iterdir():  # values above 2 are not Nassar classes: training refuses them
        cv2.imwrite(str(mask), np.full((64, 64), 7, np.uint8))
    code = main(["experiment", "--dataset", "nassar", "--data-root", str(root), "--out", str(tmp_path / "exp"),
                 "--seeds", "1", "--methods", "scratch", "--fractions", "1", "--finetune-epochs", "1",
                 "--crop", "64", "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "1 run(s) did not finish" in err and "scratch-seed0/job.log" in err
    assert "of values [7] outside the class map" in err  # the run's own error is shown


def test_mask_content_reads_the_masked_cells_against_the_labels(tmp_path):
    from weedseg.data import open_dataset
    from weedseg.experiment.mask_content import masked_class_shares

    root = write_nassar(tmp_path / "nassar", tiles=10)
    for mask in (root / "mask").iterdir():  # left half weed (2), right half soil (0)
        cv2.imwrite(str(mask), np.repeat([[2] * 32 + [0] * 32], 64, 0).astype(np.uint8))
    data = open_dataset("nassar", root)
    image = data.splits["train"][0].image
    step = tmp_path / "run" / "step1"
    step.mkdir(parents=True)
    # scored at 32 x 32 in a 2 x 2 grid; the two left cells are masked
    record = {"images": [{"index": 0, "path": str(image), "grid_y": [0, 16, 32], "grid_x": [0, 16, 32],
                          "masked_cells": [0, 2]}]}
    (step / "masks.json").write_text(json.dumps(record))
    shares = masked_class_shares(tmp_path / "run", data)
    assert shares["masked_share"] == pytest.approx([0, 0, 1]) and shares["all_share"] == pytest.approx([0.5, 0, 0.5])
    assert shares["enrichment"] == [0.0, None, pytest.approx(2.0)] and shares["images"] == 1
