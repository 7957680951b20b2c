"""Reading images and label maps from disk, with errors that name the file.

Memory is bounded by design: an image's size is read from its header and checked against a pixel
budget before any pixel is decoded, and images without colour (grey, 1-bit, float) are refused
rather than segmented into meaningless results.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps

from .. import WeedsegError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused from their header, before decoding
# rgb_pixels holds at most about 8 bytes a pixel: Pillow's decoded pixels (4 in every colour mode) and, while an
# EXIF rotation replaces them, the rotated copy (4); then the pixels and the array it returns (3), converted to
# RGB band by band; 9 leaves room for the decoders' own buffers
DECODE_PIXEL_BYTES = 9
BAND_PIXELS = 1_000_000  # rgb_pixels copies into its array this many pixels at a time
RUN_MANIFEST = "weedseg-run.json"  # `weedseg predict` writes it into --out; such folders are never read as input


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_images(path: str | Path, exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """`path` itself if it is a file, else every image below the folder (recursively, sorted), and one
    'folder: reason' line per sub-folder that could not be listed.

    Hidden files, anything under `exclude` and folders holding weedseg outputs (RUN_MANIFEST) are
    skipped; a missing path, an output folder given as input or a folder without images is a WeedsegError.
    """
    path = Path(path)
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise WeedsegError(f"input not found: {path}")
    if (path / RUN_MANIFEST).is_file():
        raise WeedsegError(f"{path} holds the outputs of `weedseg predict` ({RUN_MANIFEST}); give the folder of the photos")
    skip = Path(exclude).resolve() if exclude else None
    found: list[Path] = []
    unreadable: list[str] = []

    def note(exc: OSError) -> None:
        unreadable.append(f"{exc.filename}: cannot list this folder ({exc.strerror or exc}); its images were skipped")

    for folder, dirs, names in os.walk(path, onerror=note):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here / d / RUN_MANIFEST).is_file()
                   and not (skip and (here / d).resolve() == skip)]
        found += [here / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith(".")
                  and (here / n).is_file()]
    if not found:
        detail = f" ({'; '.join(unreadable)})" if unreadable else ""
        raise WeedsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}{detail}")
    return sorted(found), unreadable


def find_images(path: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """The images of `scan_images`; folders that could not be listed are logged as warnings."""
    found, unreadable = scan_images(path, exclude)
    for line in unreadable:
        log.warning("%s", line)
    return found


def check_pixels(width: int, height: int, max_pixels: int, name: str = "the image") -> None:
    """WeedsegError when width x height exceeds `max_pixels` (checked from headers, before decoding)."""
    if width * height > max_pixels:
        raise WeedsegError(f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels, over the limit "
                           f"of {max_pixels / 1e6:g} megapixels per image; split it into smaller images")


def has_colour(im: Image.Image) -> bool:
    """True for colour modes (RGB, RGBA, CMYK, YCbCr, LAB, HSV, palette); False for grey, 1-bit, LA, 16-bit grey, float."""
    bands = [b for b in im.getbands() if b != "A"]
    return len(bands) >= 3 or bands == ["P"]


@contextmanager
def open_checked(source: str | Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS,
                 name: str | None = None) -> Iterator[Image.Image]:
    """The image opened lazily (header only) after its size and colour are checked; every problem reading it,
    also inside the `with` block, becomes a WeedsegError naming it (`name`, default: the path; "" for none).

    Images without colour are refused: a colour model finds no crop or weed in them, so their results
    would be wrong.
    """
    if name is None:
        name = str(source) if isinstance(source, (str, Path)) else ""
    prefix = f"{name}: " if name else ""
    try:
        with warnings.catch_warnings():  # PIL warns of images over ~89 Mpx; the check below refuses them anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
        with im:
            check_pixels(*im.size, max_pixels, name or "the image")
            if not has_colour(im):
                raise WeedsegError(f"{prefix}no colour (image mode {im.mode}: grey, 1-bit or floating point); weedseg "
                                   "models segment colour photos, so give the RGB original")
            yield im
    except Image.UnidentifiedImageError as exc:
        tiff = " (TIFFs with floating-point or more than 4 bands are not read: save it as 8- or 16-bit RGB)"
        raise WeedsegError(f"{prefix}not an image weedseg can read (JPG, PNG, TIFF, BMP or WebP expected)"
                           f"{tiff if name.lower().endswith(('.tif', '.tiff')) else ''}") from exc
    except Image.DecompressionBombError as exc:
        raise WeedsegError(f"{prefix}far larger than the limit of {max_pixels / 1e6:g} megapixels per image ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: PIL's broken-file error
        raise WeedsegError(f"{prefix}damaged or unreadable image ({exc})") from exc


def image_size(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone, checked as `open_checked` does (EXIF rotation not applied)."""
    with open_checked(path, max_pixels) as im:
        return im.size


def read_rgb(source: str | Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB, EXIF orientation applied; palette, RGBA, CMYK and 16-bit RGB converted.

    Size and colour are checked from the header before decoding (see `open_checked`).
    """
    with open_checked(source, max_pixels, name) as im:
        return rgb_pixels(im)


def rgb_pixels(im: Image.Image) -> np.ndarray:
    """The pixels of an image opened with `open_checked` (call it inside the `with`, whose checks and messages
    apply) as a read-only HxWx3 uint8 RGB array, EXIF orientation applied (to `im` itself).

    Copied out band by band, so at most DECODE_PIXEL_BYTES a pixel are held at once."""
    ImageOps.exif_transpose(im, in_place=True)
    width, height = im.size
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = im.crop((0, top, width, min(height, top + rows)))
        out[top:top + rows] = np.asarray(band if band.mode == "RGB" else band.convert("RGB"))
    out.flags.writeable = False  # as np.asarray(image) would be: cached decodes must not be changed in place
    return out


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label file unchanged: HxW (grey/16-bit) or HxWx3 (colour, returned as RGB)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise WeedsegError(f"cannot read label file {path} (missing, corrupt or not an image)")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)
    return arr


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    """Raise a WeedsegError naming both files when image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise WeedsegError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; every mask must have its image's size"
        )
