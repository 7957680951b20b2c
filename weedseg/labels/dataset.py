"""What every import format shares: class names to indices, painting shapes into an index mask, finding
the photos an export names, and writing the folder dataset (images/, masks/, dataset.toml) in one step.

A format module turns its export into `Item`s: a photo and its shapes in drawing order, each shape a class
name and a function that draws it as a boolean array of the photo's size. `write_dataset` paints them (later
shapes win where they overlap, said once), checks every size against the photo and writes the dataset into
a temporary folder that becomes `out` only when all is done, so an interrupted import leaves nothing half made.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import WeedsegError
from ..data.check import EXIF_ORIENTATION, SWAPS_SIDES
from ..data.io import IMAGE_SUFFIXES, open_checked
from ..data.layouts import IGNORE_INDEX, MAX_CLASSES
from ..data.splits import few
from ..infer.metadata import BACKGROUND_NAMES
from ..infer.atomic import atomic_write
from ..infer.pictures import encode_mask

log = logging.getLogger(__name__)

IGNORE = "ignore"  # the --class-map target that leaves a label out of training and scoring
Draw = Callable[[int, int], np.ndarray]  # (height, width) -> HxW bool: where the shape is


@dataclass
class Shape:
    """One labelled region: its class name as the export spells it, how to draw it and where it came from."""

    label: str
    draw: Draw
    where: str


@dataclass
class Item:
    """One photo of an export: how the export names it, the size the export says it has (None: not said)
    and its shapes in drawing order."""

    name: str
    size: tuple[int, int] | None  # (width, height)
    shapes: list[Shape] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import did, for the command's summary."""

    out: Path
    classes: list[str]
    photos: int
    notes: list[str]


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """`--class-map "Carrot=crop,Weeds=weed,Shadow=ignore"` as {export label: dataset class}."""
    if not text:
        return None
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise WeedsegError(f"--class-map: {part!r} is not LABEL=CLASS; write e.g. \"Carrot=crop,Weeds=weed\"")
        out[name.strip()] = target.strip()
    return out


class Classes:
    """The dataset's classes: the background first, then the export's labels (or the --class-map targets) in
    the order the export declares them; `index(label)` is the mask value of an export label."""

    def __init__(self, labels: list[str], class_map: dict[str, str] | None, background: str) -> None:
        mapping = class_map if class_map is not None else {label: label for label in labels}
        unknown = [label for label in labels if label not in mapping]
        if unknown:
            raise WeedsegError(f"the export has labels that --class-map does not name: {few(unknown)}; add them "
                               f"as LABEL=CLASS (or LABEL={IGNORE} to leave them out of training and scoring)")
        targets = [mapping[label] for label in labels]
        named_background = next((t for t in targets if t.lower() in BACKGROUND_NAMES), None)
        self.background = named_background or background
        self.names = [self.background] + [t for t in dict.fromkeys(targets) if t not in (IGNORE, self.background)]
        if len(self.names) > MAX_CLASSES:
            raise WeedsegError(f"the export has {len(self.names)} classes; weedseg supports at most {MAX_CLASSES}")
        self.mapping = mapping
        self.uses_ignore = IGNORE in targets

    def index(self, label: str, where: str) -> int:
        """The mask value of an export label; an undeclared one is a WeedsegError naming where it was found."""
        if label not in self.mapping:
            raise WeedsegError(f"{where}: label {label!r} is not among the export's classes "
                               f"({', '.join(self.mapping)}); fix the export, or pass --class-map naming it")
        target = self.mapping[label]
        return IGNORE_INDEX if target == IGNORE else self.names.index(target)


