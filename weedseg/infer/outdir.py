"""The output folder of `weedseg predict`: claimed by one run at a time, checked writable before any
inference, cleared of temporary files a killed run left, recording the model and options that made
its outputs (RUN_MANIFEST), so a run with other ones never mixes its outputs with theirs, and the summary
row of every image finished (JOURNAL), so a rerun reuses them and predicts only the rest."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from .. import WeedsegError
from ..data.io import RUN_MANIFEST, file_sha256
from .atomic import atomic_write
from .vector import PRESCRIPTION_DRIVERS, SHAPEFILE_PARTS

FORMAT = "weedseg.predict-run/1"
LOCK = ".weedseg-predict.lock"
JOURNAL = ".weedseg-journal.jsonl"  # one JSON line per image finished, appended as it finishes
MIN_FREE_BYTES = 100_000_000
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}  # no image can be written
RUN_TABLES = ("summary.csv", "spray_summary.json", "spray_map.geojson")  # in --out itself
RUN_FILES = (*RUN_TABLES, RUN_MANIFEST, JOURNAL, LOCK)
PRELABELS = ("prelabels/coco.json", "prelabels/labelstudio.json")  # weedseg.labels.prelabels, `--outputs prelabels`
IMAGE_OUTPUTS = (".mask.png", ".mask.tif", ".overlay.jpg", ".overlay.png", ".grid.csv", ".spray.geojson", ".field.json",
                 *(".spray" + suffix for suffix in SHAPEFILE_PARTS + tuple(PRESCRIPTION_DRIVERS)))  # and GeoTIFFs' maps

log = logging.getLogger(__name__)


def run_record(model: Path, classes: list[str], input_root: Path, options: dict) -> dict:
    """What RUN_MANIFEST says made the outputs: the model file's hash and classes, the folder whose photos the
    outputs' names are relative to, and the options that change the outputs."""
    return {"format": FORMAT, "model": {"file": model.name, "sha256": file_sha256(model), "classes": list(classes)},
            "input": str(input_root.resolve()), "options": options}


def differences(old: dict, new: dict) -> list[str]:
    """'what: before -> now' for each difference between two run records (the model file's name aside)."""
    diffs = []
    if old.get("model", {}).get("sha256") != new["model"]["sha256"]:
        diffs.append(f"model {old.get('model', {}).get('file')} (sha256 {str(old.get('model', {}).get('sha256'))[:12]}) "
                     f"-> {new['model']['file']} (sha256 {new['model']['sha256'][:12]})")
    if "input" in old and old["input"] != new["input"]:  # same names from another folder would pass as done
        diffs.append(f"photos from {old['input']} -> {new['input']}")
    before, now = old.get("options", {}), new["options"]
    diffs += [f"{key}: {before.get(key)} -> {now.get(key)}" for key in sorted(set(before) | set(now))
              if before.get(key) != now.get(key)]
    return diffs


def check_record(out: Path, record: dict) -> bool:
    """True when RUN_MANIFEST in `out` holds `record`, False when `out` holds no outputs yet; WeedsegError when
    another model or other options made its outputs (or an older weedseg, without a manifest)."""
    manifest = out / RUN_MANIFEST
    if not manifest.is_file():
        if (out / "summary.csv").is_file():
            raise WeedsegError(f"{out} holds outputs without a {RUN_MANIFEST} (an older weedseg made them), so it is "
                               "unknown which model made them; choose another --out, or pass --overwrite to redo "
                               "every image")
        return False
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise WeedsegError(f"{manifest} is unreadable ({exc}); pass --overwrite to redo every image") from exc
    diffs = differences(old, record)
    if diffs:
        raise WeedsegError(f"{out} holds outputs made with other settings ({'; '.join(diffs)}); choose another --out, "
                           "or pass --overwrite to redo every image with these settings")
    return True


def named_as_run_files(images: list[Path], root: Path) -> tuple[list[Path], list[str]]:
    """The images whose outputs can mirror the input tree below `root` in --out, and one 'folder: reason' line per
    top folder named as a file of the run in --out (a folder summary.csv/ would need OUT/summary.csv to be a
    folder): its images are left out, with that line as their row, rather than stop the run without a summary."""
    reserved = {name.casefold() for name in RUN_FILES}
    kept, refused = [], Counter()
    for image in images:
        parts = image.relative_to(root).parts
        if len(parts) > 1 and parts[0].casefold() in reserved:
            refused[parts[0]] += 1
        else:
            kept.append(image)
    return kept, [f"{root / name}: a folder named as {name}, a file every run writes into --out, so its {n} image(s) "
                  "cannot be mirrored there; rename the folder" for name, n in refused.items()]


