"""The output folder of `weedseg predict`: claimed by one run at a time, checked writable before any
inference, cleared of temporary files a killed run left, and recording the model and options that made
its outputs (RUN_MANIFEST), so a run with other ones never mixes its outputs with theirs."""

from __future__ import annotations

import errno
import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import WeedsegError
from ..data.io import RUN_MANIFEST, file_sha256
from .outputs import atomic_write

FORMAT = "weedseg.predict-run/1"
LOCK = ".weedseg-predict.lock"
PROBE = ".weedseg-write-test"
MIN_FREE_BYTES = 100_000_000
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}  # no image can be written


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


def write_probe(out: Path, name: str, data: bytes) -> None:
    """Write a file into `out`, turning a failure into a WeedsegError that says to pick a writable folder."""
    try:
        atomic_write(out / name, data)
    except OSError as exc:
        raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder "
                           "with free space") from exc


@contextmanager
def claim_output_folder(out: Path, record: dict, overwrite: bool) -> Iterator[int]:
    """Hold `out` for one predict run: lock it, check that it is writable and has room, remove `.part` files of
    killed runs, check RUN_MANIFEST against `record` (written anew for a new folder or with `overwrite`).

    Yields the manifest's modification time in ns: outputs older than it were made before the current
    settings were set (by an interrupted --overwrite run) and must be redone. Every problem is a
    WeedsegError, raised before any inference.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK, "a")
    except OSError as exc:
        raise WeedsegError(f"cannot write into --out {out} ({exc.strerror or exc}); choose a writable folder") from exc
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WeedsegError(f"another `weedseg predict` is writing into {out}; wait for it to finish or "
                               "choose another --out") from None
        free = shutil.disk_usage(out).free
        if free < MIN_FREE_BYTES:
            raise WeedsegError(f"only {free / 1e6:.0f} MB free where --out {out} is (at least "
                               f"{MIN_FREE_BYTES / 1e6:.0f} MB needed); free space or choose another folder")
        for part in out.rglob(".*.part"):  # left by a killed run: this run holds the lock, so none is being written
            part.unlink(missing_ok=True)
        if overwrite or not check_record(out, record):
            write_probe(out, RUN_MANIFEST, json.dumps(record, indent=2).encode())
        else:
            write_probe(out, PROBE, b"")
            (out / PROBE).unlink()
        yield (out / RUN_MANIFEST).stat().st_mtime_ns
    finally:
        lock.close()  # releases the lock
