"""What a training run writes, and the hooks that write it (rank 0 only).

Run folder (Ultralytics style, ``runs/<verb>/<name>``)::

    args.yaml       run options (teacher, data, device ...) as given
    recipe.yaml     the resolved recipe file actually trained
    env.json        detbin / torch / torchvision versions, device, world size
    metrics.jsonl   one JSON object per logged interval and per evaluation
    results.csv     losses, lr, metrics per logged interval
    weights/last.pt student + recipe + optimizer/scheduler/RNG state (resume point)
    weights/best.pt student only (no teacher, no optimizer), best test metric (with a data.val split: the best on it)
    plots/results.png

The teacher is scored once at the start (``teacher/<metric>``).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from detbin import __version__
from detbin.models import checkpoint
from detbin.training import distributed
from detbin.config import RunConfig, dump
from detbin.models.detector import Detector
from detbin.training.hooks import CheckpointHook, EvalHook, MetricsLogger
from detbin.models.layout import BinarizeSpec
from detbin.training.recipe import Recipe
from detbin.training.hook import Hook
from detbin.training.trainer import Trainer

__all__ = ["Outputs", "SyncBuffers", "write_run_files", "student_payload"]


def student_payload(kind: str, student: Detector, spec: BinarizeSpec | None, recipe: Recipe,
             classes: tuple[str, ...], raw: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """A self-contained checkpoint of the student (plain values and tensors only)."""
    model = student.model
    return {
        "format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION, "detbin_version": __version__,
        "kind": kind, "detector": student.config.to_dict(), "binarize": spec.to_dict() if spec else None,
        "recipe": recipe.name or None, "recipe_params": recipe.params.model_dump(mode="json"),
        "classes": list(classes), "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "metrics": dict(metrics), "config": raw,
    }


def write_run_files(directory: Path, config: RunConfig, options: Any, ctx: distributed.Context,
                     device: torch.device) -> None:
    (directory / "weights").mkdir(parents=True, exist_ok=True)
    (directory / "plots").mkdir(exist_ok=True)
    (directory / "args.yaml").write_text(dump(options.to_dict()))
    (directory / "recipe.yaml").write_text(dump(config))
    env = {"detbin": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "cuda": torch.version.cuda, "world_size": ctx.world_size, "threads": torch.get_num_threads()}
    (directory / "env.json").write_text(json.dumps(env, indent=2) + "\n")


class _TeacherScore(Hook):
    """Scores the teacher once before training (not again on resume)."""

    def __init__(self, evaluate: Any, logger: MetricsLogger, result: dict[str, float]) -> None:
        self.evaluate, self.logger, self.result = evaluate, logger, result

    def before_train(self, trainer: Trainer) -> None:
        if trainer.teacher is None or self.result:
            return
        self.result.update({f"teacher/{k}": v for k, v in self.evaluate(trainer.teacher).items()})
        self.logger.log_eval(trainer, self.result)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.result}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.result.update(state["teacher"])


class _FinalTest(Hook):
    """With a validation split: the test split scores the final model once, after training."""

    def __init__(self, evaluate: Any, on_result: Any) -> None:
        self.evaluate, self.on_result = evaluate, on_result

    def after_train(self, trainer: Trainer) -> None:
        if trainer.iteration >= trainer.max_iterations:
            metrics = self.evaluate(trainer.student)
            trainer.student.model.train()
            self.on_result(trainer, metrics)


class SyncBuffers(Hook):
    """Ends a distributed run with rank 0's BatchNorm statistics on every rank."""

    def __init__(self, student: Detector) -> None:
        self.student = student

    def after_train(self, trainer: Trainer) -> None:
        distributed.broadcast_buffers(self.student.model)


@dataclass
class Outputs:
    """What rank 0 writes: run files, metrics logs, ``best.pt`` and ``last.pt``."""

    directory: Path
    kind: str
    student: Detector
    spec: BinarizeSpec | None
    recipe: Recipe
    classes: tuple[str, ...]
    raw: dict[str, Any]
    final: dict[str, float] = field(default_factory=dict)
    teacher_metrics: dict[str, float] = field(default_factory=dict)

    def payload(self, metrics: dict[str, float]) -> dict[str, Any]:
        return student_payload(self.kind, self.student, self.spec, self.recipe, self.classes, self.raw,
                        {**metrics, **self.teacher_metrics})

    def save_best(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        checkpoint.save_atomic(self.payload(metrics), self.directory / "weights" / "best.pt")

    def make_last(self, trainer: Trainer) -> dict[str, Any]:
        return {**self.payload(self.final), "recipe_state": self.recipe.state_dict(), "trainer": trainer.state_dict()}

    def hooks(self, config: RunConfig, evaluate: Any, extra: list[Hook], validate: Any = None) -> list[Hook]:
        """The run's hooks; with ``validate`` (a ``data.val`` split) the periodic evaluations and
        the choice of ``best.pt`` use it, and ``evaluate`` (the test split) scores the final model."""
        logger = MetricsLogger(self.directory / "metrics.jsonl", self.directory / "results.csv", config.train.log_every)

        def on_result(trainer: Trainer, metrics: dict[str, float]) -> None:
            self.final.clear()
            self.final.update(metrics)
            logger.log_eval(trainer, metrics)

        def save_best_on_val(trainer: Trainer, metrics: dict[str, float]) -> None:
            self.save_best(trainer, {**metrics, "val/iteration": float(trainer.iteration)})

        if validate is None:
            evaluation: Hook = EvalHook(config.eval.every, evaluate.key, lambda t: evaluate(t.student), self.save_best,
                                        on_result)
            final: list[Hook] = []
        else:
            evaluation = EvalHook(config.eval.every, validate.key, lambda t: validate(t.student), save_best_on_val,
                                  logger.log_eval)
            final = [_FinalTest(evaluate, on_result)]
        return [
            _TeacherScore(evaluate, logger, self.teacher_metrics),
            evaluation,
            *final,
            logger,
            CheckpointHook(self.directory / "weights" / "last.pt", config.train.checkpoint_every, self.make_last),
            *extra,
        ]
