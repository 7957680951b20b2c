"""`weedseg dataset check`: validate a labelled dataset before training, and summarise it.

Every image is paired with its mask, its header read (size, EXIF orientation) and its mask decoded
with the dataset's class map. Each problem found is one message; nothing stops at the first one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import WeedsegError
from ..metrics import ConfusionMatrix
from .io import open_checked
from .layouts import IGNORE_INDEX, Layout, Sample, get_layout
from .locate import find_dataset_root
from .splits import SPLITS, load_split

EXIF_ORIENTATION = 0x0112  # 1 upright; 3 turned 180 degrees; 5-8 turned by 90 degrees (width and height swap)
SWAPS_SIDES = (5, 6, 7, 8)
MAX_SHOWN = 30  # problems listed in full; the rest are counted
GROUPS = (*SPLITS, "all")  # class shares per split; "all" when the split cannot be read


@dataclass
class DatasetCheck:
    """What a check found: summary lines, notes (no action needed) and problems (fix before training)."""

    summary: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_dataset(name: str, data_root: str | Path | None = None) -> DatasetCheck:
    """Check dataset `name` (pairing, sizes, EXIF orientation, mask values, split, class shares)."""
    report = DatasetCheck()
    try:
        root = find_dataset_root(name, data_root)
        layout = get_layout(name, root)
        samples, no_mask, no_image = layout.pairs()
    except WeedsegError as exc:
        report.problems.append(str(exc))
        return report
    report.summary += [f"{name} dataset at {root}", f"classes: {layout.describe_classes()}",
                       f"{len(samples)} images with masks"]
    report.problems += [f"image {p} has no mask" for p in no_mask]
    report.problems += [f"mask {p} has no image" for p in no_image]
    if not samples:
        report.problems.append(f"no image has a mask under {root}")
        return report
    split_of = _split_of(name, root, samples, report)
    counts = {s: np.zeros(len(layout.classes) + 1, np.int64) for s in GROUPS}  # last: ignored pixels
    sizes, rotated, seen = Counter(), Counter(), {}
    for sample in samples:
        size, orientation = _check_image(sample, report)
        if orientation != 1:
            rotated[orientation] += 1
        mask = _decode(layout, sample, report)
        if size is not None:
            sizes[size] += 1
            if mask is not None:
                _check_size(sample, size, orientation, mask.shape, report)
        group = split_of.get(sample.id) if split_of else "all"
        if mask is not None and group:
            values = np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1)
            counts[group] += np.append(values[: len(layout.classes)], values[IGNORE_INDEX])
        try:
            digest = hashlib.sha1(sample.image.read_bytes()).hexdigest()
        except OSError as exc:
            report.problems.append(f"{sample.image}: cannot be read ({exc.strerror or exc})")
            continue
        first = seen.setdefault(digest, sample)
        if first is sample:
            continue
        agreement = _mask_agreement(layout, first, mask)
        splits = split_of.get(first.id), split_of.get(sample.id)
        if None not in splits and splits[0] != splits[1]:  # an image in no split is in no two splits
            report.problems.append(f"images {first.image.name} ({splits[0]}) and {sample.image.name} ({splits[1]}) "
                                   f"are the same photo in two splits{agreement}")
        else:
            report.notes.append(f"images {first.image.name} and {sample.image.name} are the same photo{agreement}")
    report.summary.append("image sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(5))
                          + (f" and {len(sizes) - 5} other sizes" if len(sizes) > 5 else ""))
    if rotated:
        report.notes.append(_exif_note(rotated))
    report.summary += _share_table(layout.classes, counts)
    _check_shares(layout.classes, counts, report)
    return report


def _split_of(name: str, root: Path, samples: list[Sample], report: DatasetCheck) -> dict[str, str]:
    """Sample id -> split name (empty when the split cannot be read; that is a problem)."""
    try:
        split = load_split(name, root, [s.id for s in samples])
    except WeedsegError as exc:
        report.problems.append(str(exc))
        return {}
    report.summary.append(" / ".join(f"{len(split.ids[s])} {s}" for s in SPLITS) + f"; {split.source}")
    unused = len(samples) - sum(len(v) for v in split.ids.values())
    if unused:
        report.notes.append(f"{unused} images are in no split list, so no command uses them")
    return {sid: s for s in SPLITS for sid in split.ids[s]}


def _check_image(sample: Sample, report: DatasetCheck) -> tuple[tuple[int, int] | None, int]:
    """(width, height) as weedseg uses the image (EXIF rotation applied) and its EXIF orientation."""
    try:
        with open_checked(sample.image) as im:
            (w, h), orientation = im.size, int(im.getexif().get(EXIF_ORIENTATION, 1))
    except WeedsegError as exc:
        report.problems.append(str(exc))
        return None, 1
    return ((h, w) if orientation in SWAPS_SIDES else (w, h)), orientation


def _decode(layout: Layout, sample: Sample, report: DatasetCheck) -> np.ndarray | None:
    try:
        return layout.decode_mask(sample.mask)
    except WeedsegError as exc:
        report.problems.append(str(exc))
        return None


def _mask_agreement(layout: Layout, first: Sample, mb: np.ndarray | None) -> str:
    """How far the mask of the first copy of a photo agrees with `mb`, the decoded mask of a later copy (None
    when it could not be decoded), as '; their masks agree at ... mIoU (...)' (or '')."""
    try:
        ma = layout.decode_mask(first.mask)
    except WeedsegError:  # already reported as a problem of its mask
        return ""
    if mb is None or ma.shape != mb.shape:
        return ""
    if np.array_equal(ma, mb):
        return "; their masks are identical"
    cm = ConfusionMatrix(len(layout.classes))
    truth = np.where(mb == IGNORE_INDEX, IGNORE_INDEX, ma)  # pixels either mask ignores are not compared
    cm.update(mb, truth)
    summary = cm.summary(layout.classes)
    per_class = ", ".join(f"{c} {100 * v:.1f}" for c, v in summary["iou"].items() if v == v)
    return f"; their masks agree at {100 * summary['miou']:.1f} mIoU ({per_class})"


def _check_size(sample: Sample, size: tuple[int, int], orientation: int, mask_shape: tuple[int, ...],
                report: DatasetCheck) -> None:
    (w, h), (mh, mw) = size, mask_shape[:2]
    if (mw, mh) == (w, h):
        return
    if orientation in SWAPS_SIDES and (mw, mh) == (h, w):
        report.problems.append(
            f"mask {sample.mask} is {mw}x{mh}, the size its photo is stored in, but {sample.image.name} has EXIF "
            f"orientation {orientation}, so weedseg (like photo viewers) uses the photo turned upright, {w}x{h}: "
            "draw the mask on the upright photo, or save the photo with its rotation applied")
    else:
        report.problems.append(f"mask {sample.mask} is {mw}x{mh} but its image {sample.image.name} is {w}x{h}")


def _exif_note(rotated: Counter) -> str:
    kinds = ", ".join(f"{n} with orientation {o}" for o, n in sorted(rotated.items()))
    return (f"{sum(rotated.values())} images carry an EXIF rotation ({kinds}): weedseg reads them turned upright, "
            "as photo viewers show them, so their masks must be drawn on the upright photos")


def _share_table(classes: list[str], counts: dict[str, np.ndarray]) -> list[str]:
    """Per split: the share of each class among the labelled pixels, and of ignored pixels among all."""
    width = max(8, *(len(c) + 2 for c in classes))
    lines = ["class shares (% of labelled pixels; ignored: % of all pixels):",
             f"  {'split':<7}" + "".join(f"{c:>{width}}" for c in [*classes, "ignored"])]
    for s in GROUPS:
        labelled, total = counts[s][:-1].sum(), counts[s].sum()
        if total == 0:
            continue
        shares = [100 * n / max(1, labelled) for n in counts[s][:-1]] + [100 * counts[s][-1] / total]
        lines.append(f"  {s:<7}" + "".join(f"{v:>{width}.1f}" for v in shares))
    return lines


def _check_shares(classes: list[str], counts: dict[str, np.ndarray], report: DatasetCheck) -> None:
    for s in GROUPS:
        if counts[s].sum() == 0:
            continue
        for name, n in zip(classes, counts[s]):
            if n == 0 and s in ("train", "all"):
                report.problems.append(f"class {name!r} has no pixels in the {s} images: the model cannot learn it")
            elif n == 0:
                report.notes.append(f"class {name!r} has no pixels in the {s} split: its IoU there is not defined")


def format_check(report: DatasetCheck) -> str:
    """The report as text: summary, notes, then one line per problem (or that there are none)."""
    lines = list(report.summary) + [f"note: {n}" for n in report.notes]
    if not report.problems:
        lines.append("no problems found")
        return "\n".join(lines)
    lines.append(f"{len(report.problems)} problem(s):")
    lines += [f"  - {p}" for p in report.problems[:MAX_SHOWN]]
    if len(report.problems) > MAX_SHOWN:
        lines.append(f"  ... and {len(report.problems) - MAX_SHOWN} more")
    return "\n".join(lines)
