"""Files written so that an interrupted run never leaves a half-written file under a final name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NAME_MAX = 255  # bytes in a file name on Linux, macOS and Windows file systems


def part_path(path: Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place: .NAME.PID.part, hidden and ending
    in .part (never in .onnx or an image suffix, so no list of models or photos takes it up). Where that would be
    longer than a file name may be, although NAME fits (a 240-character photo's outputs), a hash of NAME stands
    for it."""
    name = f".{path.name}.{os.getpid()}.part"
    if len(os.fsencode(name)) > NAME_MAX:
        name = f".{hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]}.{os.getpid()}.part"
    return path.with_name(name)


def make_folders(folder: Path) -> None:
    """`folder` and the folders above it that are missing, made from the top down (Path.mkdir(parents=True) recurses
    once per level, so a photo 1500 folders deep failed with a RecursionError)."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder (`part_path`) and os.replace."""
    make_folders(path.parent)
    tmp = part_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
