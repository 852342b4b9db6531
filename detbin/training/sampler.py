"""The training order: a seeded permutation per epoch, sharded across ranks, resumable mid-epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded across ranks, resumable mid-epoch.

    Epoch ``e`` uses ``randperm(n, seed + e)``; rank ``r`` of ``w`` takes every ``w``-th index
    (padded by repetition so every rank has the same count, as DistributedSampler does).
    ``set_epoch(e, skip)`` starts epoch ``e`` after its first ``skip`` samples of this rank.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.per_rank * self.world_size - self.size]
        return iter(order[self.rank::self.world_size][self.skip:])
