"""Inference with exported ONNX models: the engines and the session, tiled prediction, the threaded
folder pipeline behind `weedseg predict`, and the files it writes. Needs no torch.

The Python API (README, "From Python"): `Segmenter`, `segment_rgb`, `read_rgb`, `DEFAULT_MODEL`."""

from ..data.io import read_rgb
from .image import segment_rgb
from .session import DEFAULT_MODEL, Segmenter

__all__ = ["DEFAULT_MODEL", "Segmenter", "read_rgb", "segment_rgb"]
