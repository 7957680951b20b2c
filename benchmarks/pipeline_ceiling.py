"""The most the `weedseg predict` pipeline can reach on this machine, relative to the bare session.

    .venv/bin/python benchmarks/pipeline_ceiling.py

Times, on real peanut test images and the shipped FP32 model: decoding one image as predict does
(`read_rgb`, one thread), and the bare session (`Segmenter.run`, all cores, no spin-wait as in
predict) on batches of 4 prepared at the model's input resolution. With C cores busy in inference,
work W per image overlaps it only by taking cores, so the pipeline reaches at most
C x session / (C x session + W) of the bare session; the ceiling printed takes W = decoding alone,
before any of predict's outputs. Medians of --runs passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from weedseg.data import open_dataset
from weedseg.data.io import read_rgb
from weedseg.data.transforms import resize_short_side
from weedseg.infer.session import Segmenter, cpu_count, resolve_model_path
from weedseg.infer.tiling import pad_to_multiple


def per_image_ms(fn, count: int, runs: int) -> list[float]:
    """Milliseconds per image of `fn()` (which handles `count` images), one value per pass, after a warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / count * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ONNX model (default: the shipped one)")
    parser.add_argument("--images", type=int, default=24, help="peanut test images per pass")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    paths = [s.image for s in open_dataset("peanut").splits["test"][: args.images]]
    seg = Segmenter(resolve_model_path(args.model), "cpu", spin=False, engine="onnxruntime")
    short = seg.info.input_short_side
    inputs = [seg.model_input(resize_short_side(read_rgb(p), short)) for p in paths]
    batches = [np.stack([pad_to_multiple(x, seg.info.size_multiple) for x in inputs[i : i + 4]])
               for i in range(0, len(inputs), 4)]

    decode = per_image_ms(lambda: [read_rgb(p) for p in paths], len(paths), args.runs)
    session = per_image_ms(lambda: [seg.run(b) for b in batches], len(paths), args.runs)
    d, s, cores = statistics.median(decode), statistics.median(session), cpu_count()
    print(f"{len(paths)} peanut test images, {args.runs} passes, {cores} cores, model {seg.path.name} "
          f"at short side {short} (batches {batches[0].shape})")
    print(f"decode (read_rgb, 1 thread): median {d:.2f} ms/image  {[round(t, 2) for t in decode]}")
    print(f"bare session ({cores} threads, batch 4): median {s:.2f} ms/image  {[round(t, 2) for t in session]}")
    print(f"pipeline ceiling with decoding as the only other work: "
          f"{cores} x {s:.2f} / ({cores} x {s:.2f} + {d:.2f}) = {100 * cores * s / (cores * s + d):.0f} %")


if __name__ == "__main__":
    main()
