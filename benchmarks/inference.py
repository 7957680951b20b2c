"""Inference speed on real peanut images, all engines side by side in one run.

    .venv/bin/python benchmarks/inference.py --checkpoint runs/peanut-cpu/best.pt

Exports the checkpoint to ONNX FP32 and INT8 (scoring both on the val split), then measures
images/s of torch eager, ONNX Runtime FP32 and INT8 and, when installed, OpenVINO FP32, FP32 with a
bf16 inference precision hint (on CPUs with native bf16) and INT8, at 960x720 and 512x512 (batch 1,
median of --runs passes over --images real images, taken in turns), with each engine's mask
agreement with ONNX Runtime FP32 and the engine `--engine auto` picks. Then the `weedseg predict`
folder pipeline (decode, resize, infer, upsample, write mask/overlay/grid) against its two halves
measured alone on the same images: the bare engine (on already prepared batches) and the output work
(the pipeline with the engine replaced by recorded logits), at the model's input resolution and at
native resolution.
Prints Markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from unittest import mock

import numpy as np
import onnxruntime as ort
import torch

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import open_dataset
from weedseg.data.io import read_rgb
from weedseg.data.transforms import resize_short_side
from weedseg.export import export_checkpoint
from weedseg.infer import engines
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


class Replay:
    """Stands in for an engine: the logits it recorded for each input shape, so that a pipeline run
    measures the output work alone (decode, resize, upsample, overlay, encodes, writes)."""

    def __init__(self, run) -> None:
        self.real, self.seen = run, {}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape not in self.seen:
            self.seen[batch.shape] = self.real(batch)
        return self.seen[batch.shape]


def peer_engines(report: dict, threads: int) -> dict:
    """OpenVINO runs of the exported models, by table label (none without OpenVINO)."""
    if not engines.openvino_available():
        return {}
    import openvino as ov

    found = {"OV FP32": engines.OpenVinoEngine(Path(report["onnx"]), threads, bf16=False)}
    if engines.cpu_has_bf16(ov.Core()):
        found["OV FP32, bf16 hint"] = engines.OpenVinoEngine(Path(report["onnx"]), threads, bf16=True)
    found["OV INT8"] = engines.OpenVinoEngine(Path(report["int8"]), threads)
    return found


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
        "miou_fp32": report["miou_fp32"], "miou_int8": report["miou_int8"], "engines": {}, "agreement": {},
    }
    peers = peer_engines(report, args.threads)
    if peers:
        import openvino as ov

        results["openvino"] = ov.get_version().split("-")[0]
        results["bf16"] = engines.cpu_has_bf16(ov.Core())
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, XDG_CACHE_HOME=cache):  # not in ~/.cache
        auto = Segmenter(report["onnx"], device="cpu", threads=args.threads, engine="auto")
        results["auto"] = f"{auto.engine.name} {auto.engine.precision}"

    def torch_eager(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    for label, crop in (("960x720", lambda im: im), ("512x512", lambda im: center_crop(im, 512))):
        inputs = [fp32.model_input(crop(im))[None] for im in rgbs]
        runs = {"torch eager": torch_eager, "ORT FP32": fp32.run, "ORT INT8": int8.run,
                **{name: e.run for name, e in peers.items()}}
        rates = interleaved(runs, inputs, args.runs)
        results["engines"][label] = {k: {"runs": v, "median": statistics.median(v)} for k, v in rates.items()}
        reference = [fp32.run(x).argmax(1) for x in inputs]
        results["agreement"][label] = {name: float(np.mean([(run(x).argmax(1) == r).mean()
                                                            for x, r in zip(inputs, reference)]))
                                       for name, run in runs.items() if name not in ("torch eager", "ORT FP32")}

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

            replayed = copy.copy(piped)
            replayed.run = Replay(piped.run)

            def output_work(_: object) -> None:
                predict_path(folder, tmp / "out", replayed, options, progress=False)

            # one "call" = the whole folder; the first pass of each is the warm-up
            rates = interleaved({"bare session": bare_session, "output work": output_work, "pipeline": pipeline},
                                [None], args.runs, len(paths))
            results["pipeline"][f"{name}, short side {short_side or 'native'}"] = {
                k: {"runs": v, "median": statistics.median(v)} for k, v in rates.items()}
    results["load_after"] = os.getloadavg()[0]

    print(f"checkpoint {args.checkpoint} ({results['model']}), {results['cores']} cores, {args.threads} threads, "
          f"ORT {ort.__version__} {fp32.provider}, torch {torch.__version__}; load {results['load_before']:.2f} "
          f"before, {results['load_after']:.2f} after")
    print(f"mIoU val (at the model's input resolution, as export scores it): FP32 {100 * report['miou_fp32']:.2f}, INT8 {100 * report['miou_int8']:.2f}\n")
    print(f"OpenVINO {results.get('openvino', 'not installed')}, CPU bf16: {results.get('bf16', '-')}; "
          f"--engine auto picks {results['auto']}\n")
    print("| size | engine | images/s (median of %d) | vs torch eager | masks as ORT FP32 |" % args.runs)
    print("|---|---|---|---|---|")
    for label, timed in results["engines"].items():
        base = timed["torch eager"]["median"]
        for name, r in timed.items():
            agree = results["agreement"][label].get(name)
            shown = "-" if name == "torch eager" else "reference" if agree is None else f"{100 * agree:.2f} %"
            print(f"| {label} | {name} | {r['median']:.2f} | {r['median'] / base:.2f}x | {shown} |")
    # Engine and output work each measured alone on all cores; sharing the cores, one image costs at best the
    # sum of the two times, so 1 / (1/engine + 1/output work) is what they allow together.
    print(f"\n| model, resolution ({len(paths)} images, batch {args.batch_size}) | engine alone images/s "
          "| output work alone | both sharing the cores, at best | pipeline | pipeline / best shared "
          "| pipeline / slower alone |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["pipeline"].items():
        b, w, p = (r[k]["median"] for k in ("bare session", "output work", "pipeline"))
        shared = 1 / (1 / b + 1 / w)
        print(f"| {name} | {b:.2f} | {w:.2f} | {shared:.2f} | {p:.2f} | {100 * p / shared:.0f} % "
              f"| {100 * p / min(b, w):.0f} % |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
