"""The sample photos shipped in samples/peanut, which `make demo` segments and scores in a fresh clone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from weedseg.cli import main
from weedseg.data.check import check_dataset
from weedseg.resources import WEIGHTS_DIR

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "peanut"


def test_samples_are_a_small_attributed_test_only_folder_dataset():
    report = check_dataset("folder", SAMPLES)
    assert not report.problems, report.problems
    assert "6 images with masks" in report.summary and any("0 train / 0 val / 6 test" in s for s in report.summary)
    files = [p for p in SAMPLES.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2e6
    assert "CC BY-SA 4.0" in (SAMPLES / "README.md").read_text()
    for line in (SAMPLES / "SHA256SUMS").read_text().splitlines():  # the upstream files, unchanged
        digest, name = line.split()
        assert hashlib.sha256((SAMPLES / name).read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_demo_scores_the_samples_with_the_shipped_model(tmp_path):
    """`make demo` without the peanut folder: the evaluate step, at full resolution."""
    pytest.importorskip("torch")  # evaluate is a training-side command
    out = tmp_path / "sample-metrics.json"
    code = main(["evaluate", str(WEIGHTS_DIR / "weedseg-peanut-default.pt"), "--dataset", "folder", "--data-root",
                 str(SAMPLES), "--split", "test", "--full-res", "--out", str(out)])
    assert code == 0
    scores = json.loads(out.read_text())
    assert scores["images"] == 6 and scores["miou"] > 0.75
