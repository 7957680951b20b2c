"""Files shipped inside the weedseg package (found with importlib.resources, so they work in a
checkout, an editable install and a wheel alike): default models, the upload page, committed splits."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_path(*parts: str) -> Path:
    """The file-system path of a file or folder shipped in the weedseg package."""
    resource = files("weedseg")
    for part in parts:
        resource = resource / part
    return Path(str(resource))


WEIGHTS_DIR = package_path("weights")
APP_SCRIPT = package_path("app", "weedseg_app.py")
SPLIT_FILES_DIR = package_path("data", "split_files")
