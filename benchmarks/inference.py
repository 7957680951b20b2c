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

    .venv/bin/python benchmarks/inference.py --pipeline-cost --pipeline-images 60 --runs 5

measures predict's own cost instead (no checkpoint needed: the shipped ONNX model or --model):
`weedseg predict --outputs mask` over peanut photos against the bare ONNX Runtime session on the same
photos prepared beforehand, on 1 core and on 2 (the process pinned to them, as many engine threads),
with each speed-up of the pipeline turned back in turn to show what it brings, and `--engine auto`;
by wall time and by CPU time (all threads: on a shared machine, one core's CPU time gives the rate a
quiet core would).
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
from dataclasses import replace
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import onnxruntime as ort
import torch

from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.data import open_dataset
from weedseg.data.io import read_rgb
from weedseg.data.locate import find_dataset_root
from weedseg.data.transforms import resize_short_side
from weedseg.export import export_checkpoint
from weedseg.infer import budget, engines, pictures, pipeline
from weedseg.infer.pipeline import PredictOptions, predict_path
from weedseg.infer.session import Segmenter, cpu_count, resolve_model_path
from weedseg.infer.tiling import pad_to_multiple, run_padded, upsample_argmax


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


def numpy_model_input(seg: Segmenter, rgb: np.ndarray) -> np.ndarray:
    """Segmenter.model_input as it was: numpy broadcasting over the colour axis, then a transposed copy."""
    x = rgb.astype(np.float32) * seg._scale - seg._shift
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# Each speed-up of predict's own work, turned back (what the pipeline did before it)
TURNED_BACK = {
    "normalisation in numpy": lambda: mock.patch.object(Segmenter, "model_input", numpy_model_input),
    "mmap threshold 1 MiB": lambda: mock.patch.object(budget, "MMAP_THRESHOLD", 1 << 20),
    "mask PNG with libpng's row filters and zlib's default strategy": lambda: mock.patch.object(pictures, "MASK_PNG", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}
# at a short side of half the photos' or less: the JPEG decoded at full size, then resized
FULL_DECODE = {"full-size decoding": lambda: mock.patch.object(pipeline, "draft_size", lambda *a: None)}


def class_map_upsample(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The alternative to upsampling logits: argmax at the model's resolution, the class map resized (nearest)."""
    return cv2.resize(logits.argmax(0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def upsample_agreement(seg: Segmenter, root: Path) -> dict:
    """Masks from bilinearly upsampled logits (what predict does) against masks from the upsampled class map,
    on the peanut val photos: pixel agreement and mIoU against the labels (pooled over the photos)."""
    split = json.loads((Path(__file__).parents[1] / "weedseg" / "data" / "split_files" / "peanut.json").read_text())
    photos = [root / "images" / f"{i}.jpg" for i in split["val"]]
    inter, union, agree = np.zeros((2, 3)), np.zeros((2, 3)), []
    for photo in photos:
        rgb, label = read_rgb(photo), read_rgb(root / "labels" / f"{photo.stem}.png")
        truth = np.zeros(label.shape[:2], np.uint8)
        for k, colour in enumerate(seg.info.colors):
            truth[(label == colour).all(-1)] = k
        logits = run_padded(seg.run, seg.model_input(resize_short_side(rgb, seg.info.input_short_side))[None], 32)[0]
        masks = [upsample_argmax(logits, *rgb.shape[:2]), class_map_upsample(logits, *rgb.shape[:2])]
        agree.append(float((masks[0] == masks[1]).mean()))
        for i, m in enumerate(masks):
            inter[i] += [((m == k) & (truth == k)).sum() for k in range(3)]
            union[i] += [((m == k) | (truth == k)).sum() for k in range(3)]
    miou = (inter / union).mean(1)
    return {"photos": len(photos), "agreement": float(np.mean(agree)), "miou_logits": float(miou[0]),
            "miou_class_map": float(miou[1])}


def pipeline_cost(args: argparse.Namespace) -> dict:
    """predict (masks only) against the bare session, on 1 and 2 cores, with each speed-up turned back in turn."""
    model = resolve_model_path(args.model)
    photos = sorted((find_dataset_root("peanut", args.data_root) / "images").glob("*.jpg"))[: args.pipeline_images]
    tmp = Path(tempfile.mkdtemp(prefix="weedseg-bench-"))
    folder = tmp / "photos"
    folder.mkdir()
    for p in photos:
        (folder / p.name).symlink_to(p.resolve())
    allowed = sorted(os.sched_getaffinity(0))
    results: dict = {"model": str(model), "images": len(photos), "runs": args.runs, "cpu": engines.cpu_name(),
                     "load_before": os.getloadavg()[0], "onnxruntime": ort.__version__, "cores": {}}
    for cores in (1, 2)[: len(allowed)]:
        os.sched_setaffinity(0, allowed[:cores])
        cv2.setNumThreads(cores)
        bare = Segmenter(model, device="cpu", threads=cores, engine="onnxruntime")
        piped = Segmenter(model, device="cpu", threads=cores, spin=False, engine="onnxruntime")  # as predict runs it
        with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, XDG_CACHE_HOME=cache):
            auto = Segmenter(model, device="cpu", threads=cores, spin=False)  # the default engine: auto
        short = bare.info.input_short_side
        prepared = [pad_to_multiple(bare.model_input(resize_short_side(read_rgb(p), short)), 32) for p in photos]
        batches = [np.stack(prepared[i : i + args.batch_size]) for i in range(0, len(prepared), args.batch_size)]
        options = PredictOptions(batch_size=args.batch_size, outputs=("mask",), overwrite=True)
        small = replace(options, short_side=240)  # under half the photos' 720: decoded at reduced size

        def predict(seg: Segmenter, *turned_back: str, opts: PredictOptions = options):
            def run(_: object) -> None:
                with contextlib.ExitStack() as stack:
                    for name in turned_back:
                        stack.enter_context({**TURNED_BACK, **FULL_DECODE}[name]())
                    predict_path(folder, tmp / "out", seg, opts, progress=False)
            return run

        def bare_session(_: object) -> None:
            for b in batches:
                bare.run(b)

        timed = {"bare session ORT FP32": bare_session, "predict": predict(piped),
                 **{f"predict, {name} (as before)": predict(piped, name) for name in TURNED_BACK},
                 "predict, all three as before": predict(piped, *TURNED_BACK),
                 f"predict --engine auto ({auto.engine.name} {auto.engine.precision})": predict(auto),
                 "predict --short-side 240 (not against the bare session)": predict(piped, opts=small),
                 "predict --short-side 240, full-size decoding (as before)": predict(piped, "full-size decoding",
                                                                                    opts=small)}
        for fn in timed.values():  # warm-up
            fn(None)
        rates, cpu_rates = {k: [] for k in timed}, {k: [] for k in timed}
        for _ in range(args.runs):  # in turns; CPU time of all threads: on one core, what a quiet core would give
            for name, fn in timed.items():
                wall, cpu = time.perf_counter(), time.process_time()
                fn(None)
                rates[name].append(len(photos) / (time.perf_counter() - wall))
                cpu_rates[name].append(len(photos) / (time.process_time() - cpu))
        results["cores"][cores] = {k: {"runs": v, "median": statistics.median(v), "cpu_runs": cpu_rates[k],
                                       "cpu_median": statistics.median(cpu_rates[k])} for k, v in rates.items()}
    os.sched_setaffinity(0, allowed)
    results["upsampling"] = upsample_agreement(bare, find_dataset_root("peanut", args.data_root))
    results["load_after"] = os.getloadavg()[0]
    print(f"{len(photos)} peanut photos, model {model.name}, batch {args.batch_size}, --outputs mask, median of "
          f"{args.runs} runs taken in turns; CPU {results['cpu']}; load {results['load_before']:.2f} before, "
          f"{results['load_after']:.2f} after\n")
    print("| cores | run | images/s (wall) | / bare session | images per CPU-second | / bare session |")
    print("|---|---|---|---|---|---|")
    for cores, timed in results["cores"].items():
        base, cpu_base = (timed["bare session ORT FP32"][k] for k in ("median", "cpu_median"))
        for name, r in timed.items():
            share = (f"{100 * r['median'] / base:.0f} %", f"{100 * r['cpu_median'] / cpu_base:.0f} %") \
                if "short-side" not in name else ("-", "-")
            print(f"| {cores} | {name} | {r['median']:.2f} | {share[0]} | {r['cpu_median']:.2f} | {share[1]} |")
    up = results["upsampling"]
    print(f"\nclass map upsampled instead of logits, {up['photos']} peanut val photos: masks agree on "
          f"{100 * up['agreement']:.2f} % of pixels; mIoU {100 * up['miou_logits']:.2f} (logits) vs "
          f"{100 * up['miou_class_map']:.2f} (class map)")
    shutil.rmtree(tmp, ignore_errors=True)
    return results


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
    parser.add_argument("--pipeline-cost", action="store_true",
                        help="measure predict's own cost on 1 and 2 cores instead (see above)")
    parser.add_argument("--model", help="with --pipeline-cost: the ONNX model (default: the shipped one)")
    args = parser.parse_args()
    if args.pipeline_cost:
        results = pipeline_cost(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        return 0

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
