"""Files shipped with weedseg: default models, the upload page, committed splits.

A checkout keeps the models in `models/` and the page in `app/` at its top level; the wheel carries
them inside the package as `weedseg/weights/` and `weedseg/app/` (the `package-dir` mapping in
pyproject.toml). The paths below are found either way: a wheel, an editable install or a checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = Path(str(files("weedseg")))


def package_path(*parts: str) -> Path:
    """The file-system path of a file or folder inside the weedseg package folder."""
    return PACKAGE_DIR.joinpath(*parts)


def shipped_dir(in_wheel: str, in_checkout: str) -> Path:
    """A folder the wheel carries as weedseg/<in_wheel>/ and a checkout keeps as <in_checkout>/ at its top."""
    installed = package_path(in_wheel)
    return installed if installed.is_dir() else PACKAGE_DIR.parent / in_checkout


WEIGHTS_DIR = shipped_dir("weights", "models")
APP_SCRIPT = shipped_dir("app", "app") / "weedseg_app.py"
SPLIT_FILES_DIR = package_path("data", "split_files")
