"""The trainer: one short ``run_step`` and hooks around it (detectron2's HookBase idea).

Everything that is not the algorithm of a step (LR schedule, checkpoints, evaluation,
logs, progress) is a :class:`Hook`. The recipe supplies the method: extra loss terms, taps,
and its own hooks (see :mod:`detbin.recipe` for the call order).

Determinism: data order comes from :class:`EpochSampler` (a permutation per epoch from the
seed, resumable mid-epoch), so a run resumed from ``last.pt`` continues bit-identically on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from detbin.models.detector import Detector
from detbin.core.errors import DetbinError, TrainingInterrupted
from detbin.training.hook import Hook
from detbin.training.recipe import Recipe, Step
from detbin.training.sampler import EpochSampler
from detbin.models.taps import record
from detbin.core.types import Target

__all__ = ["Hook", "StepResult", "Trainer", "EpochSampler", "NonFiniteLoss", "TrainingInterrupted"]

log = logging.getLogger(__name__)


class NonFiniteLoss(DetbinError):
    """The total loss became NaN or infinite; the run stops and shows the last loss dict."""


@dataclass(frozen=True)
class StepResult:
    """One iteration: namespaced loss values, total, learning rate, wall time."""

    iteration: int
    losses: dict[str, float]
    total: float
    lr: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains a student detector, optionally against a frozen teacher, with a recipe.

    Args:
        student: the detector being trained (its ``model`` may be wrapped by DDP through
            ``student.forward_module``).
        recipe: the method; a plain :class:`Recipe` trains with the task loss only.
        loader: yields ``(images, targets)`` batches; ``loader.sampler`` should be an
            :class:`EpochSampler` for exact resume.
        optimizer: built from ``recipe.param_groups``.
        max_iterations: length of the run.
        teacher: frozen real-valued detector (eval mode, no grad) or None.
        hooks: called in order around every step.
        clip_grad: max L2 norm of all gradients, or None.
        amp: mixed precision (CUDA only; ignored with a warning on CPU).
        device: where batches go.
        grad_sync: called after backward (averages recipe-owned gradients across ranks).
    """

    def __init__(
        self,
        student: Detector,
        recipe: Recipe,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        max_iterations: int,
        *,
        teacher: Detector | None = None,
        hooks: Sequence[Hook] = (),
        clip_grad: float | None = None,
        amp: bool = False,
        device: torch.device | str = "cpu",
        grad_sync: Callable[[], None] | None = None,
    ) -> None:
        self.student, self.recipe, self.loader, self.optimizer = student, recipe, loader, optimizer
        self.teacher, self.hooks, self.clip_grad, self.grad_sync = teacher, list(hooks), clip_grad, grad_sync
        self.max_iterations, self.device = max_iterations, torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        if amp and not self.amp:
            log.warning("AMP needs a CUDA device; training in float32 on %s", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration, self.epoch, self.epoch_position = 0, 0, 0
        self.last: StepResult | None = None
        self.taps = tuple(recipe.tap_names(student))
        if teacher is not None:
            freeze(teacher)

    def _to_device(self, images: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], list[Target]]:
        moved = [{k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        return [i.to(self.device, non_blocking=True) for i in images], moved  # type: ignore[misc]

    def run_step(self, images: list[Tensor], targets: list[Target]) -> StepResult:
        """One optimization step: task + recipe losses, backward, clip, step."""
        start = time.perf_counter()
        images, targets = self._to_device(images, targets)
        with record(self.student.model, self.taps) as student_taps, \
                torch.autocast(self.device.type, enabled=self.amp):
            task = self.student.losses(images, targets)
        teacher_taps: dict[str, list[Any]] = {}
        if self.teacher is not None and (self.taps or self.recipe.needs_teacher):
            with record(self.teacher.model, self.taps) as teacher_taps, torch.no_grad():
                self.recipe.teacher_features(images, self.teacher, student_taps)
        step = Step(images, targets, task, student_taps, teacher_taps, self.iteration, self.max_iterations,
                    self.student, self.teacher)
        extra = self.recipe.loss(step)
        total = self.recipe.task_weight() * sum(task.values()) + sum(extra.values(), torch.zeros((), device=self.device))
        losses = {f"task/{k}": v for k, v in task.items()} | {f"{self.recipe.name or 'recipe'}/{k}": v
                                                             for k, v in extra.items()}
        if not torch.isfinite(total):
            raise NonFiniteLoss(f"non-finite loss at iteration {self.iteration}: "
                                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._clip_and_step()
        logged = self.recipe.after_optimizer_step(step)
        return StepResult(self.iteration, {k: v.item() for k, v in losses.items()}, total.item(),
                          self.optimizer.param_groups[0]["lr"], time.perf_counter() - start, logged)

    def _clip_and_step(self) -> None:
        if self.grad_sync is not None:
            self.grad_sync()
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _batches(self) -> Iterator[tuple[list[Tensor], list[Target]]]:
        """Batches from the current (epoch, position) on, forever."""
        sampler = getattr(self.loader, "sampler", None)
        batch_size = getattr(self.loader, "batch_size", None) or 1
        while True:
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(self.epoch, self.epoch_position * batch_size)
            dataset = getattr(self.loader, "dataset", None)
            if hasattr(dataset, "epoch"):
                dataset.epoch = self.epoch
            for batch in self.loader:
                # counted before the step runs, so a checkpoint written after it resumes *after* it
                self.epoch_position += 1
                yield batch
            self.epoch, self.epoch_position = self.epoch + 1, 0

    def train(self) -> None:
        """Run hooks and steps until ``max_iterations``; ``after_train`` always runs."""
        self.student.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        try:
            batches = self._batches()
            while self.iteration < self.max_iterations:
                for hook in self.hooks:
                    hook.before_step(self)
                self.last = self.run_step(*next(batches))
                self.iteration += 1
                for hook in self.hooks:
                    hook.after_step(self)
        except KeyboardInterrupt:
            for hook in self.hooks:
                hook.on_interrupt(self)
            raise TrainingInterrupted(f"interrupted at iteration {self.iteration}; last.pt holds the state "
                                      "(resume with --resume)") from None
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, optimizer, scaler, hook states, RNG."""
        return {
            "iteration": self.iteration, "epoch": self.epoch, "epoch_position": self.epoch_position,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "hooks": [h.state_dict() for h in self.hooks], "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.epoch, self.epoch_position = state["iteration"], state["epoch"], state["epoch_position"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for hook, hook_state in zip(self.hooks, state["hooks"]):  # writer hooks exist on rank 0 only, last
            hook.load_state_dict(hook_state)
        set_rng_state(state["rng"])


def freeze(detector: Detector) -> None:
    """Teacher mode: no gradients, BatchNorm and everything else in eval mode."""
    detector.model.eval()
    for p in detector.model.parameters():
        p.requires_grad_(False)


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA) RNG state as tensors (safe for ``weights_only`` loading)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
