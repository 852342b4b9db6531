"""Built-in trainer hooks: LR schedule, checkpoints, periodic evaluation, metric logs.

Only rank 0 gets the hooks that write files (:func:`detbin.app.runner.run` decides). The
LR schedule and evaluation follow the student's optimizer steps (``trainer.iteration``);
checkpoints and logs follow every step (``trainer.global_step``), so a run is resumable and
visible inside a phase in which the student does not train.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detbin.core import jsonio
from detbin.models.checkpoint import non_finite, save_atomic
from detbin.training.hook import Hook
from detbin.training.trainer import NonFiniteWeights, Trainer

__all__ = ["ScheduleHook", "CheckpointHook", "EvalHook", "MetricsLogger", "lr_lambda"]


def lr_lambda(name: str, max_iterations: int, warmup_iters: int, warmup_factor: float,
              milestones: list[int], gamma: float) -> Callable[[int], float]:
    """LR factor at iteration ``i``: linear warm-up from ``warmup_factor``, then the schedule.

    ``cosine``: ``0.5 (1 + cos(pi i / N))``; ``linear``: ``1 - i / N``; ``step``: ``gamma`` to
    the number of milestones (iterations) passed; ``constant``: 1.
    """
    def factor(i: int) -> float:
        if name == "cosine":
            value = 0.5 * (1 + math.cos(math.pi * min(i, max_iterations) / max_iterations))
        elif name == "linear":
            value = max(0.0, 1 - i / max_iterations)
        elif name == "step":
            value = gamma ** sum(i >= m for m in milestones)
        else:
            value = 1.0
        if i < warmup_iters:
            alpha = i / warmup_iters
            value *= warmup_factor * (1 - alpha) + alpha
        return value

    return factor


class ScheduleHook(Hook):
    """Steps an LR scheduler after every optimizer step of the student."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def after_step(self, trainer: Trainer) -> None:
        if trainer.last is not None and trainer.last.student:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class CheckpointHook(Hook):
    """Writes ``last.pt`` atomically every ``every`` steps, at the end and on Ctrl-C.

    A state whose weights are not finite is never written: the run stops with
    :class:`~detbin.training.trainer.NonFiniteWeights` and the previous ``last.pt`` (the last
    finite one) stays, so a run that diverged can be continued from before it diverged.

    Args:
        path: where ``last.pt`` goes.
        make: builds the checkpoint dict from the trainer (model, recipe and trainer state).

    Attributes:
        saved_iteration: ``trainer.iteration`` of the state in ``path``, None until one is written.
    """

    def __init__(self, path: Path, every: int, make: Callable[[Trainer], dict[str, Any]]) -> None:
        self.path, self.every, self.make = Path(path), every, make
        self.saved_at = -1
        self.saved_iteration: int | None = None
        self.seconds = 0.0

    def save(self, trainer: Trainer) -> None:
        start = time.perf_counter()
        payload = self.make(trainer)
        bad = non_finite(payload.get("model", {}))
        if bad:
            self.saved_at = trainer.global_step  # after_train must not try again
            raise NonFiniteWeights(f"non-finite weights at iteration {trainer.iteration} ({len(bad)} tensor(s), first "
                                   f"{bad[0]}); not saved over {self.path}")
        save_atomic(payload, self.path)
        self.seconds = time.perf_counter() - start
        self.saved_at, self.saved_iteration = trainer.global_step, trainer.iteration

    def after_step(self, trainer: Trainer) -> None:
        if trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.saved_at != trainer.global_step and trainer.iteration >= trainer.max_iterations:
            self.save(trainer)


class EvalHook(Hook):
    """Evaluates every ``every`` iterations (0: only at the end) and keeps the best model.

    Args:
        evaluate: returns metrics, including ``metric`` (higher is better).
        on_best: called with the trainer and metrics when ``metric`` improves (writes best.pt).
        on_result: called with every result (logs it).
    """

    def __init__(self, every: int, metric: str, evaluate: Callable[[Trainer], dict[str, float]],
                 on_best: Callable[[Trainer, dict[str, float]], None] | None = None,
                 on_result: Callable[[Trainer, dict[str, float]], None] | None = None) -> None:
        self.every, self.metric, self.evaluate = every, metric, evaluate
        self.on_best, self.on_result = on_best, on_result
        self.best = -math.inf
        self.evaluated_at = -1
        self.history: list[dict[str, float]] = []

    def _run(self, trainer: Trainer) -> None:
        metrics = self.evaluate(trainer)
        trainer.student.model.train()
        self.evaluated_at = trainer.iteration
        self.history.append({"iteration": trainer.iteration, **metrics})
        if self.on_result:
            self.on_result(trainer, metrics)
        value = metrics.get(self.metric, -math.inf)
        if value == value and value > self.best:  # NaN never counts as best
            self.best = value
            if self.on_best:
                self.on_best(trainer, metrics)

    def after_step(self, trainer: Trainer) -> None:
        student_step = trainer.last is not None and trainer.last.student
        if self.every and student_step and trainer.iteration % self.every == 0 and trainer.iteration < trainer.max_iterations:
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.evaluated_at != trainer.iteration and trainer.iteration >= trainer.max_iterations:
            self._run(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = state["best"], list(state["history"])


class MetricsLogger(Hook):
    """Appends averaged losses, lr and timing to ``metrics.jsonl`` and ``results.csv``.

    One record every ``every`` steps (and at the end); evaluation results are added with
    :meth:`log_eval`. Each value is the mean over the steps that logged it (a phase's steps log
    other terms than the student's). JSONL lines carry every key; the CSV has the keys of its
    first row. Runs with phases also log ``global_step`` and ``phase``.
    """

    def __init__(self, jsonl: Path, csv_path: Path, every: int) -> None:
        self.jsonl, self.csv_path, self.every = Path(jsonl), Path(csv_path), every
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._count = 0
        self._seconds = 0.0
        self._pending_eval: dict[str, float] = {}

    def after_step(self, trainer: Trainer) -> None:
        last = trainer.last
        assert last is not None
        values = {**last.losses, **({"total": last.total} if last.student else {}), **last.extra}
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
        self._count += 1
        self._seconds += last.seconds
        if trainer.global_step % self.every == 0 or trainer.iteration == trainer.max_iterations:
            self.flush(trainer)

    def log_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._pending_eval.update(metrics)
        self._write({"iteration": trainer.iteration, "epoch": trainer.epoch, **metrics}, csv_row=False)

    def flush(self, trainer: Trainer) -> None:
        if not self._count:
            return
        phases = {"global_step": trainer.global_step, "phase": trainer.phase.name} if len(trainer.phases) > 1 else {}
        record = {"iteration": trainer.iteration, **phases, "epoch": trainer.epoch,
                  "lr": trainer.last.lr if trainer.last else 0.0,
                  **{k: v / self._counts[k] for k, v in self._sums.items()},
                  "seconds_per_iter": self._seconds / self._count, **self._pending_eval}
        self._write(record, csv_row=True)
        self._sums, self._counts, self._count, self._seconds, self._pending_eval = {}, {}, 0, 0.0, {}

    def _write(self, record: dict[str, Any], csv_row: bool) -> None:
        with self.jsonl.open("a") as handle:  # strict JSON: a NaN or infinite loss is written as null
            handle.write(jsonio.dumps(record) + "\n")
        if not csv_row:
            return
        new = not self.csv_path.exists()
        if new:
            fields = list(record)
        else:
            with self.csv_path.open(newline="") as existing:  # the header of the first row decides the columns
                fields = next(csv.reader(existing))
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)
