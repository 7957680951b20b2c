"""Reading images and label maps from disk, with errors that name the file.

Memory is bounded by design: an image's size is read from its header and checked against a pixel
budget before any pixel is decoded, and images without colour (grey, 1-bit, float) are refused
rather than segmented into meaningless results.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import simplejpeg
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
    'path: reason' line per thing below it that was skipped for a reason the user must hear of: a folder that
    cannot be listed, a link to nothing or in a loop, a second link to a folder already read.

    Links to files and folders are followed, each folder read once. Hidden files, anything under `exclude`
    and folders holding weedseg outputs (RUN_MANIFEST) are skipped; a missing path, an output folder given
    as input or a folder without images is a WeedsegError.
    """
    path = Path(path)
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise WeedsegError(f"input not found: {path}")
    if (path / RUN_MANIFEST).is_file():
        raise WeedsegError(f"{path} holds the outputs of `weedseg predict` ({RUN_MANIFEST}); give the folder of the photos")
    skip = _folder_key(Path(exclude)) if exclude else None
    found: list[Path] = []
    skipped: list[str] = []
    read: dict[tuple[int, int], Path] = {}  # (device, inode) of each folder read -> where it was read

    top = path.stat()
    read[(top.st_dev, top.st_ino)] = path
    todo = [(path, ((top.st_dev, top.st_ino),))]  # (folder, the folders it is inside), depth first in name order
    while todo:
        folder, inside = todo.pop()
        try:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries)
        except OSError as exc:
            skipped.append(f"{folder}: cannot list this folder ({exc.strerror or exc}); its images were skipped")
            continue
        subfolders = []
        for name in names:
            child = folder / name
            try:
                st = child.stat()  # follows links
            except OSError as exc:
                skipped.append(f"{child}: {_broken_link(child, exc)}; skipped")
                continue
            if stat.S_ISREG(st.st_mode):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    found.append(child)
                continue
            if not stat.S_ISDIR(st.st_mode) or os.path.isfile(child / RUN_MANIFEST):  # an earlier --out: skipped
                continue
            key = (st.st_dev, st.st_ino)
            if key == skip:
                continue
            if key in inside:
                skipped.append(f"{child}: links to {child.resolve()}, a folder it is inside (a loop); skipped")
            elif key in read:
                skipped.append(f"{child}: the same folder as {read[key]}, whose images are read there; skipped")
            else:
                read[key] = child
                subfolders.append((child, (*inside, key)))
        todo += reversed(subfolders)
    if not found:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise WeedsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}{detail}")
    return sorted(found), skipped


def _folder_key(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, which a walk compares cheaply with each folder it meets; None if it is absent."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _broken_link(path: Path, exc: OSError) -> str:
    """Why `path` (that could not be followed) was skipped."""
    if not path.is_symlink():
        return f"cannot be read ({exc.strerror or exc})"
    if exc.errno == errno.ELOOP:
        return f"a link in a loop ({os.readlink(path)})"
    return f"a link to {os.readlink(path)}, which {'does not exist' if exc.errno == errno.ENOENT else 'cannot be read'}"


def printable(text: str) -> str:
    """`text` with the bytes of file names that are not valid UTF-8 (which os.fsdecode keeps as surrogates, so
    that such files can be opened) written as \\xNN escapes: text that can be written as UTF-8 (summary.csv)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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

    Copied out band by band, so at most DECODE_PIXEL_BYTES a pixel are held at once. A JPEG whose data ends
    before its pixels do is refused (see `check_jpeg_data`)."""
    check_jpeg_data(im)
    ImageOps.exif_transpose(im, in_place=True)
    width, height = im.size
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = im.crop((0, top, width, min(height, top + rows)))
        out[top:top + rows] = np.asarray(band if band.mode == "RGB" else band.convert("RGB"))
    out.flags.writeable = False  # as np.asarray(image) would be: cached decodes must not be changed in place
    return out


def check_jpeg_data(im: Image.Image) -> None:
    """ValueError when a JPEG opened with `open_checked` (not yet decoded) ends before its last pixel row.

    Pillow (like OpenCV) fills the rows such a file lacks with grey and reports nothing: a header that says
    7000 x 7000 over 960 x 720 pixels of data gave a mask of 6,887 grey rows. The data is entropy-decoded once
    at an eighth of the size (about 1 ms for 960 x 720) by libjpeg-turbo, whose warnings simplejpeg turns into
    errors; only a premature end refuses the image (other warnings, such as extra bytes before a marker, are
    common in camera files and harmless).
    """
    if im.format != "JPEG" or im.fp is None:
        return
    start = im.fp.tell()
    im.fp.seek(0)
    data = im.fp.read()
    im.fp.seek(start)
    try:
        simplejpeg.decode_jpeg(data, min_height=1, min_width=1, min_factor=8, strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise ValueError(f"its data ends before its {im.width} x {im.height} pixels do: truncated or with a "
                             f"wrong size in its header ({exc})") from exc


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label file unchanged: HxW (grey/16-bit) or HxWx3 (colour, returned as RGB).

    The file is read by Python and decoded from memory (OpenCV given a path that is not valid UTF-8 crashed
    the process), after its size is checked from the header where Pillow can read one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeedsegError(f"cannot read label file {path} ({exc.strerror or exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                check_pixels(*im.size, MAX_IMAGE_PIXELS, f"label file {path}")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass  # not a header Pillow reads: OpenCV decides below
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise WeedsegError(f"cannot read label file {path} (corrupt, truncated or not an image)")
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
