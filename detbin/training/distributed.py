"""torchrun / DistributedDataParallel support: gloo on CPU, nccl on GPU, rank 0 writes.

``torchrun --nproc_per_node N -m detbin binarize ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything runs in one process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Context", "setup", "teardown", "all_reduce_grads", "broadcast_buffers", "wrap"]


@dataclass(frozen=True)
class Context:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> tuple[Context, torch.device]:
    """Join the process group if launched by torchrun; pick the device.

    ``device`` None: ``cuda:<local rank>`` when CUDA is available, else CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    chosen = torch.device(f"cuda:{local_rank}" if cuda and device in (None, "cuda") else (device or "cpu"))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank), chosen


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_grads(parameters: Iterable[nn.Parameter], world_size: int) -> None:
    """Average the gradients of ``parameters`` over ranks (recipe-owned parameters: they live
    outside the DDP-wrapped student). A missing gradient counts as zero, so every rank reduces
    the same tensors in the same order."""
    if world_size <= 1:
        return
    for p in parameters:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` that tolerates parameters unused on a step.

    A search branch or a variance head may take no part in some forward passes; DDP then has to
    look for them (``find_unused_parameters``). Its note that a step had none unused is expected.
    """
    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore", message=".*find_unused_parameters=True was specified.*")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank.

    DDP broadcasts buffers from rank 0 *before* each forward pass, so the update of the last
    step stays local; this makes every rank end with rank 0's model.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
