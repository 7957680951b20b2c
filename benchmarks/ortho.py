"""Peak memory and throughput of `weedseg predict` on large orthomosaics, beside the photo pipeline's rate.

Makes synthetic orthomosaics by tiling real peanut photos into a JPEG-compressed, tiled GeoTIFF (UTM 33N, 1 cm
pixels; a few seconds per gigapixel), then runs, one at a time, each under /usr/bin/time -v:
  * `weedseg predict PHOTOS` on peanut photos (960 x 720, seen at 640 x 480: 0.667 x, the ortho's default scale);
  * `weedseg predict ORTHO` for each size asked for.
Prints and writes (--json) peak RSS and megapixels per second of input for each, with the CPU, date and uptime.

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ortho.py --gigapixels 1 --sizes 63246x3000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from weedseg.data.locate import find_dataset_root

E0, N0, GSD_M = 500_000.0, 4_100_000.0, 0.01
BLOCK = 512


def make_ortho(path: Path, width: int, height: int, photos: list[np.ndarray]) -> float:
    """A width x height RGB GeoTIFF of peanut photo crops, tiled and JPEG-compressed; returns the seconds taken."""
    start = time.perf_counter()
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(GSD_M, 0.0, E0, 0.0, -GSD_M, N0), tiled=True, blockxsize=BLOCK,
                   blockysize=BLOCK, compress="JPEG", photometric="YCBCR", jpeg_quality=90, BIGTIFF="YES")
    crops = [p[y: y + BLOCK, x: x + BLOCK].transpose(2, 0, 1) for p in photos for y in (0, 200) for x in (0, 440)]
    rows = []
    with rasterio.open(path, "w", **profile) as ds:
        for by, y in enumerate(range(0, height, BLOCK)):
            h = min(BLOCK, height - y)
            rows = np.concatenate([crops[(by * 7 + bx) % len(crops)][:, :h] for bx in range(-(-width // BLOCK))],
                                  axis=2)[:, :, :width]
            ds.write(rows, window=Window(0, y, width, h))
    return time.perf_counter() - start


def timed(cmd: list[str], env: dict, limit_s: float = 0) -> dict:
    """Run `cmd` under /usr/bin/time -v (stopped with SIGTERM after `limit_s` seconds, if given): wall seconds, peak
    RSS in MB and whether it was stopped."""
    stop = ["timeout", "-s", "TERM", str(limit_s)] if limit_s else []
    proc = subprocess.run(["/usr/bin/time", "-v", *stop, *cmd], env=env, capture_output=True, text=True)
    stopped = bool(limit_s) and proc.returncode == 124
    if proc.returncode != 0 and not stopped:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(rss / 1024, 1), **({"stopped": True} if stopped else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gigapixels", type=float, nargs="*", default=[1.0, 4.0], help="ortho sizes (square)")
    ap.add_argument("--sizes", nargs="*", default=[], metavar="WxH",
                    help="also orthos of these sizes, e.g. 63246x3000: a strip as wide as a 4-gigapixel square, whose "
                         "windows hold as much memory as the square's")
    ap.add_argument("--photos", type=int, default=60, help="peanut photos for the photo pipeline's rate")
    ap.add_argument("--work", type=Path, help="folder for the rasters and outputs (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--limit-s", type=float, default=0, help="stop each ortho run after this many seconds and report "
                    "its share done (from the run's journal) and memory until then")
    args = ap.parse_args()
    images = sorted((find_dataset_root("peanut") / "images").glob("*.jpg"))
    photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in images[:16]]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    weedseg = [sys.executable, "-m", "weedseg.cli", "predict"]
    common = ["--threads", "1", "--outputs", "mask,grid", "--cell-m", "0.5"]
    results: dict = {"cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1]
                     .splitlines()[0].strip(), "cores_allowed": len(os.sched_getaffinity(0)),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        folder = work / "photos"
        folder.mkdir()
        for p in images[: args.photos]:
            os.symlink(p, folder / p.name)
        run = timed([*weedseg, str(folder), "--out", str(work / "photos-out"), *common], env)
        mp = args.photos * 960 * 720 / 1e6
        results["photos"] = {"megapixels": round(mp, 1), **run, "mp_per_s": round(mp / run["seconds"], 3)}
        print(json.dumps(results["photos"]), flush=True)
        sizes = [(round(math.sqrt(gp * 1e9)),) * 2 for gp in args.gigapixels]
        sizes += [tuple(int(v) for v in size.split("x")) for size in args.sizes]
        for width, height in sizes:
            gp = round(width * height / 1e9, 3)
            ortho = work / f"ortho-{width}x{height}.tif"
            made = make_ortho(ortho, width, height, photos)
            out = work / f"out-{width}x{height}"
            run = timed([*weedseg, str(ortho), "--out", str(out), *common], env, args.limit_s)
            mp = width * height / 1e6
            if run.get("stopped"):  # the share done: rows of windows finished, from the journal
                journal = json.loads((out / f"{ortho.stem}.mask.tif.partial" / "journal.json").read_text())
                height = journal["settings"]["model_size"][1]
                done = journal["rows_done"] * (1024 - 128) / height
                run["share_done"] = round(min(1.0, done), 3)
                mp *= run["share_done"]
            row = {"gigapixels": gp, "size": f"{width} x {height}", "file_mb": round(ortho.stat().st_size / 1e6),
                   "megapixels_done": round(mp, 1),
                   "made_in_s": round(made, 1), **run, "mp_per_s": round(mp / run["seconds"], 3)}
            row["vs_photos_pct"] = round(100 * row["mp_per_s"] / results["photos"]["mp_per_s"], 1)
            results.setdefault("orthos", []).append(row)
            print(json.dumps(row), flush=True)
            ortho.unlink()
    results["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
