"""Several processes: sampler sharding, and a 2-process gloo pretraining whose masks match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import SeededSampler
from weedseg.data.io import find_images
from weedseg.data.unlabeled import open_images
from weedseg.ssl.masking import top_cells
from weedseg.ssl.pretrain import PretrainConfig, score_cells

from test_ssl_pretrain import write_images


def test_sampler_shards_cover_the_single_process_order():
    single = list(SeededSampler(10, seed=4))
    shards = [SeededSampler(10, seed=4, rank=r, num_replicas=3) for r in range(3)]
    for s in shards:
        s.set_epoch(0)
    got = [list(s) for s in shards]
    assert [len(g) for g in got] == [4, 4, 4]
    interleaved = [pair for row in zip(*got) for pair in row]
    assert interleaved[:10] == single and interleaved[10:] == single[:2]  # padded by repeating the start


def test_two_process_gloo_pretraining_matches_single_process_masks(tmp_path):
    images_dir = write_images(tmp_path / "imgs")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "weedseg.cli", "pretrain", "--images", str(images_dir), "--out", str(out), "--epochs", "1",
           "--partitions", "3", "--batch-size", "4", "--crop", "32", "--score-short-side", "32", "--cells", "64",
           "--warmup-epochs", "1", "--pictures", "1", "--workers", "0", "--score-batch", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("pretrained in") == 1  # rank 0 alone reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["iterations"] == 3  # 4 images per step, global batch 4
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # one writer

    # step 2's masks were scored by two processes (two images each); one process must choose the same
    images, _ = open_images(find_images(images_dir), progress=False)
    cfg = PretrainConfig(**json.loads((out / "config.json").read_text()))
    ckpt = load_checkpoint(out / "step1" / "model.pt")
    norm = ckpt["normalization"]
    record = json.loads((out / "step2" / "masks.json").read_text())
    indices = [item["index"] for item in record["images"]]
    assert indices == [2, 5, 8, 11]
    single = score_cells(model_from_checkpoint(ckpt), images, indices, cfg, 2, norm["mean"], norm["std"],
                         torch.device("cpu"))
    for item in record["images"]:
        grid, scores = single[item["index"]]
        assert list(grid.y) == item["grid_y"] and list(grid.x) == item["grid_x"]
        np.testing.assert_allclose(scores, item["cell_loss"], atol=1e-4)
        assert np.flatnonzero(top_cells(scores, cfg.mask_ratio)).tolist() == item["masked_cells"]


def test_two_process_gloo_training(tmp_path, peanut_root):
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "weedseg.cli", "train", "--dataset", "peanut", "--data-root", str(peanut_root), "--out", str(out),
           "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "4", "--crop", "64", "--eval-short-side", "64",
           "--train-fraction", "0.05", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 processes" in done.stdout and done.stdout.count("best validation mIoU") == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer
    assert load_checkpoint(out / "best.pt")["model"]["num_classes"] == 3
