"""Pseudo-labels: masks that `weedseg predict` wrote for unlabelled photos, used as extra training samples.

A predict output folder records the folder it read (`weedseg-run.json`: "input") and the model's classes, and
lists each image with its mask in `summary.csv`. Those pairs join the training split (self-training: label a
few photos, train, predict the rest, train again on both). Photos that are labelled in the dataset keep their
label; a photo that is in the val or test split, by path or by content, stops the run, since training on it
would make its scores meaningless.
"""

from __future__ import annotations

import csv
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
    classes_made = record.get("model", {}).get("classes")
    if "input" not in record or classes_made is None:
        raise WeedsegError(f"{record_path} does not say which photos were read or which classes the masks hold (an "
                           "older weedseg wrote it); run `weedseg predict ... --overwrite` again with this version")
    if classes_made != classes:
        raise WeedsegError(f"--pseudo-labels {folder}: its masks hold the classes {classes_made}, this dataset "
                           f"has {classes}; predict with a model of the dataset's classes")
    photos = Path(record["input"])
    with summary.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask") and r.get("status") != "failed"]
    samples = []
    for row in rows:
        image = photos / row["image"]
        mask = folder / row["mask"]
        if not image.is_file() or not mask.is_file():
            raise WeedsegError(f"--pseudo-labels {folder}: {image if not image.is_file() else mask} is gone since "
                               "`weedseg predict` ran; predict again into a new folder")
        samples.append(Sample(f"{folder.name}/{row['image']}", image, mask, predicted=True))
    return samples


def add_pseudo_labels(splits: dict[str, list[Sample]], folders: list[str], classes: list[str]) -> int:
    """Extend splits["train"] with the predicted samples of `folders`; returns how many were added.

    Photos already in train (same file) are skipped; one in val or test (same file or same bytes) is an error."""
    held_out = {s.image.resolve(): split for split in ("val", "test") for s in splits.get(split, [])}
    held_out_bytes = {file_sha256(p): split for p, split in held_out.items()}
    labelled = {s.image.resolve() for s in splits["train"]}
    added = []
    for folder in folders:
        for sample in read_predictions(Path(folder), classes):
            path = sample.image.resolve()
            split = held_out.get(path) or held_out_bytes.get(file_sha256(path))
            if split:
                raise WeedsegError(f"--pseudo-labels {folder}: {sample.image} is a {split} photo of this dataset; "
                                   f"training on it would make the {split} scores meaningless. Predict a folder "
                                   "without the val and test photos")
            if path not in labelled:
                labelled.add(path)
                added.append(sample)
    splits["train"] = splits["train"] + added
    return len(added)
