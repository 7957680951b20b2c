"""Training speed, side by side in one run: the model-only step rate against weedseg's train and pretrain rates.

    .venv/bin/python benchmarks/training.py                       # CPU (and CUDA where present)
    .venv/bin/python benchmarks/training.py --models unet-resnet18-quarter --steps 20

For each model and device: images/s of a bare training step (forward, loss, backward, Adam on one
fixed random batch; float32 NCHW, float32 channels_last, and channels_last with autocast where
weedseg would use it), then images/s of `weedseg train` (real peanut images, augmentation, the
loop's own timing of its last epoch, validation excluded) and of `weedseg pretrain --method
selective` (its logged training rate, scoring excluded), each as a ratio of the best model-only
rate. Prints a Markdown table and writes the numbers as JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from weedseg.infer.engines import cpu_name
from weedseg.losses import build_loss
from weedseg.models import create_model
from weedseg.runtime import cpu_has_native_bf16, mixed_precision
from weedseg.ssl.losses import ReconstructionLoss
from weedseg.ssl.pretrain import PretrainConfig, pretrain
from weedseg.train import TrainConfig, train


def model_only_rate(name: str, device: torch.device, layout: str, amp: bool, batch: int, size: int,
                    steps: int, recon: bool = False) -> float:
    """Images/s of a bare training step on a fixed random batch (median of `steps` timed steps after 3 warm-up)."""
    torch.manual_seed(0)
    model = create_model(name, 3).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randn(batch, 3, size, size, device=device) if recon else torch.randint(0, 3, (batch, size, size), device=device)
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    criterion = ReconstructionLoss("l1+ssim", [0.5] * 3, [0.25] * 3).to(device) if recon else build_loss("jaccard")
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    use_amp, dtype, _ = mixed_precision(amp, device)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            pred = model(x)
        loss = criterion(pred if not recon else pred.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def train_rate(name: str, device: torch.device, batch: int, size: int, fraction: float, epochs: int,
               data_root: str | None) -> float:
    """Images/s `weedseg train` logs for its last epoch (training only; validation excluded)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        cfg = TrainConfig(dataset="peanut", data_root=data_root, out=tmp, model=name, epochs=epochs, batch_size=batch,
                          crop=size, warmup_epochs=1, train_fraction=fraction, eval_every=10_000, workers=-1,
                          device=str(device), eval_short_side=64)
        train(cfg)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["images_per_s"]


def pretrain_rate(name: str, device: torch.device, batch: int, size: int, epochs: int,
                  data_root: str | None) -> float:
    """Training images/s `weedseg pretrain --method selective` reports (scoring excluded) on 2 partitions."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        cfg = PretrainConfig(method="selective", dataset="peanut", data_root=data_root, out=tmp, model=name,
                             epochs=epochs, batch_size=batch, crop=size, warmup_epochs=1, partitions=10, pictures=1,
                             device=str(device), workers=-1)
        pretrain(cfg)
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    return summary["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet-resnet18-quarter,unet-resnet34")
    parser.add_argument("--devices", default="cpu,cuda", help="those present are measured")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15, help="timed model-only steps per setting")
    parser.add_argument("--data-root")
    parser.add_argument("--json", default="benchmarks/training.json")
    args = parser.parse_args()

    devices = [torch.device(d) for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for name in args.models.split(","):
            big = device.type == "cpu" and "quarter" not in name and "half" not in name
            steps = max(3, args.steps // 5) if big else args.steps
            rates = {f"model {layout}{' + autocast' if amp else ''}": model_only_rate(name, device, layout, amp,
                                                                                    args.batch, args.size, steps)
                     for layout, amp in [("NCHW", False), ("channels_last", False), ("channels_last", True)]
                     if not amp or mixed_precision(True, device)[0]}
            best = max(rates.values())
            fraction, epochs = (0.1, 2) if big else (1.0, 2)
            rates["weedseg train"] = train_rate(name, device, args.batch, args.size, fraction, epochs, args.data_root)
            rates["model-only reconstruction step"] = model_only_rate(name, device, "channels_last",
                                                                      True, args.batch, args.size, steps, recon=True)
            rates["weedseg pretrain (selective)"] = pretrain_rate(name, device, args.batch, args.size,
                                                                  1 if big else 3, args.data_root)
            rows.append({"device": str(device), "model": name, "images_per_s": {k: round(v, 1) for k, v in rates.items()},
                         "train_ratio": round(rates["weedseg train"] / best, 3),
                         "pretrain_ratio": round(rates["weedseg pretrain (selective)"]
                                                 / max(rates["model-only reconstruction step"], 1e-9), 3)})
            print(json.dumps(rows[-1]), flush=True)
    machine = {"cpu": cpu_name(), "torch": torch.__version__,
               "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "batch": args.batch, "size": args.size, "time": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\n{machine}\n")
    keys = list(dict.fromkeys(k for r in rows for k in r["images_per_s"]))
    print("| device | model | " + " | ".join(keys) + " | train / best model-only | pretrain / model-only |")
    print("|---" * (len(keys) + 4) + "|")
    for r in rows:
        cells = [str(r["images_per_s"].get(k, "")) for k in keys]
        print(f"| {r['device']} | {r['model']} | " + " | ".join(cells) + f" | {r['train_ratio']:.0%} | {r['pretrain_ratio']:.0%} |")


if __name__ == "__main__":
    main()
