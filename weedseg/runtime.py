"""Run plumbing shared by `train` and `pretrain`: device, precision and memory layout, loaders, resume files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import WeedsegError
from .checkpoint import load_checkpoint
from .data import SeededSampler


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def mixed_precision(enabled: bool, device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """(use autocast, its dtype, grad scaler) for a training loop.

    CUDA: bf16 where supported, else fp16 with loss scaling. CPU: bf16 only where the CPU has native
    bf16 instructions, else float32 (no autocast). `enabled=False` always means float32.
    """
    if device.type == "cuda":
        use_amp = enabled
        dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    else:
        use_amp, dtype = enabled and device.type == "cpu" and cpu_has_native_bf16(), torch.bfloat16
    return use_amp, dtype, torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)


def channels_last(model: nn.Module) -> nn.Module:
    """The model in channels_last memory layout (faster convolutions on CPU and on CUDA tensor cores)."""
    return model.to(memory_format=torch.channels_last)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image batch on `device`, channels_last to match `channels_last(model)`; other tensors as they are."""
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


def auto_workers() -> int:
    """Loader worker processes: none on a 2-core machine (augmentation is cheap), else up to 8."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


def make_loader(dataset: Dataset, sampler: SeededSampler, batch_size: int, workers: int,
                device: torch.device) -> DataLoader:
    """Loader of full per-process batches (one short batch when there are fewer samples); workers < 0: automatic."""
    workers = auto_workers() if workers < 0 else workers
    return DataLoader(dataset, batch_size, sampler=sampler, drop_last=len(sampler) >= batch_size,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def open_run(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """The resume point <out>/last.pt when `resume`, else None; refuses to start over a run unless `overwrite`."""
    last_path = out / "last.pt"
    if resume:
        return load_checkpoint(last_path)
    if last_path.exists() and not overwrite:
        raise WeedsegError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start "
                           f"afresh, or choose another --out")
    return None


def read_records(log_path: Path, key: str, advice: str = "fix or delete that line") -> list[tuple[str, dict]]:
    """(line, record) of each JSONL record of `log_path` that has `key`. A half-written last line (a run killed or
    still writing) is left out; a damaged line before it is a WeedsegError that ends with `advice`."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record[key]
        except (ValueError, TypeError, KeyError) as exc:
            if n == len(lines):
                break  # the record being written
            raise WeedsegError(f"{log_path} line {n} is damaged ({type(exc).__name__}); {advice}") from exc
        records.append((line, record))
    return records


def truncate_log(log_path: Path, key: str, last: int) -> None:
    """Drop JSONL records whose `key` is past `last` (written just before a kill), so a resumed run repeats none.

    A half-written last line (a kill while appending) is dropped too; a damaged line before it is a WeedsegError.
    """
    if not log_path.exists():
        return
    keep = [line for line, record in read_records(log_path, key, "fix or delete that line, then resume again")
            if record[key] <= last]
    log_path.write_text("".join(line + "\n" for line in keep))


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear from `floor` to 1 over `warmup` steps, then cosine from 1 down to `floor`."""
    if step < warmup:
        return floor + (1 - floor) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
