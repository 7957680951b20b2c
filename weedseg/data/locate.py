"""Finding a dataset on disk: --data-root, then $WEEDSEG_DATA, then field_data/ (here, then in the checkout).

Nothing else is guessed: `make demo`, `make test` and CI pass the data root in WEEDSEG_DATA."""

from __future__ import annotations

import os
from pathlib import Path

from .. import WeedsegError

REPO_ROOT = Path(__file__).resolve().parents[2]

# a file or folder whose presence says "this folder is that dataset"
MARKERS = {"peanut": "images", "nassar": "data", "folder": "dataset.toml", "sugarbeets": "CKA_*"}


def candidate_roots(name: str, data_root: str | Path | None) -> list[Path]:
    """Folders that may hold dataset `name`, in the order they are tried."""
    if data_root is not None:
        bases = [Path(data_root)]
    else:
        bases = [Path(p) for p in [os.environ.get("WEEDSEG_DATA")] if p]
        bases += [Path("field_data"), REPO_ROOT / "field_data"]
    out: list[Path] = []
    for base in bases:
        for path in (base, base / name):
            if path.resolve() not in [p.resolve() for p in out]:
                out.append(path)
    return out


def find_dataset_root(name: str, data_root: str | Path | None = None) -> Path:
    """The folder that holds dataset `name`, or a WeedsegError listing where it looked."""
    marker = MARKERS.get(name)
    if marker is None:
        raise WeedsegError(f"unknown dataset {name!r}; choose one of: {', '.join(MARKERS)}")
    tried = candidate_roots(name, data_root)
    for path in tried:
        if path.is_dir() and any(path.glob(marker)):
            return path.resolve()
    if name == "folder" and data_root is not None and Path(data_root).is_dir():
        return Path(data_root).resolve()  # its layout explains the dataset.toml it needs
    looked = "\n".join(f"  {p}" for p in tried)
    hint = "--data-root PATH" if data_root is None else "a different --data-root"
    raise WeedsegError(
        f"{name} dataset not found (looked for '{marker}' in):\n{looked}\n"
        f"Pass {hint}, or set WEEDSEG_DATA to the folder that holds '{name}/'. "
        f"See field_data/README.md for each dataset's layout and where to get it."
    )
