"""Multi-process training with torch.distributed, hidden behind a few functions.

Launch any weedseg command with `torchrun --nproc_per_node N -m weedseg.cli ...` (add --nnodes,
--node_rank and --rdzv_endpoint for several machines). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK;
`init` reads them and joins the process group: NCCL when CUDA is available, gloo on CPU. Without
torchrun everything here degrades to a single process (rank 0 of 1) and costs nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device.

    'auto' picks CUDA when available (cuda:LOCAL_RANK under torchrun), else the CPU.
    """
    resolved = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return resolved
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    if resolved.type != "cuda":
        return resolved
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the one process that writes files, logs and progress bars."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in rank order; [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean(value: float) -> float:
    """The average of `value` over all processes."""
    if not dist.is_initialized():
        return value
    gathered = all_gather_objects(float(value))
    return sum(gathered) / len(gathered)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (SyncBatchNorm on CUDA) when several processes run."""
    if not dist.is_initialized() or world_size() == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process.

    Parameters already agree under DDP; running statistics drift apart because each process
    normalises its own batches. Call before evaluating or saving so every process uses one model.
    """
    if dist.is_initialized():
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_initialized():
        dist.destroy_process_group()
