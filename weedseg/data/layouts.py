"""On-disk dataset layouts: which files form a sample and how a label file becomes class indices.

Each layout lists its samples and decodes its masks to an HxW uint8 array of class indices.
`folder` is configured by a small TOML file; `peanut` is a preset folder layout; `sugarbeets`
and `nassar` follow the published layouts of those datasets (see shared/docs/method.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import WeedsegError
from .io import read_label_map

SOIL_CROP_WEED = ["soil", "crop", "weed"]
SOIL_CROP_WEED_COLORS = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]


@dataclass(frozen=True)
class Sample:
    """One labelled image: a stable id, the image path and the mask path."""

    id: str
    image: Path
    mask: Path


@dataclass
class Layout:
    """Base class: class names, display colours, how to list samples and decode a mask."""

    name: str
    root: Path
    classes: list[str] = field(default_factory=lambda: list(SOIL_CROP_WEED))
    colors: list[list[int]] = field(default_factory=lambda: [list(c) for c in SOIL_CROP_WEED_COLORS])
    source_hint: str = ""

    def samples(self) -> list[Sample]:
        raise NotImplementedError

    def decode_mask(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def _missing(self, what: str, expected: str) -> WeedsegError:
        return WeedsegError(
            f"{self.name} dataset: {what} under {self.root}.\nExpected layout:\n{expected}"
            + (f"\nGet the dataset: {self.source_hint}" if self.source_hint else "")
        )


@dataclass
class FolderLayout(Layout):
    """Images in one folder, masks in another, paired by file stem.

    Masks are either class indices (`mask_format = "index"`, pixel value = class) or colours
    (`mask_format = "color"`, one RGB colour per class, listed in `colors`).
    """

    images: str = "images"
    masks: str = "masks"
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    mask_format: str = "color"

    def samples(self) -> list[Sample]:
        img_dir, mask_dir = self.root / self.images, self.root / self.masks
        expected = (
            f"  {img_dir}/<id>{self.image_suffix}\n  {mask_dir}/<id>{self.mask_suffix}"
        )
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise self._missing("image or mask folder not found", expected)
        found = []
        for image in sorted(img_dir.iterdir()):
            if not image.name.endswith(self.image_suffix):
                continue
            sid = image.name[: -len(self.image_suffix)]
            mask = mask_dir / f"{sid}{self.mask_suffix}"
            if not mask.is_file():
                raise WeedsegError(f"{self.name} dataset: image {image} has no mask (expected {mask})")
            found.append(Sample(sid, image, mask))
        if not found:
            raise self._missing(f"no '*{self.image_suffix}' images in {img_dir}", expected)
        return found

    def decode_mask(self, path: Path) -> np.ndarray:
        raw = read_label_map(path)
        if self.mask_format == "index":
            return _decode_index_mask(raw, len(self.classes), path)
        if self.mask_format == "color":
            return _decode_color_mask(raw, self.colors, self.classes, path)
        raise WeedsegError(f"mask_format must be 'index' or 'color', got {self.mask_format!r}")


def _decode_index_mask(raw: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    if raw.ndim == 3:  # an index mask saved as RGB grey: all channels must agree
        if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all()):
            raise WeedsegError(f"mask {path} is a colour image, but this dataset expects class-index masks")
        raw = raw[..., 0]
    bad = np.unique(raw[raw >= num_classes])
    if bad.size:
        raise WeedsegError(
            f"mask {path} has values {bad[:10].tolist()} but only classes 0..{num_classes - 1} exist"
        )
    return raw.astype(np.uint8)


def _decode_color_mask(raw: np.ndarray, colors: list[list[int]], classes: list[str], path: Path) -> np.ndarray:
    if raw.ndim != 3:
        raise WeedsegError(f"mask {path} is single-channel, but this dataset expects colour masks")
    code = (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]
    out = np.full(code.shape, 255, np.uint8)
    for index, (r, g, b) in enumerate(colors):
        out[code == (r << 16 | g << 8 | b)] = index
    unknown = out == 255
    if unknown.any():
        first = raw[unknown][0].tolist()
        legend = ", ".join(f"{n}={tuple(c)}" for n, c in zip(classes, colors))
        raise WeedsegError(
            f"mask {path} has {int(unknown.sum())} pixels of colours outside the colour map "
            f"(first: RGB {tuple(first)}); expected only {legend}"
        )
    return out


def peanut_layout(root: Path) -> FolderLayout:
    """The peanut field dataset: images/NNNN.jpg, labels/NNNN.png in black/green/red."""
    return FolderLayout(
        name="peanut",
        root=root,
        images="images",
        masks="labels",
        source_hint="https://github.com/ptdkhoa/Peanut-dataset (CC BY-SA 4.0), or ../shared/field_data/peanut",
    )


def folder_layout(root: Path) -> FolderLayout:
    """A generic folder dataset described by `<root>/dataset.toml`."""
    config_path = root / "dataset.toml"
    if not config_path.is_file():
        raise WeedsegError(
            f"folder dataset: {config_path} not found. Write one, for example:\n{FOLDER_TOML_EXAMPLE}"
        )
    try:
        cfg = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise WeedsegError(f"{config_path} is not valid TOML: {exc}") from exc
    allowed = {"classes", "colors", "images", "masks", "image_suffix", "mask_suffix", "mask_format"}
    unknown = set(cfg) - allowed
    if unknown:
        raise WeedsegError(f"{config_path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    layout = FolderLayout(name="folder", root=root, **cfg)
    if layout.mask_format == "color" and len(layout.colors) != len(layout.classes):
        raise WeedsegError(f"{config_path}: 'colors' needs one RGB triple per class in 'classes'")
    return layout


FOLDER_TOML_EXAMPLE = """\
  # dataset.toml
  classes = ["soil", "crop", "weed"]
  colors = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]   # display colours; also the mask colours
  images = "images"          # folder of images, relative to this file
  masks = "masks"            # folder of masks, same stems as the images
  image_suffix = ".jpg"
  mask_suffix = ".png"
  mask_format = "color"      # or "index": pixel value = class number"""


