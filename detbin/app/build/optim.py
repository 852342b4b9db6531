"""The ``train`` section as objects: the student's optimizer, its LR schedule, the run's length."""

from __future__ import annotations

import math
from typing import Any

import torch

from detbin.config import RunConfig
from detbin.training.hooks import lr_lambda
from detbin.training.recipe import Plan

__all__ = ["Plan", "plan_iterations", "build_optimizer", "build_scheduler"]


def plan_iterations(config: RunConfig, train_size: int, world_size: int = 1) -> Plan:
    """The run's plan: ``max_iterations`` from ``train.max_iterations`` or ``train.epochs`` (drop-last
    batches), and the ``step`` schedule's milestones in iterations."""
    per_epoch = max(1, train_size // (config.train.batch_size * world_size))
    schedule = config.train.schedule
    milestones = tuple(int(round(m * per_epoch)) for m in schedule.milestones) if schedule.name == "step" else ()
    if config.train.max_iterations:
        return Plan(per_epoch, config.train.max_iterations, milestones)
    epochs = config.train.epochs or 12
    return Plan(per_epoch, max(1, math.ceil(epochs * per_epoch)), milestones)


def build_optimizer(groups: list[dict[str, Any]], section: Any) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW from the ``train.optimizer`` section."""
    if section.name == "sgd":
        return torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    cls = torch.optim.Adam if section.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=section.lr, weight_decay=section.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, section: Any, max_iterations: int,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine/step/linear/constant; step milestones are given in epochs."""
    milestones = [int(round(m * iters_per_epoch)) for m in section.milestones]
    factor = lr_lambda(section.name, max_iterations, section.warmup_iters, section.warmup_factor, milestones,
                       section.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