def paint(item: Item, classes: Classes, height: int, width: int) -> tuple[np.ndarray, int]:
    """The index mask of an item (background where no shape is) and how many pixels a later shape of
    another class painted over."""
    mask = np.zeros((height, width), np.uint8)
    painted = np.zeros((height, width), bool)
    overlap = 0
    for shape in item.shapes:
        value = classes.index(shape.label, shape.where)
        region = shape.draw(height, width)
        if region.shape != (height, width):
            raise WeedsegError(f"{shape.where}: the mask is {region.shape[1]}x{region.shape[0]} but the photo "
                               f"{item.name} is {width}x{height}; export the labels of this photo again")
        overlap += int(np.count_nonzero(region & painted & (mask != value)))
        mask[region] = value
        painted |= region
    return mask, overlap


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of a photo as labelling tools show it: upright, as its EXIF orientation says."""
    with open_checked(path) as im:
        (w, h), orientation = im.size, int(im.getexif().get(EXIF_ORIENTATION, 1))
    return (h, w) if orientation in SWAPS_SIDES else (w, h)


UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio stores an upload as <8 hex digits>-<file name>


class PhotoFinder:
    """Finds the photo an export names: as a path relative to the export's own folders, else by its file name
    (also without Label Studio's upload prefix) anywhere under the --images folder. A name without an image
    suffix (CVAT masks name photos by stem) matches any image suffix."""

    def __init__(self, roots: Iterable[Path], images: Path | None) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self.by_name: dict[str, list[Path]] = {}
        if images is not None:
            if not images.is_dir():
                raise WeedsegError(f"--images {images}: no such folder")
            for folder, _, names in os.walk(images):
                for n in names:
                    if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith("."):
                        path = Path(folder) / n
                        for key in {n.lower(), path.stem.lower()}:
                            self.by_name.setdefault(key, []).append(path)

    def find(self, name: str) -> Path | None:
        """The photo `name` refers to, or None; several equally good matches are a WeedsegError."""
        relative = name.split("?d=")[-1].lstrip("/")  # Label Studio's local-files URLs: /data/local-files/?d=PATH
        has_suffix = Path(relative).suffix.lower() in IMAGE_SUFFIXES
        for root in self.roots:
            candidates = [root / relative] if has_suffix else [root / f"{relative}{s}" for s in IMAGE_SUFFIXES]
            found = [c for c in candidates if c.is_file()]
            if found:
                return found[0]
        base = Path(relative).name
        for key in dict.fromkeys((base.lower(), UPLOAD_PREFIX.sub("", base).lower())):
            found = self.by_name.get(key, [])
            if len(found) > 1:
                raise WeedsegError(f"--images holds {len(found)} photos that match {name} ({few(found, 3)}); "
                                   "give a folder where only one does")
            if found:
                return found[0]
        return None


def write_dataset(items: Iterable[Item], classes: Classes, finder: PhotoFinder, out: Path,
                  keep_empty: bool = False) -> ImportReport:
    """Paint each item and write the folder dataset at `out` (which must not exist or be empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WeedsegError(f"--out {out} exists and is not empty; give a new folder")
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    shutil.rmtree(part, ignore_errors=True)
    (part / "images").mkdir(parents=True)
    (part / "masks").mkdir()
    missing, empty, overlapped, stems, suffixes = [], [], [], {}, set()
    try:
        for item in items:
            photo = finder.find(item.name)
            if photo is None:
                missing.append(item.name)
                continue
            width, height = upright_size(photo)
            if item.size is not None and tuple(item.size) != (width, height):
                raise WeedsegError(f"the export says {item.name} is {item.size[0]}x{item.size[1]}, but the photo "
                                   f"{photo} is {width}x{height}; label the photo itself (or give the right one "
                                   "with --images)")
            if not item.shapes and not keep_empty:
                empty.append(item.name)
                continue
            mask, overlap = paint(item, classes, height, width)
            if overlap:
                overlapped.append((item.name, overlap))
            stem = Path(photo.name).stem
            if stem.lower() in stems:
                raise WeedsegError(f"two photos would both be named {stem}: {stems[stem.lower()]} and {photo}; "
                                   "rename one before importing")
            stems[stem.lower()] = photo
            suffixes.add(photo.suffix.lower())
            shutil.copyfile(photo, part / "images" / photo.name)
            atomic_write(part / "masks" / f"{stem}.png", encode_mask(mask))
        if len(suffixes) > 1:
            raise WeedsegError(f"the photos have several file types ({', '.join(sorted(suffixes))}); a weedseg folder "
                               "dataset holds one: convert them to one type and label those")
        notes = import_notes(missing, empty, overlapped)
        if not stems:
            raise WeedsegError("no photo could be imported: " + "; ".join(notes) if notes else
                               "the export holds no labelled photos")
        (part / "dataset.toml").write_text(dataset_toml(classes, suffixes.pop()))
        if out.exists():
            out.rmdir()
        part.replace(out)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    for line in notes:
        log.warning("%s", line)
    return ImportReport(out, classes.names, len(stems), notes)


def import_notes(missing: list[str], empty: list[str], overlapped: list[tuple[str, int]]) -> list[str]:
    """One line per kind of thing left out or changed, naming the photos."""
    notes = []
    if missing:
        notes.append(f"{len(missing)} labelled photos were not found and were left out: {few(missing)} "
                     "(give the folder that holds them with --images)")
    if empty:
        notes.append(f"{len(empty)} photos have no labels and were left out: {few(empty)} "
                     "(--keep-empty imports them as all background)")
    if overlapped:
        pixels = sum(n for _, n in overlapped)
        notes.append(f"{len(overlapped)} photos have overlapping shapes of different classes ({pixels} pixels); "
                     f"the later shape wins: {few([name for name, _ in overlapped])}")
    return notes


def dataset_toml(classes: Classes, image_suffix: str) -> str:
    """dataset.toml of an imported dataset: index masks, the class map, the ignore value when used."""
    lines = ['images = "images"', 'masks = "masks"', f'image_suffix = "{image_suffix}"', 'mask_suffix = ".png"',
             'mask_format = "index"']
    if classes.uses_ignore:
        lines.append(f"ignore = {IGNORE_INDEX}")
    lines.append("[class_map]")
    lines += [f"{toml_key(name)} = {i}" for i, name in enumerate(classes.names)]
    return "\n".join(lines) + "\n"


def toml_key(name: str) -> str:
    """A class name as a TOML key: bare when it can be, else quoted."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
