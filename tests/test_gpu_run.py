"""benchmarks/gpu_run.sh: the data step, the experiment's planning, and the whole command with --tiny on the CPU."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from weedseg import WeedsegError
from weedseg.data import SPLITS, open_dataset
from weedseg.data.splits import split_file_for
from weedseg.experiment import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_run.sh"


def load_gpu_run():
    """benchmarks/gpu_run.py as a module (benchmarks/ is no package; it imports training.py beside it)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module("gpu_run")


@pytest.fixture(scope="module")
def field_data(tmp_path_factory) -> Path:
    """SRC for --make-data, written once for this module's tests."""
    return write_field_data(tmp_path_factory.mktemp("src"))


def write_field_data(root: Path) -> Path:
    """SRC in the shared layout: peanut/ with every id of the committed split (80x60 photos, colour masks that
    follow the green channel) and unlabeled/<two folders>/images/ with 5 photos each."""
    split = json.loads(split_file_for("peanut", root).read_text())
    ids = [i for name in SPLITS for i in split[name]]
    rng = np.random.default_rng(0)
    palette = np.array([[0, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # BGR: soil, crop (green), weed (red)
    for k, sample_id in enumerate(ids):
        image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (80, 60))
        (root / "peanut" / "images").mkdir(parents=True, exist_ok=True)
        (root / "peanut" / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "peanut" / "images" / f"{sample_id}.jpg"), image)
        cv2.imwrite(str(root / "peanut" / "labels" / f"{sample_id}.png"), palette[image[..., 1] // 86])
    for group in ("sesame", "deepweeds"):
        (root / "unlabeled" / group / "images").mkdir(parents=True)
        for k in range(5):
            cv2.imwrite(str(root / "unlabeled" / group / "images" / f"{k}.jpg"),
                        rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    return root


@pytest.mark.slow
def test_make_data_keeps_the_layout_and_split_and_refuses_too_big_or_used_folders(tmp_path, field_data):
    src = field_data
    dst = tmp_path / "gpu_data"
    done = subprocess.run([str(SCRIPT), "--make-data", str(src), str(dst), "--short-side", "30", "--unlabeled", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "400 labelled peanut photos and 3 unlabelled photos" in done.stdout
    data, original = open_dataset("peanut", dst), open_dataset("peanut", src)
    assert {s: [x.id for x in v] for s, v in data.splits.items()} == {
        s: [x.id for x in v] for s, v in original.splits.items()}
    sample = data.splits["test"][0]
    image, mask = cv2.imread(str(sample.image)), cv2.imread(str(sample.mask))
    assert image.shape == (30, 40, 3) and mask.shape == (30, 40, 3)
    assert set(np.unique(data.layout.decode_mask(sample.mask)).tolist()) == {0, 1, 2}  # nearest: only class colours
    assert sorted(p.relative_to(dst).as_posix() for p in (dst / "unlabeled").rglob("*.jpg")) == [
        "unlabeled/deepweeds/images/0.jpg", "unlabeled/deepweeds/images/4.jpg", "unlabeled/sesame/images/0.jpg"]
    assert "git-ignored" in (dst / "README.md").read_text()

    gpu_run = load_gpu_run()
    with pytest.raises(WeedsegError, match="exists and is not empty"):
        gpu_run.make_data(src, dst, 30, 75, 3, 45)
    with pytest.raises(WeedsegError, match="over --max-mb 0.01: remove it and make it again"):
        gpu_run.make_data(src, tmp_path / "big", 30, 75, 0, 0.01)

    gpu_run.make_data(src, tmp_path / "small-test", 30, 75, 0, 45, test_short_side=12)  # test scored elsewhere
    small = open_dataset("peanut", tmp_path / "small-test")
    assert cv2.imread(str(small.splits["test"][0].image)).shape == (12, 16, 3)
    assert cv2.imread(str(small.splits["test"][0].mask)).shape == (12, 16, 3)
    assert cv2.imread(str(small.splits["val"][0].image)).shape == (30, 40, 3)
    assert "--test-short-side 12" in (tmp_path / "small-test" / "README.md").read_text()

    gpu_run.make_data(src, tmp_path / "originals", 30, 75, 0, 45, original_splits=("val", "test"))  # scored there
    kept = open_dataset("peanut", tmp_path / "originals")
    for split in ("val", "test"):
        for sample, original_sample in zip(kept.splits[split], original.splits[split]):
            assert sample.image.read_bytes() == original_sample.image.read_bytes()
            assert sample.mask.read_bytes() == original_sample.mask.read_bytes()
    assert cv2.imread(str(kept.splits["train"][0].image)).shape[0] == 30


def test_planned_epochs_fit_the_allotted_time_and_grow_with_it():
    gpu_run = load_gpu_run()
    cfg = ExperimentConfig(**gpu_run.FULL.experiment)
    assumed = gpu_run.Assumed()
    short, long = gpu_run.fit_epochs(cfg, 280, 240, assumed), gpu_run.fit_epochs(cfg, 280, 2400, assumed)
    assert 1 < short.pretrain_epochs < long.pretrain_epochs
    assert gpu_run.experiment_estimate(short, 280, assumed) <= 240
    bigger = gpu_run.with_epochs(short, short.pretrain_epochs + 1, short.finetune_epochs + 1)
    assert gpu_run.experiment_estimate(bigger, 280, assumed) > 240
    assert short.pretrain_warmup_epochs == max(1, short.pretrain_epochs // 10)
    plan = gpu_run.describe_plan(short, 280, 230.0, 240)
    assert "3 paired seed(s)" in plan and "10 % of the labels" in plan
    assert f"{10 * short.pretrain_epochs} iterations of batch 64" in plan  # 10 partitions of 28 images: 1 batch each


def test_gpu_use_reads_nvidia_smi_samples_within_a_phase(tmp_path):
    gpu_run = load_gpu_run()
    log = tmp_path / "gpu.csv"
    log.write_text("2026/11/26 12:00:00.100, 10, 1000\n2026/11/26 12:00:01.100, 50, 3000\n"
                   "2026/11/26 12:00:02.100, 90, 2000\n2026/11/26 12:00:03")  # the last line cut short
    use = gpu_run.gpu_use(log, datetime(2026, 11, 26, 12, 0, 1), datetime(2026, 11, 26, 12, 0, 5))
    assert use == (70.0, 3000.0)
    assert gpu_run.gpu_use(log, datetime(2026, 11, 27), datetime(2026, 11, 28)) is None


def test_a_stage_past_its_limit_is_stopped_with_its_children(tmp_path, monkeypatch):
    gpu_run = load_gpu_run()
    stage = gpu_run.Stage("sleeper", ["bash", "-c", "sleep 60 & echo started $!; wait"], 1.0)
    monkeypatch.setattr(gpu_run, "MIN_STAGE_SECONDS", 0.5)
    outcome = gpu_run.run_stage(stage, tmp_path, deadline=float("inf"), env={})
    # < 30 s: where SIGINT is ignored (a process started in the background) the kill follows after 20 s
    assert outcome.status == "timed out" and outcome.seconds < 30 and "started" in outcome.note
    child = Path(f"/proc/{outcome.note.split()[-1]}/stat")  # the background sleep, in the stage's process group
    for _ in range(50):
        if not child.exists() or child.read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    assert not child.exists() or child.read_text().split()[2] == "Z"  # killed (at most not yet reaped)
    failing = gpu_run.Stage("fails", ["bash", "-c", "echo 'weedseg: error: no data'; exit 2"], 10.0)
    assert gpu_run.run_stage(failing, tmp_path, float("inf"), {}).note == "exit status 2: weedseg: error: no data"


def test_stages_that_need_a_skipped_stage_are_skipped_too(tmp_path):
    gpu_run = load_gpu_run()
    lane = [gpu_run.Stage("train", ["false"], 10.0, skip=True),
            gpu_run.Stage("export-int8", ["false"], 10.0, needs="train"),
            gpu_run.Stage("predict", ["false"], 10.0, needs="export-int8")]
    outcomes = gpu_run.run_lane(lane, tmp_path, float("inf"), {})
    assert [(o.status, o.note) for o in outcomes] == [("skipped", gpu_run.SKIPPED)] * 3
    lane[0].skip = False  # a stage that fails still stops the ones after it
    notes = [o.note for o in gpu_run.run_lane(lane, tmp_path, float("inf"), {})]
    assert notes[1:] == ["needs train, which did not pass", "needs export-int8, which did not pass"]


def test_summary_is_written_without_git_and_when_the_stages_stop(tmp_path, field_data, monkeypatch):
    gpu_run = load_gpu_run()
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))  # no git (nor nvidia-smi)
    assert gpu_run.machine_lines("cpu")[-1] == "- weedseg commit: unknown"

    def stops(*args):
        outcomes = args[-2]
        outcomes.append(gpu_run.Outcome("train", "ok", 1.0, "trained"))
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_run, "run_stages", stops)
    out = tmp_path / "out"
    args = argparse.Namespace(tiny=True, skip=set(), data_root=str(field_data), work=str(tmp_path / "work"),
                              out=str(out), experiment_epochs=None)
    with pytest.raises(KeyboardInterrupt):
        gpu_run.run(args)
    assert "| train | ok | 1.0 | trained |" in (out / "summary.md").read_text()
    assert (out / "gpu_run.tar.gz").is_file()


def sleeper(gpu_run, name: str):
    """A stage that prints its process group and sleeps (SIGINT ends it at once)."""
    return gpu_run.Stage(name, ["bash", "-c", "echo started $$; sleep 30"], 120.0)


def group_gone(log: Path) -> bool:
    """Whether no process is left in the process group a sleeper's log names."""
    pgid = int(log.read_text().split()[-1])
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def sigterm_when_running(gpu_run, count: int) -> None:
    """Send this process SIGTERM, as `kill` would, once `count` stages run (after 3 s at the latest)."""
    def send() -> None:
        end = time.monotonic() + 3
        while gpu_run.RUNNING.running < count and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # their commands have started
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send, daemon=True).start()


@pytest.mark.own_process
def test_an_interrupt_stops_the_stage_running_in_the_main_thread(tmp_path):
    gpu_run = load_gpu_run()
    start = time.monotonic()
    try:
        with gpu_run.sigterm_as_ctrl_c():
            sigterm_when_running(gpu_run, 1)
            outcome = gpu_run.run_stage(sleeper(gpu_run, "sleeper"), tmp_path, float("inf"), {})
        assert outcome.status == "interrupted" and outcome.note.startswith("stopped by Ctrl-C or SIGTERM")
        assert gpu_run.run_stage(sleeper(gpu_run, "next"), tmp_path, float("inf"), {}).note == gpu_run.INTERRUPTED
    finally:
        gpu_run.RUNNING.reset()
    assert time.monotonic() - start < 15 and group_gone(tmp_path / "sleeper.log")


@pytest.mark.own_process
def test_sigterm_stops_the_stages_of_both_lanes_and_the_summary_is_written(tmp_path, field_data, monkeypatch):
    gpu_run = load_gpu_run()
    lanes = [[sleeper(gpu_run, "sleeper-a"), gpu_run.Stage("after-a", ["true"], 10.0)], [sleeper(gpu_run, "sleeper-b")]]
    monkeypatch.setattr(gpu_run, "smoke_lanes", lambda *args: lanes)
    args = argparse.Namespace(tiny=True, skip={"throughput", "experiment"}, data_root=str(field_data),
                              work=str(tmp_path / "work"), out=str(tmp_path / "out"), experiment_epochs=None)
    unhandled = []

    def fallback(signum, frame):  # the default would end pytest: gpu_run.run must handle SIGTERM itself
        unhandled.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, fallback)
    start = time.monotonic()
    try:
        sigterm_when_running(gpu_run, 2)
        with pytest.raises(KeyboardInterrupt):
            gpu_run.run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not unhandled and time.monotonic() - start < 20
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| sleeper-a | interrupted |" in summary and "| sleeper-b | interrupted |" in summary
    assert "| after-a | skipped | 0.0 | stopped by Ctrl-C or SIGTERM |" in summary
    logs = tmp_path / "work" / "logs"
    assert group_gone(logs / "sleeper-a.log") and group_gone(logs / "sleeper-b.log")
    assert not (logs / "after-a.log").exists()


@pytest.mark.slow
def test_tiny_run_end_to_end_writes_the_summary_and_the_tarball(tmp_path, field_data):
    src = field_data
    data, out, work = tmp_path / "gpu_data", tmp_path / "out", tmp_path / "work"
    subprocess.run([str(SCRIPT), "--make-data", str(src), str(data), "--short-side", "48", "--unlabeled", "4"],
                   check=True, capture_output=True, timeout=120)
    done = subprocess.run([str(SCRIPT), "--tiny", "--skip", "throughput", "--data-root", str(data), "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, timeout=600)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert "experiment: unet-resnet18-quarter, 1 paired seed(s)" in done.stdout  # the plan comes first
    for stage in ("train", "export-int8", "evaluate", "predict", "pretrain-selective", "torchrun", "experiment"):
        assert f"| {stage} | ok |" in summary
    assert "| throughput | skipped | 0.0 | left out with --skip |" in summary  # costly on a CPU: see write_summary test
    pool = (work / "logs" / "pretrain-selective.log").read_text()
    assert "280 images from peanut train split" in pool and "4 images from " in pool  # peanut train + unlabelled
    assert "#### 100 % of the labelled training images" in summary  # the experiment's tables
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.tar.gz", "summary.md"]
    with tarfile.open(out / "gpu_run.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu_run/logs/experiment.log" in names and "gpu_run/experiment/results.json" in names
    assert "gpu_run/smoke/test.json" in names and "gpu_run/summary.md" in names
    assert not [n for n in names if n.endswith((".pt", ".onnx"))]


def test_summary_holds_the_stages_the_throughput_table_and_the_experiment_tables(tmp_path):
    gpu_run = load_gpu_run()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "throughput.log").write_text(
        "$ python benchmarks/training.py\n{'cpu': 'x'}\n\n| device | model | weedseg train |\n|---|---|---|\n"
        "| cuda | unet-resnet34 | 512.0 |\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "results.md").write_text("# Experiment: peanut\n\n## 10 % of the labels\n\n| a |\n")
    args = argparse.Namespace(tiny=False)
    outcomes = [gpu_run.Outcome("train", "ok", 12.5, "device cuda with bfloat16 | mixed precision"),
                gpu_run.Outcome("torchrun", "timed out", 60.0, "stopped after 60 s")]
    gpu_run.write_summary(tmp_path / "summary.md", args, "cpu", datetime(2026, 1, 2, 3, 4), time.monotonic(),
                          gpu_run.FULL, outcomes, [], "experiment: the plan", tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| train | ok | 12.5 | device cuda with bfloat16 / mixed precision |" in summary  # no broken table
    assert "| torchrun | timed out | 60.0 | stopped after 60 s |" in summary
    assert "| cuda | unet-resnet34 | 512.0 |" in summary and "{'cpu'" not in summary
    assert "experiment: the plan\n\n### Experiment: peanut\n\n#### 10 % of the labels" in summary
