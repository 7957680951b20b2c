"""Inference speed on real peanut images, all engines side by side in one run.

    .venv/bin/python benchmarks/inference.py --checkpoint runs/peanut-cpu/best.pt

Exports the checkpoint to ONNX FP32 and INT8 (scoring both on the val split), then measures
images/s of torch eager, ONNX Runtime FP32 and ONNX Runtime INT8 at 960x720 and 512x512
(batch 1, median of --runs passes over --images real images), and the `weedseg predict` folder
pipeline (decode, resize, infer, upsample, write mask/overlay/grid) against the bare session
(session.run on already prepared batches) on the same images, at the model's input resolution
and at native resolution.
Prints a Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import open_dataset
from weedseg.data.io import read_rgb
from weedseg.data.transforms import resize_short_side
from weedseg.export import export_checkpoint
from weedseg.infer.pipeline import PredictOptions, predict_path
from weedseg.infer.session import Segmenter, cpu_count
from weedseg.infer.tiling import pad_to_multiple


def images_per_s(fn, inputs: list[np.ndarray], per_call: int = 1) -> float:
    """Throughput of one timed pass of `fn` over `inputs`."""
    start = time.perf_counter()
    for x in inputs:
        fn(x)
    return len(inputs) * per_call / (time.perf_counter() - start)


def interleaved(fns: dict, inputs: list[np.ndarray], runs: int, per_call: int = 1) -> dict[str, list[float]]:
    """`runs` timed passes of every function, taken in turns (one warm-up pass each first), so a
    load change on a shared machine hits all of them alike."""
    for fn in fns.values():
        for x in inputs[:2]:
            fn(x)
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            rates[name].append(images_per_s(fn, inputs, per_call))
    return rates


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return rgb[y : y + size, x : x + size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/peanut-cpu/best.pt")
    parser.add_argument("--data-root")
    parser.add_argument("--images", type=int, default=8, help="real images per timed pass (engines)")
    parser.add_argument("--pipeline-images", type=int, default=48, help="images in the folder pipeline run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4, help="pipeline and bare-session batch size")
    parser.add_argument("--threads", type=int, default=cpu_count())
    parser.add_argument("--json", default="benchmarks/inference.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = open_dataset("peanut", args.data_root)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    tmp = Path(tempfile.mkdtemp(prefix="weedseg-bench-"))
    with contextlib.redirect_stdout(io.StringIO()):
        report = export_checkpoint(args.checkpoint, tmp / "model.onnx", data, int8=True)
    fp32 = Segmenter(report["onnx"], device="cpu", threads=args.threads)
    int8 = Segmenter(report["int8"], device="cpu", threads=args.threads)

    samples = data.splits["test"]
    rgbs = [read_rgb(s.image) for s in samples[: args.images]]
    results: dict = {
        "checkpoint": args.checkpoint, "model": ckpt["model"]["name"], "threads": args.threads,
        "runs": args.runs, "images": args.images, "cpu": platform.processor() or platform.machine(),
        "cores": cpu_count(), "load_before": os.getloadavg()[0], "onnxruntime": ort.__version__,
        "torch": torch.__version__, "provider": fp32.provider,
        "miou_fp32": report["miou_fp32"], "miou_int8": report["miou_int8"], "engines": {},
    }

    def torch_eager(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    for label, crop in (("960x720", lambda im: im), ("512x512", lambda im: center_crop(im, 512))):
        inputs = [fp32.model_input(crop(im))[None] for im in rgbs]
        rates = interleaved({"torch eager": torch_eager, "ORT FP32": fp32.run, "ORT INT8": int8.run}, inputs, args.runs)
        results["engines"][label] = {k: {"runs": v, "median": statistics.median(v)} for k, v in rates.items()}

    # folder pipeline vs bare session: at the model's input resolution and at native resolution
    folder = tmp / "images"
    folder.mkdir()
    for s in samples[: args.pipeline_images]:
        (folder / s.image.name).symlink_to(s.image.resolve())
    paths = sorted(folder.iterdir())
    results["pipeline"] = {}
    for name, seg in (("ORT FP32", fp32), ("ORT INT8", int8)):
        piped = Segmenter(seg.path, device="cpu", threads=args.threads, spin=False)  # as `weedseg predict` runs it
        for short_side in (seg.info.input_short_side, 0):
            prepared = [pad_to_multiple(seg.model_input(resize_short_side(read_rgb(p), short_side)), 32) for p in paths]
            batches = [np.stack(prepared[i : i + args.batch_size]) for i in range(0, len(paths), args.batch_size)]
            options = PredictOptions(short_side=short_side, batch_size=args.batch_size, overwrite=True)

            def pipeline(_: object) -> None:
                predict_path(folder, tmp / "out", piped, options, progress=False)

            def bare_session(_: object) -> None:
                for b in batches:
                    seg.run(b)

            # one "call" = the whole folder; the first pass of each is the warm-up
            rates = interleaved({"bare session": bare_session, "pipeline": pipeline}, [None], args.runs, len(paths))
            bare, pipe = rates["bare session"], rates["pipeline"]
            results["pipeline"][f"{name}, short side {short_side or 'native'}"] = {
                "bare session": {"runs": bare, "median": statistics.median(bare)},
                "pipeline": {"runs": pipe, "median": statistics.median(pipe)}}
    results["load_after"] = os.getloadavg()[0]

    print(f"checkpoint {args.checkpoint} ({results['model']}), {results['cores']} cores, {args.threads} threads, "
          f"ORT {ort.__version__} {fp32.provider}, torch {torch.__version__}; load {results['load_before']:.2f} "
          f"before, {results['load_after']:.2f} after")
    print(f"mIoU val (short side 256): FP32 {100 * report['miou_fp32']:.2f}, INT8 {100 * report['miou_int8']:.2f}\n")
    print("| size | engine | images/s (median of %d) | vs torch eager |" % args.runs)
    print("|---|---|---|---|")
    for label, engines in results["engines"].items():
        base = engines["torch eager"]["median"]
        for name, r in engines.items():
            print(f"| {label} | {name} | {r['median']:.2f} | {r['median'] / base:.2f}x |")
    print(f"\n| model, resolution ({len(paths)} images, batch {args.batch_size}) | bare session images/s "
          "| pipeline images/s | pipeline / bare |")
    print("|---|---|---|---|")
    for name, r in results["pipeline"].items():
        b, p = r["bare session"]["median"], r["pipeline"]["median"]
        print(f"| {name} | {b:.2f} | {p:.2f} | {100 * p / b:.0f} % |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
