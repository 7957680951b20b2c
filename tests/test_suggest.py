"""`weedseg suggest`: the uncertainty-weighted k-center pick, and the command on a few photos with the shipped model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.suggest import PhotoScore, describe, pick, softmax, suggest


def score(name: str, uncertainty: float, embedding: list[float]) -> PhotoScore:
    return PhotoScore(Path(name), uncertainty, uncertainty, np.array(embedding, np.float32))


def test_pick_spreads_uncertain_photos() -> None:
    scores = [score("a", 0.9, [0, 0]), score("a-copy", 0.89, [0, 0.01]), score("b", 0.5, [5, 5]),
              score("sure", 0.01, [10, -10])]
    assert [scores[i].path.name for i, _ in pick(scores, 2)] == ["a", "b"]  # not the near-copy of a
    # a photo like one already labelled counts as covered
    assert [scores[i].path.name for i, _ in pick(scores, 1, [np.array([0, 0], np.float32)])] == ["b"]


def test_describe_margin_and_entropy() -> None:
    sure = np.zeros((3, 8, 8), np.float32)
    sure[0] = 20
    torn = np.zeros((3, 8, 8), np.float32)  # every class equally likely
    x = np.zeros((3, 8, 8), np.float32)
    u_sure, e_sure, _ = describe(softmax(sure), x)
    u_torn, e_torn, emb = describe(softmax(torn), x)
    assert u_sure < 1e-6 and u_torn == pytest.approx(1.0) and e_torn == pytest.approx(np.log(3), rel=1e-4)
    assert e_sure < e_torn and emb.ndim == 1


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the shipped model is not in this checkout")
def test_suggest_command_writes_list_and_scores(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for n in range(5):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(photos / f"{n}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a photo")
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    out = tmp_path / "next.txt"
    assert main(["suggest", str(photos), "--model", str(DEFAULT_MODEL), "-n", "3", "--out", str(out),
                 "--threads", "1"]) == 0
    chosen = out.read_text().splitlines()
    assert len(chosen) == 3 and len(set(chosen)) == 3 and all(Path(p).is_file() for p in chosen)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 5 and [r["photo"] for r in rows[:3]] == chosen and [r["rank"] for r in rows] == ["1", "2", "3", "", ""]
    with pytest.raises(WeedsegError, match="give the list a .txt name"):
        suggest(Segmenter(DEFAULT_MODEL, "cpu", 1), photos, 2, tmp_path / "x.csv")
