"""On-disk dataset layouts: which files form a sample and how a label file becomes class indices.

Each layout lists its samples and decodes its masks to an HxW uint8 array of class indices.
`folder` is configured by a small TOML file; `peanut` is a preset folder layout; `sugarbeets`
and `nassar` follow the published layouts of those datasets (see shared/docs/method.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import WeedsegError
from .io import read_label_map

SOIL_CROP_WEED = ["soil", "crop", "weed"]
SOIL_CROP_WEED_COLORS = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
IGNORE_INDEX = 255  # decoded-mask value of pixels that count in neither the loss nor the metrics
_UNKNOWN = 254  # decoded-mask value of a pixel outside the class map (always an error)
MAX_CLASSES = 250
MaskValue = int | tuple[int, int, int]  # a class index, or an (R, G, B) colour


@dataclass(frozen=True)
class Sample:
    """One labelled image: a stable id, the image path and the mask path (`predicted`: a class-index mask
    written by `weedseg predict`, a pseudo-label, rather than one in the dataset's own format)."""

    id: str
    image: Path
    mask: Path
    predicted: bool = False


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

    def decode_sample_mask(self, sample: Sample) -> np.ndarray:
        """The class indices of a sample's mask: a pseudo-label holds them as they are, in this layout's class order."""
        if sample.predicted:
            indices = list(range(len(self.classes)))
            return decode_values(read_label_map(sample.mask), "index", indices, None,
                                 f"class indices 0-{len(self.classes) - 1} (a `weedseg predict` mask)", sample.mask)
        return self.decode_mask(sample.mask)

    def pairs(self) -> tuple[list[Sample], list[Path], list[Path]]:
        """The samples, the images without a mask and the masks without an image (where the layout can tell)."""
        return self.samples(), [], []

    def describe_classes(self) -> str:
        """The class names and how masks encode them, for messages."""
        return ", ".join(f"{name} = {i}" for i, name in enumerate(self.classes))

    def _missing(self, what: str, expected: str) -> WeedsegError:
        return WeedsegError(
            f"{self.name} dataset: {what} under {self.root}.\nExpected layout:\n{expected}"
            + (f"\nGet the dataset: {self.source_hint}" if self.source_hint else "")
        )


@dataclass
class FolderLayout(Layout):
    """Images in one folder, masks in another, paired by file stem (suffixes match in any letter case).

    Masks hold class indices (`mask_format = "index"`) or RGB colours (`"color"`). `values[i]` is the
    mask value of class i (an index, or an (R, G, B) triple); without it class i is index i, or colour
    `colors[i]`. Pixels of the `ignore` value are decoded to IGNORE_INDEX: no loss, no score.
    """

    images: str = "images"
    masks: str = "masks"
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    mask_format: str = "color"
    values: list[MaskValue] | None = None
    ignore: MaskValue | None = None

    def mask_values(self) -> list[MaskValue]:
        """The mask value of each class, in class order."""
        if self.values is not None:
            return self.values
        if self.mask_format == "index":
            return list(range(len(self.classes)))
        return [tuple(c) for c in self.colors]

    def describe_classes(self) -> str:
        pairs = ", ".join(f"{name} = {_show(v)}" for name, v in zip(self.classes, self.mask_values()))
        ignored = f"; ignored: {_show(self.ignore)}" if self.ignore is not None else ""
        return f"{pairs} ({self.mask_format} masks){ignored}"

    def pairs(self) -> tuple[list[Sample], list[Path], list[Path]]:
        img_dir, mask_dir = self.root / self.images, self.root / self.masks
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise self._missing("image or mask folder not found", self._expected())
        image_suffix, mask_suffix = self.image_suffix.lower(), self.mask_suffix.lower()
        masks = {p.name.lower(): p for p in _visible_files(mask_dir) if p.name.lower().endswith(mask_suffix)}
        found, no_mask = [], []
        for image in _visible_files(img_dir):
            if not image.name.lower().endswith(image_suffix):
                continue
            sid = image.name[: len(image.name) - len(image_suffix)]
            mask = masks.pop(f"{sid}{self.mask_suffix}".lower(), None)
            if mask is None:
                no_mask.append(image)
            else:
                found.append(Sample(sid, image, mask))
        return found, no_mask, sorted(masks.values())

    def samples(self) -> list[Sample]:
        found, no_mask, _ = self.pairs()
        if no_mask:
            first = no_mask[0]
            expected = self.root / self.masks / f"{first.name[: len(first.name) - len(self.image_suffix)]}{self.mask_suffix}"
            raise WeedsegError(f"{self.name} dataset: {len(no_mask)} image(s) have no mask, the first {first} "
                               f"(expected {expected}); `weedseg dataset check` lists them all")
        if not found:
            raise self._missing(f"no '*{self.image_suffix}' images in {self.root / self.images}", self._expected())
        return found

    def decode_mask(self, path: Path) -> np.ndarray:
        legend = self.describe_classes()
        return decode_values(read_label_map(path), self.mask_format, self.mask_values(), self.ignore, legend, path)

    def _expected(self) -> str:
        return (f"  {self.root / self.images}/<id>{self.image_suffix}\n"
                f"  {self.root / self.masks}/<id>{self.mask_suffix}")


def _visible_files(folder: Path) -> list[Path]:
    """The files of `folder`, sorted, without hidden ones (such as macOS '._name' copies)."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def _show(value: MaskValue) -> str:
    return str(value) if isinstance(value, int) else f"({', '.join(map(str, value))})"


def _codes(raw: np.ndarray, mask_format: str, path: Path) -> np.ndarray:
    """One int32 code per pixel: the index (index masks) or R << 16 | G << 8 | B (colour masks)."""
    if mask_format == "index":
        if raw.ndim == 3:  # an index mask saved as RGB grey: all channels must agree
            if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all()):
                raise WeedsegError(f"mask {path} is a colour image, but this dataset expects class-index masks "
                                   "(mask_format = \"index\")")
            raw = raw[..., 0]
        return raw.astype(np.int32)
    if raw.ndim != 3:
        raise WeedsegError(f"mask {path} is single-channel, but this dataset expects colour masks "
                           "(mask_format = \"color\")")
    return (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]


def _code(value: MaskValue) -> int:
    return value if isinstance(value, int) else (value[0] << 16 | value[1] << 8 | value[2])


def decode_values(raw: np.ndarray, mask_format: str, values: list[MaskValue], ignore: MaskValue | None,
                  legend: str, path: Path) -> np.ndarray:
    """Class indices (uint8) from a raw mask; `ignore` pixels become IGNORE_INDEX, other values are an error."""
    code = _codes(raw, mask_format, path)
    out = np.full(code.shape, _UNKNOWN, np.uint8)
    for index, value in enumerate(values):
        out[code == _code(value)] = index
    if ignore is not None:
        out[code == _code(ignore)] = IGNORE_INDEX
    unknown = out == _UNKNOWN
    if unknown.any():
        if mask_format == "index":
            found = f"values {np.unique(code[unknown])[:10].tolist()}"
        else:
            found = f"colours (first: RGB {tuple(int(v) for v in raw[unknown][0])})"
        raise WeedsegError(f"mask {path} has {int(unknown.sum())} pixels of {found} outside the class map; "
                           f"expected only {legend}")
    return out


def peanut_layout(root: Path) -> FolderLayout:
    """The peanut field dataset: images/NNNN.jpg, labels/NNNN.png in black/green/red."""
    return FolderLayout(
        name="peanut",
        root=root,
        images="images",
        masks="labels",
        source_hint="https://github.com/ptdkhoa/Peanut-dataset (CC BY-SA 4.0)",
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
    return FolderLayout(name="folder", root=root, **parse_folder_config(cfg, config_path))


FOLDER_KEYS = ("images", "masks", "image_suffix", "mask_suffix", "mask_format", "class_map", "classes", "colors",
               "ignore")
TEXT_KEYS = {"images": "images", "masks": "masks", "image_suffix": ".jpg", "mask_suffix": ".png",
             "mask_format": "color"}


def parse_folder_config(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """FolderLayout fields from a parsed dataset.toml; any wrong key is a one-line WeedsegError naming it."""
    unknown = sorted(set(cfg) - set(FOLDER_KEYS))
    if unknown:
        raise WeedsegError(f"{where}: unknown keys {unknown}; allowed: {list(FOLDER_KEYS)}")
    out: dict[str, Any] = {}
    for key, example in TEXT_KEYS.items():
        if key in cfg:
            if not isinstance(cfg[key], str) or not cfg[key]:
                raise WeedsegError(f"{where}: '{key}' must be text in quotes, such as {key} = \"{example}\"; "
                                   f"got {cfg[key]!r}")
            out[key] = cfg[key]
    fmt = out.get("mask_format", "color")
    if fmt not in ("index", "color"):
        raise WeedsegError(f"{where}: 'mask_format' must be \"index\" or \"color\", got {fmt!r}")
    if "class_map" in cfg and "classes" in cfg:
        raise WeedsegError(f"{where}: give either 'class_map' (class name = mask value) or 'classes' "
                           "(mask value = position in the list), not both")
    if "class_map" in cfg:
        out["classes"], out["values"] = _class_map(cfg["class_map"], fmt, where)
    elif "classes" in cfg:
        out["classes"] = _class_names(cfg["classes"], where)
    classes = out.get("classes", list(SOIL_CROP_WEED))
    if "colors" in cfg:
        out["colors"] = _colors(cfg["colors"], len(classes), where)
    elif fmt == "color" and "values" in out:
        out["colors"] = [list(v) for v in out["values"]]
    else:
        out["colors"] = _default_colors(classes, need_known=fmt == "color", where=where)
    if "ignore" in cfg:
        out["ignore"] = _mask_value(cfg["ignore"], fmt, "ignore", where)
        taken = out.get("values") or (list(range(len(classes))) if fmt == "index" else
                                      [tuple(c) for c in out["colors"]])
        if out["ignore"] in taken:
            raise WeedsegError(f"{where}: 'ignore' = {_show(out['ignore'])} is also the mask value of class "
                               f"{classes[taken.index(out['ignore'])]!r}")
    return out


def _class_map(table: Any, fmt: str, where: Path) -> tuple[list[str], list[MaskValue]]:
    if not isinstance(table, dict) or not table:
        raise WeedsegError(f"{where}: 'class_map' must be a table of class name = mask value, such as "
                           "[class_map] soil = 0, weed = 1, crop = 2")
    if "ignore" in table:
        raise WeedsegError(f"{where}: 'ignore' is inside the [class_map] table; move the line 'ignore = ...' "
                           "above [class_map] (in TOML every key after a [table] line belongs to that table)")
    if len(table) > MAX_CLASSES:
        raise WeedsegError(f"{where}: 'class_map' has {len(table)} classes; at most {MAX_CLASSES} are supported")
    values = [_mask_value(v, fmt, f"class_map.{name}", where) for name, v in table.items()]
    for i, value in enumerate(values):
        if value in values[:i]:
            first = list(table)[values.index(value)]
            raise WeedsegError(f"{where}: 'class_map': {first!r} and {list(table)[i]!r} have the same mask value "
                               f"{_show(value)}")
    return list(table), values


def _class_names(names: Any, where: Path) -> list[str]:
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names) or len(names) > MAX_CLASSES):
        raise WeedsegError(f"{where}: 'classes' must be a list of distinct class names in quotes, such as "
                           f"classes = [\"soil\", \"crop\", \"weed\"]; got {names!r}")
    return list(names)


def _is_rgb(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value))


def _colors(colors: Any, count: int, where: Path) -> list[list[int]]:
    if not isinstance(colors, list) or not all(_is_rgb(c) for c in colors):
        raise WeedsegError(f"{where}: 'colors' must be a list of [R, G, B] colours of three numbers 0-255, such as "
                           f"[[0, 0, 0], [0, 255, 0]]; got {colors!r}")
    if len(colors) != count:
        raise WeedsegError(f"{where}: 'colors' needs one [R, G, B] colour per class: {count} classes, "
                           f"{len(colors)} colours")
    return [list(c) for c in colors]


def _mask_value(value: Any, fmt: str, key: str, where: Path) -> MaskValue:
    if fmt == "index":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
            return value
        raise WeedsegError(f"{where}: '{key}' must be a class number 0-65535 (mask_format = \"index\"); got {value!r}")
    if _is_rgb(value):
        return tuple(value)
    raise WeedsegError(f"{where}: '{key}' must be an [R, G, B] colour of three numbers 0-255 "
                       f"(mask_format = \"color\"); got {value!r}")


DISPLAY_COLORS = dict(zip(SOIL_CROP_WEED, SOIL_CROP_WEED_COLORS))
EXTRA_COLORS = [[0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [255, 128, 0], [128, 0, 255],
                [128, 128, 128], [0, 128, 0]]


def _default_colors(classes: list[str], need_known: bool, where: Path) -> list[list[int]]:
    """Display colours: soil black, crop green, weed red, others from EXTRA_COLORS.

    With colour masks and no class_map these are also the mask colours, so every class must be a known one.
    """
    unknown = [name for name in classes if name not in DISPLAY_COLORS]
    if need_known and unknown:
        raise WeedsegError(f"{where}: colour masks need the colour of {unknown}: add a [class_map] table "
                           "(class name = [R, G, B]) or a 'colors' list")
    extra = iter(EXTRA_COLORS * (len(classes) // len(EXTRA_COLORS) + 1))
    return [list(DISPLAY_COLORS[name]) if name in DISPLAY_COLORS else next(extra) for name in classes]


FOLDER_TOML_EXAMPLE = """\
  # dataset.toml
  images = "images"          # folder of images, relative to this file
  masks = "masks"            # folder of masks, same names as the images
  image_suffix = ".jpg"      # <id>.jpg pairs with <id>.png (any letter case)
  mask_suffix = ".png"
  mask_format = "color"      # or "index": each pixel's value is a class number
  # ignore = [255, 255, 255] # optional: a mask value left out of training and scoring
  [class_map]                # class name = its mask colour (or its number, for index masks)
  soil = [0, 0, 0]
  crop = [0, 255, 0]
  weed = [255, 0, 0]"""


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

    def describe_classes(self) -> str:
        return "soil = below 10000, crop = 10000, weed = above 10000 (16-bit label maps)"

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
        return decode_values(read_label_map(path), "index", [0, 1, 2], None, self.describe_classes(), path)


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