def remove_earlier_outputs(out: Path, keep: Path) -> int:
    """For --overwrite: remove the outputs of earlier runs from `out` (files named as predict names them:
    IMAGE_OUTPUTS anywhere below it, RUN_TABLES and PRELABELS in it), except below `keep` (the input folder, where
    it is inside `out`) and below folders holding their own RUN_MANIFEST; returns how many were removed. Without
    this, the new outputs stood beside stale ones of another input folder that summary.csv no longer listed."""
    run_level = {out / name for name in (*RUN_TABLES, *PRELABELS)}
    kept = keep.stat() if keep.is_dir() else None
    removed, todo, folders = 0, [out], []
    while todo:  # no recursion (os.walk's): output trees can be deeper than Python's recursion limit
        folder = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if not (path / RUN_MANIFEST).is_file() and not (kept and os.path.samestat(st, kept)):
                        todo.append(path)
                        folders.append(path)
                elif entry.name.casefold().endswith(IMAGE_OUTPUTS) or path in run_level:
                    path.unlink(missing_ok=True)
                    removed += 1
    for folder in reversed(folders):  # the folders this emptied, deepest first
        with contextlib.suppress(OSError):  # not empty: it holds files that are not outputs
            folder.rmdir()
    return removed


def write_probe(out: Path, name: str, data: bytes) -> None:
    """Write a file into `out`, turning a failure into a WeedsegError that says to pick a writable folder."""
    try:
        atomic_write(out / name, data)
    except OSError as exc:
        raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder "
                           "with free space") from exc


def photo_stamp(photo: Path) -> dict:
    """What identifies a photo's version in the journal: its size and modification time."""
    stat = photo.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_journal(path: Path) -> tuple[dict[str, dict], bool]:
    """The journal's entries by image name (a later entry wins) and whether it is whole: a run killed while
    appending leaves a partial last line, which is dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, True
    entries = {}
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            entries[entry["image"]] = entry
        except (ValueError, KeyError, TypeError):
            continue  # the line being written when the run was killed
    return entries, data.endswith(b"\n") or not data


class RunJournal:
    """The summary rows of the images finished in an output folder, each with the photo's size and mtime_ns
    when it was predicted and the settings its row was made with. Lines are appended and flushed as images
    finish, so a killed run loses at most the images in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries, whole = read_journal(path)
        if not whole:  # rewritten whole before anything is appended to it
            atomic_write(path, b"".join(self.line(e) for e in self.entries.values()))
        self._file = open(path, "ab")
        self._lock = threading.Lock()

    @staticmethod
    def line(entry: dict) -> bytes:
        return json.dumps(entry, ensure_ascii=True, default=lambda v: v.item()).encode() + b"\n"  # numpy scalars

    def finished(self, name: str, photo: Path, mask: Path) -> dict | None:
        """The entry of image `name` (its path below the input folder of RUN_MANIFEST) when it is done: recorded
        for this version of the photo (its size and mtime_ns) and its mask still present; else None."""
        entry = self.entries.get(name)
        if entry is None or not mask.is_file():
            return None
        try:
            stamp = photo_stamp(photo)
        except OSError:
            return None
        return entry if all(entry.get(k) == v for k, v in stamp.items()) else None

    def add(self, name: str, photo: Path, row: dict, settings: dict) -> None:
        """Record image `name` finished (after its outputs are written) with its summary row."""
        try:
            entry = {"image": name, **photo_stamp(photo), "settings": settings, "row": row}
        except OSError:  # the photo is gone since it was read: nothing to resume from
            return
        with self._lock:
            self.entries[name] = entry
            self._file.write(self.line(entry))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


@contextmanager
def claim_output_folder(out: Path, record: dict, overwrite: bool) -> Iterator[RunJournal]:
    """Hold `out` for one predict run: lock it, check that it is writable and has room, remove `.part` files of
    killed runs, check RUN_MANIFEST against `record` (written anew for a new folder or with `overwrite`, which
    empties the journal too).

    Yields the folder's RunJournal: the images it lists as finished are done, the others must be predicted.
    Every problem is a WeedsegError, raised before any inference.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder") from exc
    lock = filelock.FileLock(out / LOCK, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise WeedsegError(f"another `weedseg predict` is writing into {out}; wait for it to finish or "
                           "choose another --out") from None
    except OSError as exc:
        raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder") from exc
    try:
        free = shutil.disk_usage(out).free
        if free < MIN_FREE_BYTES:
            raise WeedsegError(f"only {free / 1e6:.0f} MB free where --out {out} is (at least "
                               f"{MIN_FREE_BYTES / 1e6:.0f} MB needed); free space or choose another folder")
        for part in out.rglob(".*.part"):  # left by a killed run: this run holds the lock, so none is being written
            part.unlink(missing_ok=True)
        if overwrite and ((out / RUN_MANIFEST).is_file() or (out / "summary.csv").is_file()):
            removed = remove_earlier_outputs(out, Path(record["input"]))
            if removed:
                log.info("--overwrite: removed %d outputs of the earlier run from %s", removed, out)
        if overwrite or not check_record(out, record):
            write_probe(out, JOURNAL, b"")  # emptied before the manifest says the settings changed
            write_probe(out, RUN_MANIFEST, json.dumps(record, indent=2).encode())
        try:
            journal = RunJournal(out / JOURNAL)
        except OSError as exc:
            raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder "
                               "with free space") from exc
        try:
            yield journal
        finally:
            journal.close()
    finally:
        lock.release()