@dataclass
class SugarbeetsLayout(Layout):
    """Sugarbeets 2016 (Bonn): CKA_*/images/rgb/<f>.png + CKA_*/annotations/dlp/iMapCleaned/<f>.png.

    Label maps are 16-bit: 10000 = crop (sugar beet), above 10000 = weed, anything below 10000
    (0, 1, 97 in the release) = background. Only frames that have a label map are samples.
    """

    def samples(self) -> list[Sample]:
        found = []
        for label in sorted(self.root.glob("*/annotations/dlp/iMapCleaned/*.png")):
            day = label.parents[3]
            image = day / "images" / "rgb" / label.name
            if image.is_file():
                found.append(Sample(f"{day.name}/{label.stem}", image, label))
        if not found:
            raise self._missing(
                "no RGB frames with iMapCleaned label maps found",
                "  <root>/CKA_YYMMDD/images/rgb/<frame>.png\n"
                "  <root>/CKA_YYMMDD/annotations/dlp/iMapCleaned/<frame>.png (16-bit)",
            )
        return found

    def decode_mask(self, path: Path) -> np.ndarray:
        raw = read_label_map(path)
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise WeedsegError(
                f"Sugarbeets label map {path} should be a single-channel 16-bit PNG, got "
                f"{raw.dtype} with {1 if raw.ndim == 2 else raw.shape[2]} channel(s)"
            )
        out = np.zeros(raw.shape, np.uint8)
        out[raw == 10000] = 1
        out[raw > 10000] = 2
        return out


@dataclass
class NassarLayout(Layout):
    """Nassar 2020 UAV tiles: <root>/data/<id>.png + <root>/mask/<id>.png (0 soil, 1 crop, 2 weed)."""

    def samples(self) -> list[Sample]:
        data, mask = self.root / "data", self.root / "mask"
        found = [Sample(p.stem, p, mask / p.name) for p in sorted(data.glob("*.png")) if (mask / p.name).is_file()]
        if not found:
            raise self._missing(
                "no tiles with masks found", "  <root>/data/<id>.png\n  <root>/mask/<id>.png (values 0, 1, 2)"
            )
        return found

    def decode_mask(self, path: Path) -> np.ndarray:
        return _decode_index_mask(read_label_map(path), 3, path)


def get_layout(name: str, root: Path) -> Layout:
    """The layout of dataset `name` rooted at `root`."""
    if name == "peanut":
        return peanut_layout(root)
    if name == "folder":
        return folder_layout(root)
    if name == "sugarbeets":
        return SugarbeetsLayout(
            name="sugarbeets", root=root, classes=["soil", "crop", "weed"],
            source_hint="https://www.ipb.uni-bonn.de/data/sugarbeets2016/ (CC BY-SA 4.0)",
        )
    if name == "nassar":
        return NassarLayout(name="nassar", root=root, source_hint="Kaggle dataset yueminwang/nassar-2020")
    raise WeedsegError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


DATASETS = ("peanut", "sugarbeets", "nassar", "folder")
