"""Labels from and for the labelling tools people use: `weedseg dataset import` (CVAT, Label Studio, COCO
exports into a weedseg folder dataset) and the prelabels `weedseg predict --outputs prelabels` writes
(COCO RLE and Label Studio predictions, to correct rather than draw). See docs/labelling.md."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from .. import WeedsegError
from .coco import coco_items, find_coco_json, read_json, require_pycocotools
from .cvat import LABELMAP, cvat_mask_items, read_labelmap
from .dataset import Classes, ImportReport, PhotoFinder, parse_class_map, write_dataset
from .labelstudio import labelstudio_items

FORMATS = ("cvat-mask", "cvat-coco", "labelstudio", "coco")
MAX_ZIP_BYTES = 20 << 30


def import_labels(export: str | Path, fmt: str, out: str | Path, images: str | Path | None = None,
                  class_map: str | None = None, background: str = "soil", keep_empty: bool = False) -> ImportReport:
    """`weedseg dataset import`: turn a labelling tool's export (a folder, a file or a .zip) into a folder dataset."""
    export = Path(export)
    if not export.exists():
        raise WeedsegError(f"export not found: {export}")
    if export.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="weedseg-import-") as tmp:
            return import_labels(unzip(export, Path(tmp)), fmt, out, images, class_map,
                                 background, keep_empty)
    mapping = parse_class_map(class_map)
    images = Path(images) if images else None
    if fmt == "cvat-mask":
        folder = export if export.is_dir() else export.parent
        labelmap = read_labelmap(folder / LABELMAP)
        classes = Classes(list(labelmap), mapping, background)
        finder = PhotoFinder([folder / "JPEGImages", folder / "images", folder], images)
        return write_dataset(cvat_mask_items(folder, labelmap), classes, finder, Path(out), keep_empty)
    if fmt in ("coco", "cvat-coco"):
        require_pycocotools()
        path = find_coco_json(export)
        labels, items = coco_items(read_json(path), path)
        roots = [path.parent, path.parent / "images", path.parent.parent / "images"]
    elif fmt == "labelstudio":
        if not export.is_file():
            raise WeedsegError(f"{export} is a folder: give Label Studio's JSON export file itself")
        labels, items = labelstudio_items(read_json(export), export)
        roots = [export.parent, export.parent / "images"]
    else:
        raise WeedsegError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return write_dataset(items, Classes(labels, mapping, background), PhotoFinder(roots, images), Path(out), keep_empty)


def unzip(archive: Path, into: Path) -> Path:
    """Extract an export archive (checked for size first); the folder that holds its contents."""
    try:
        with zipfile.ZipFile(archive) as z:
            total = sum(info.file_size for info in z.infolist())
            if total > MAX_ZIP_BYTES:
                raise WeedsegError(f"{archive} unpacks to {total / 1e9:.0f} GB; unzip it yourself and give the folder")
            z.extractall(into)
    except zipfile.BadZipFile as exc:
        raise WeedsegError(f"{archive} is not a readable zip file ({exc})") from None
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into
