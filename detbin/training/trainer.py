"""The trainer: one short ``run_step`` and hooks around it (detectron2's HookBase idea).

Everything that is not the algorithm of a step (LR schedule, checkpoints, evaluation,
logs, progress) is a :class:`~detbin.training.hook.Hook`. The recipe supplies the method:
extra loss terms, taps, phases, its own optimizers and hooks (the call order is in
:mod:`detbin.training.recipe`).

Counters: ``iteration`` counts the student's optimizer steps (the LR schedule, ``epoch`` and
``Step.lr_stage`` follow it; ``max_iterations`` ends the run); ``global_step`` counts every step,
also those of phases in which the recipe trains something else (a GAN round), and paces
checkpoints and logs. Without phases the two are equal.

Determinism: data order comes from :class:`~detbin.training.sampler.EpochSampler` (a
permutation per epoch from the seed, resumable mid-epoch), so a run resumed from ``last.pt``
continues bit-identically on CPU. Ctrl-C is deferred to the end of the running step, so the
``last.pt`` it saves is a state between two steps, exactly as a periodic checkpoint is.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from detbin.core.errors import DataError, DetbinError, TrainingInterrupted
from detbin.core.types import Target
from detbin.models.detector import Detector
from detbin.models.taps import record
from detbin.training.hook import Hook
from detbin.training.recipe import Phase, Recipe, Step
from detbin.training.sampler import EpochSampler

__all__ = ["StepResult", "Trainer", "NonFiniteLoss", "NonFiniteWeights", "freeze", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)


class NonFiniteLoss(DetbinError):
    """The total loss became NaN or infinite; the run stops and shows the last loss dict."""


class NonFiniteWeights(NonFiniteLoss):
    """The weights to checkpoint hold a NaN or an infinity (a latent weight behind a sign() can
    overflow while the loss stays finite); the run stops and ``last.pt`` keeps the last finite state."""


@dataclass(frozen=True)
class StepResult:
    """One step: namespaced loss values, total, learning rate, wall time, the phase it belonged to.

    ``student`` is False for a step of a phase in which the student does not train; its
    ``losses`` are then what the recipe's ``phase_step`` logged and ``total`` is NaN.
    """

    iteration: int
    losses: dict[str, float]
    total: float
    lr: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    phase: str = "train"
    student: bool = True


class _DeferredInterrupt:
    """Turns the first SIGINT into a flag checked between steps; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing the current step, then saving last.pt (Ctrl-C again to stop at once)")


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[_DeferredInterrupt]:
    handler = _DeferredInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield handler  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Trains a student detector, optionally against a frozen teacher, with a recipe.

    Args:
        student: the detector being trained (its ``model`` may be wrapped by DDP through
            ``student.forward_module``).
        recipe: the method; a plain :class:`Recipe` trains with the task loss only.
        loader: yields ``(images, targets)`` batches; ``loader.sampler`` should be an
            :class:`EpochSampler` for exact resume.
        optimizer: the student's, built from ``recipe.param_groups``.
        max_iterations: length of the run in student optimizer steps.
        teacher: frozen real-valued detector (eval mode, no grad) or None.
        hooks: called in order around every step.
        clip_grad: max L2 norm of the student optimizer's gradients, or None.
        amp: mixed precision (CUDA only; ignored with a warning on CPU).
        device: where batches go.
        grad_sync: called after the student's backward (averages recipe-owned gradients across ranks).
        sync: all-reduces the gradients of given parameters across ranks (``Step.sync``).
        milestones: LR-step iterations (``Step.lr_stage`` counts those passed).
        phases: the recipe's ordered phases (default: one phase ``train``, the student throughout).
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
        sync: Callable[[Any], None] | None = None,
        milestones: Sequence[int] = (),
        phases: Sequence[Phase] | None = None,
    ) -> None:
        self.student, self.recipe, self.loader, self.optimizer = student, recipe, loader, optimizer
        self.teacher, self.hooks, self.clip_grad, self.grad_sync = teacher, list(hooks), clip_grad, grad_sync
        self.sync = sync or (lambda parameters: None)
        self.max_iterations, self.device = max_iterations, torch.device(device)
        self.milestones, self.phases = tuple(milestones), list(phases or [Phase("train")])
        self.amp = amp and self.device.type == "cuda"
        if amp and not self.amp:
            log.warning("AMP needs a CUDA device; training in float32 on %s", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration, self.global_step, self.epoch, self.epoch_position = 0, 0, 0, 0
        self.phase_index, self.phase_steps = 0, 0
        self.last: StepResult | None = None
        self.owned = dict(recipe.owned_optimizers())
        self.taps = tuple(recipe.tap_names(student))
        self.input_taps = tuple(recipe.input_tap_names(student))
        self.teacher_taps: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if teacher is not None:
            freeze(teacher)
            # a teacher of another architecture (IDa-Det's R101, BiDet's real SSD) may lack
            # student-only modules; the student's names are checked, the teacher's are what it has
            names = dict(teacher.model.named_modules())
            self.teacher_taps = (tuple(n for n in self.taps if n in names),
                                 tuple(n for n in self.input_taps if n in names))

    @property
    def phase(self) -> Phase:
        """The phase the next step belongs to."""
        return self.phases[min(self.phase_index, len(self.phases) - 1)]

    @property
    def lr_stage(self) -> int:
        """Milestones passed by the student's optimizer steps (0 before the first LR decay)."""
        return sum(self.iteration >= m for m in self.milestones)

    def _to_device(self, images: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], list[Target]]:
        moved = [{k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        return [i.to(self.device, non_blocking=True) for i in images], moved  # type: ignore[misc]

    def _step(self, images: list[Tensor], targets: list[Target], task: dict[str, Tensor],
              taps: tuple[dict[str, list[Any]], ...] = ({}, {}, {}, {})) -> Step:
        student_taps, teacher_taps, student_inputs, teacher_inputs = taps
        return Step(images, targets, task, student_taps, teacher_taps, self.iteration, self.max_iterations,
                    self.student, self.teacher, student_inputs=student_inputs, teacher_inputs=teacher_inputs,
                    epoch=self.epoch, lr_stage=self.lr_stage, phase=self.phase.name, sync=self.sync)

    def _teacher_taps(self, images: list[Tensor], student_taps: dict[str, list[Any]]
                      ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        if self.teacher is None or not (self.taps or self.input_taps or self.recipe.needs_teacher):
            return {}, {}
        output_names, input_names = self.teacher_taps
        with record(self.teacher.model, output_names) as outputs, \
                record(self.teacher.model, input_names, inputs=True) as inputs, torch.no_grad():
            self.recipe.teacher_features(images, self.teacher, student_taps)
        return outputs, inputs

    def run_step(self, images: list[Tensor], targets: list[Target]) -> StepResult:
        """One optimization step of the student: task + recipe losses, backward, clip, step."""
        start = time.perf_counter()
        images, targets = self._to_device(images, targets)
        with record(self.student.model, self.taps) as student_taps, \
                record(self.student.model, self.input_taps, inputs=True) as student_inputs, \
                torch.autocast(self.device.type, enabled=self.amp):
            task = self.student.losses(images, targets)
        teacher_taps, teacher_inputs = self._teacher_taps(images, student_taps)
        step = self._step(images, targets, task, (student_taps, teacher_taps, student_inputs, teacher_inputs))
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
                          self.optimizer.param_groups[0]["lr"], time.perf_counter() - start, logged, step.phase)

    def run_phase_step(self, images: list[Tensor], targets: list[Target]) -> StepResult:
        """One step of a phase in which the student does not train: the recipe's ``phase_step``."""
        start = time.perf_counter()
        images, targets = self._to_device(images, targets)
        step = self._step(images, targets, {})
        logged = self.recipe.phase_step(step)
        name = self.recipe.name or "recipe"
        return StepResult(self.iteration, {f"{name}/{k}": v for k, v in logged.items()}, float("nan"),
                          self.optimizer.param_groups[0]["lr"], time.perf_counter() - start, {}, step.phase, False)

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
        """Batches from the current (epoch, position) on, forever.

        Raises:
            DataError: a whole epoch yielded no batch (an empty split, or fewer images than the
                batch size with the last partial batch dropped), which would otherwise loop forever.
        """
        sampler = getattr(self.loader, "sampler", None)
        batch_size = getattr(self.loader, "batch_size", None) or 1
        while True:
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(self.epoch, self.epoch_position * batch_size)
            dataset = getattr(self.loader, "dataset", None)
            if hasattr(dataset, "epoch"):
                dataset.epoch = self.epoch
            whole_epoch, yielded = self.epoch_position == 0, 0  # a resumed epoch may have nothing left
            for batch in self.loader:
                # counted before the step runs, so a checkpoint written after it resumes *after* it
                self.epoch_position += 1
                yielded += 1
                yield batch
            if whole_epoch and not yielded:
                size = len(dataset) if hasattr(dataset, "__len__") else "?"
                raise DataError(f"the training data yielded no batch in epoch {self.epoch} ({size} images, batch size "
                                f"{batch_size}, partial batches dropped); add images or lower train.batch_size")
            self.epoch, self.epoch_position = self.epoch + 1, 0

    def _phase_over(self) -> bool:
        phase = self.phase
        if self.phase_index >= len(self.phases) - 1:
            return False  # the last phase lasts until max_iterations
        if phase.iterations is not None:
            return self.phase_steps >= phase.iterations
        return self.phase_steps > 0 and self.recipe.phase_done(phase.name, self)

    def _enter_phases(self) -> None:
        """Move past finished phases; the recipe hears of every phase it enters (also on resume)."""
        while self._phase_over():
            self.phase_index, self.phase_steps = self.phase_index + 1, 0
            self.recipe.on_phase(self.phase.name, self)

    def train(self) -> None:
        """Run hooks and steps until ``max_iterations``; ``after_train`` always runs."""
        self.student.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        self.recipe.on_phase(self.phase.name, self)
        try:
            with _deferred_sigint() as interrupt:
                batches = self._batches()
                while self.iteration < self.max_iterations:
                    self._enter_phases()
                    for hook in self.hooks:
                        hook.before_step(self)
                    batch = next(batches)
                    self.last = self.run_step(*batch) if self.phase.student else self.run_phase_step(*batch)
                    self.iteration += int(self.last.student)
                    self.global_step += 1
                    self.phase_steps += 1
                    for hook in self.hooks:
                        hook.after_step(self)
                    if interrupt.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            for hook in self.hooks:
                hook.on_interrupt(self)
            raise TrainingInterrupted(f"interrupted at iteration {self.iteration}; last.pt holds the state "
                                      "(resume with --resume)") from None
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, phase, optimizers, scaler, hook states, RNG."""
        return {
            "iteration": self.iteration, "global_step": self.global_step, "epoch": self.epoch,
            "epoch_position": self.epoch_position, "phase_index": self.phase_index, "phase_steps": self.phase_steps,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "owned_optimizers": {name: opt.state_dict() for name, opt in self.owned.items()},
            "hooks": [h.state_dict() for h in self.hooks], "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.epoch, self.epoch_position = state["iteration"], state["epoch"], state["epoch_position"]
        self.global_step = state.get("global_step", self.iteration)
        self.phase_index, self.phase_steps = state.get("phase_index", 0), state.get("phase_steps", 0)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for name, opt_state in state.get("owned_optimizers", {}).items():
            self.owned[name].load_state_dict(opt_state)
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
