"""Pseudo-labels: masks that `weedseg predict` wrote for unlabelled photos, used as extra training samples.

A predict output folder records the folder it read (`weedseg-run.json`: "input") and the model's classes, and
lists each image with its mask in `summary.csv`. Those pairs join the training split (self-training: label a
few photos, train, predict the rest, train again on both). Photos that are labelled in the dataset keep their
label; photos of the val or test split, by path or by content, are left out (with a message), since training
on them would make their scores meaningless.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

from .. import WeedsegError
from .io import RUN_MANIFEST, file_sha256
from .layouts import Sample


def read_predictions(folder: Path, classes: list[str]) -> list[Sample]:
    """The (image, mask) pairs of one `weedseg predict` output folder, as predicted samples."""
    record_path, summary = folder / RUN_MANIFEST, folder / "summary.csv"
    if not record_path.is_file() or not summary.is_file():
        raise WeedsegError(f"--pseudo-labels {folder}: not a `weedseg predict` output folder (no {RUN_MANIFEST} and "
                           "summary.csv); run `weedseg predict PHOTOS --out FOLDER --outputs mask` first")
    try:
        record = json.loads(record_path.read_text())
    except ValueError as exc:
        raise WeedsegError(f"{record_path} is not valid JSON ({exc})") from None
    record = record if isinstance(record, dict) else {}  # a damaged record says as little as an old one
    model = record.get("model")
    classes_made = model.get("classes") if isinstance(model, dict) else None
    if not isinstance(record.get("input"), str) or classes_made is None:
        raise WeedsegError(f"{record_path} does not say which photos were read or which classes the masks hold (an "
                           "older weedseg wrote it); run `weedseg predict ... --overwrite` again with this version")
    if classes_made != classes:
        raise WeedsegError(f"--pseudo-labels {folder}: its masks hold the classes {classes_made}, this dataset "
                           f"has {classes}; predict with a model of the dataset's classes")
    photos = Path(record["input"])
    try:
        with summary.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("image") and r.get("mask") and r.get("status") != "failed"]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise WeedsegError(f"{summary} is not a readable summary.csv ({exc}); predict again into a new folder") from None
    samples = []
    for row in rows:
        image = photos / row["image"]
        mask = folder / row["mask"]
        if not image.is_file() or not mask.is_file():
            raise WeedsegError(f"--pseudo-labels {folder}: {image if not image.is_file() else mask} is gone since "
                               "`weedseg predict` ran; predict again into a new folder")
        samples.append(Sample(f"{folder.name}/{row['image']}", image, mask, predicted=True))
    return samples


def add_pseudo_labels(splits: dict[str, list[Sample]], folders: list[str], classes: list[str]) -> tuple[int, list[str]]:
    """Extend splits["train"] with the predicted samples of `folders`; returns how many were added and one
    'photo: why' line per predicted photo left out: photos already in train (same file) keep their label, and
    photos of val or test (same file, or the same bytes under another name) are never trained on."""
    held_out = {s.image.resolve(): f"{split} photo {s.image.name}" for split in ("val", "test") for s in splits[split]}
    by_size: dict[int, list[Path]] = {}
    for path in held_out:
        by_size.setdefault(path.stat().st_size, []).append(path)
    sha = functools.cache(file_sha256)  # files are read to compare contents only where sizes match, each once

    def same_photo(path: Path) -> str | None:
        if path in held_out:
            return held_out[path]
        twins = by_size.get(path.stat().st_size, [])
        return next((held_out[t] for t in twins if sha(t) == sha(path)), None)

    labelled = {s.image.resolve() for s in splits["train"]}
    added, left_out = [], []
    for folder in folders:
        for sample in read_predictions(Path(folder), classes):
            path = sample.image.resolve()
            same = same_photo(path)
            if same:
                left_out.append(f"{sample.image}: the {same}")
            elif path not in labelled:
                labelled.add(path)
                added.append(sample)
    splits["train"] = splits["train"] + added
    return len(added), left_out
