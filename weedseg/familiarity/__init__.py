"""Does a photo look like the photos a model learned from? (numpy only: runs with the inference install)

A model carries `FamiliarityStats`: the mean and shrunk precision matrix of its own encoder features
(each of its four encoder stages averaged over the image, concatenated) over its training photos at its
input resolution, and a distance threshold chosen on its validation photos. A photo's Mahalanobis distance
to that mean becomes its familiarity, 1 / (1 + (distance / threshold)²): 1 for a photo at the centre of the
training photos, 0.5 at the threshold, towards 0 far from them. Below 0.5 a photo is flagged unfamiliar:
the model has not seen fields like it, and its crop and weed may be swapped or missed. Fitting needs torch
(weedseg.familiarity.fit); scoring needs only the pooled features an exported model outputs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np

from .. import WeedsegError

FORMAT = "weedseg.familiarity/1"
PROPS_KEY = "weedseg.familiarity"  # ONNX metadata_props key and checkpoint key
FEATURES_OUTPUT = "features"  # the exported model's second output: (N, D) pooled encoder features
FLAG_BELOW = 0.5  # familiarity under this (distance over the threshold) flags a photo
OWN_FIELD_DOC = "docs/own-field.md"
THRESHOLD_Z = 2.326  # the threshold is the 99th percentile of a log-normal fitted to the val distances


@dataclass(frozen=True, eq=False)
class FamiliarityStats:
    """What a model's training photos looked like, in its own encoder features, and where unfamiliar begins."""

    field: str  # what the photos show, for messages: "peanut" -> "the peanut fields this model learned from"
    short_side: int  # the model resolution the features were computed at (0: native)
    mean: np.ndarray  # (D,) float32
    precision: np.ndarray  # (D, D) float32: inverse of the shrunk covariance
    threshold: float  # distance above which a photo is flagged
    fitted_on: dict = field(default_factory=dict)  # photos, shrinkage, threshold rule, val distances summary

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of pooled features (N, D)."""
        features = np.asarray(features, np.float64).reshape(-1, self.dim)
        centred = features - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision.astype(np.float64), centred), 0))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Familiarity (N,) in (0, 1] of pooled features (N, D): higher is more like the training photos."""
        return familiarity_of(self.distances(features), self.threshold)

    def to_json(self) -> str:
        """The stats as one JSON string (arrays as base64 little-endian float32), for checkpoints and ONNX metadata."""
        return json.dumps({"format": FORMAT, "field": self.field, "short_side": self.short_side,
                           "dim": self.dim, "mean": _b64(self.mean), "precision": _b64(self.precision),
                           "threshold": self.threshold, "fitted_on": self.fitted_on})

    @classmethod
    def from_json(cls, text: str, source: str) -> FamiliarityStats:
        """Parse `to_json` output; WeedsegError naming `source` if it is malformed."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            dim = int(raw["dim"])
            stats = cls(field=str(raw["field"]), short_side=int(raw["short_side"]),
                        mean=_unb64(raw["mean"], (dim,)), precision=_unb64(raw["precision"], (dim, dim)),
                        threshold=float(raw["threshold"]), fitted_on=dict(raw.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WeedsegError(f"{source}: its familiarity statistics are malformed ({type(exc).__name__}: {exc}); "
                               "fit them again with `weedseg familiarity fit`") from exc
        if not (stats.threshold > 0 and np.isfinite(stats.mean).all() and np.isfinite(stats.precision).all()):
            raise WeedsegError(f"{source}: its familiarity statistics hold a non-positive threshold or non-finite "
                               "values; fit them again with `weedseg familiarity fit`")
        return stats

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FamiliarityStats) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


def familiarity_of(distances: np.ndarray, threshold: float) -> np.ndarray:
    """1 / (1 + (distance / threshold)²): 1 at the training photos' centre, FLAG_BELOW at the threshold."""
    return 1.0 / (1.0 + (np.asarray(distances, np.float64) / threshold) ** 2)


@dataclass(frozen=True)
class Verdict:
    """One photo's familiarity and whether it is flagged."""

    familiarity: float
    unfamiliar: bool

    def row(self) -> dict[str, str]:
        """The summary.csv fields."""
        return {"familiarity": f"{self.familiarity:.3f}", "unfamiliar": str(self.unfamiliar).lower()}


def judge(stats: FamiliarityStats, features: np.ndarray) -> list[Verdict]:
    """A verdict per row of pooled features (N, D)."""
    return [Verdict(float(s), bool(s < FLAG_BELOW)) for s in stats.scores(features)]


def flagged_message(flagged: int, scored: int, field_name: str) -> str:
    """The run log's plain-words line about the flagged photos."""
    if not flagged:
        return f"all {scored} photos look like the {field_name} fields this model learned from"
    photos = "photo" if scored == 1 else "photos"
    verb = "looks" if flagged == 1 else "look"
    return (f"{flagged} of {scored} {photos} {verb} unlike the {field_name} fields this model learned from: crop and "
            f"weed may be swapped or missed; train it on a few of your own photos: see {OWN_FIELD_DOC} (column "
            "'unfamiliar' in summary.csv)")


COLUMNS = ("familiarity", "unfamiliar")  # summary.csv


def verdict_rows(stats: FamiliarityStats | None, features: list[np.ndarray], count: int, pool: bool = False
                 ) -> list[dict[str, str]]:
    """The summary fields of `count` images from the feature arrays one model call or several appended (see
    Segmenter.run); `pool`: all of them are tiles of one image, averaged. Empty fields where nothing is known."""
    if stats is None or not features:
        return [{} for _ in range(count)]
    pooled = np.concatenate(features)
    if pool:
        pooled = pooled.mean(axis=0, keepdims=True)
    return [v.row() for v in judge(stats, pooled)]


def count_flagged(rows: list[dict]) -> tuple[int, int]:
    """(flagged, scored): the summary rows of a run flagged unfamiliar, and those with a familiarity at all."""
    verdicts = [r.get("unfamiliar") for r in rows if r.get("unfamiliar") in ("true", "false")]
    return verdicts.count("true"), len(verdicts)


UNKNOWN_MESSAGE = ("this model carries no familiarity statistics, so whether the photos look like its training "
                   "photos is unknown (add them with `weedseg familiarity fit CHECKPOINT`, then export again)")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def _unb64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), "<f4").reshape(shape).astype(np.float32)

