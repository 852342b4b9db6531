"""A training run end to end: teacher, student, recipe, trainer, resume, DDP.

:func:`run` builds everything from a validated config in the order of :mod:`detbin.app.build`,
trains, and returns the result; :mod:`detbin.app.run_files` writes the run folder (rank 0 only).

What is checked before any long work (the teacher's first evaluation, training): the output
folder can be written, the training split fills one batch, every annotation of both splits
parses, and the disk has room for the student's weights (:mod:`detbin.app.folders`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detbin.app import build
from detbin.app.build.data import check_train_split
from detbin.app.folders import check_writable, prepare_run_folder
from detbin.app.run_files import Outputs, SyncBuffers, write_run_files
from detbin.config import RunConfig, read_yaml, validate
from detbin.core.errors import ConfigError
from detbin.data.datasets import check_annotations
from detbin.models import checkpoint
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec
from detbin.training import distributed
from detbin.training.hook import Hook
from detbin.training.hooks import CheckpointHook, ScheduleHook
from detbin.training.recipe import Recipe
from detbin.training.trainer import NonFiniteLoss, Trainer

__all__ = ["RunOptions", "RunResult", "run", "resume_options", "next_run_dir"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run a config: where to write, which teacher and data, which device."""

    verb: str = "binarize"
    project: Path = Path("runs")
    name: str | None = None
    exist_ok: bool = False
    data: Path | None = None
    teacher: Path | None = None
    teacher_arch: str | None = None
    device: str | None = None
    resume: Path | None = None
    directory: Path | None = None
    source: str = "<recipe>"
    overrides: list[str] = field(default_factory=list)  # the --set values, recorded for the reader
    hooks: list[Hook] = field(default_factory=list)
    teacher_metrics: dict[str, float] = field(default_factory=dict)  # known scores: the teacher is not re-scored

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.verb, "project": str(self.project), "name": self.name, "data": _str(self.data),
                "teacher": _str(self.teacher), "teacher_arch": self.teacher_arch, "device": self.device,
                "source": self.source, "set": list(self.overrides)}


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass
class RunResult:
    """What a finished run produced."""

    directory: Path | None
    metrics: dict[str, float]
    teacher_metrics: dict[str, float]
    binarized: list[str]
    iterations: int
    seconds: float
    classes: tuple[str, ...]
    student: Detector | None = None


def next_run_dir(project: Path, verb: str, name: str, exist_ok: bool) -> Path:
    """``project/verb/name``, or ``name2``, ``name3``... when it exists (unless ``exist_ok``)."""
    base = Path(project) / verb / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (base.parent / f"{name}{n}").exists():
        n += 1
    return base.parent / f"{name}{n}"


def _check_resume_recipe(directory: Path, declared: Any, typed: str | None) -> None:
    """A module reference in a run folder's recipe.yaml is imported only if the user typed it (``--recipe``)."""
    source = directory / "recipe.yaml"
    if typed is not None and typed != declared:
        raise ConfigError(f"{source}: the run was trained with recipe {declared!r}, not --recipe {typed}; "
                          "resume without --recipe (or with the same one)")
    if isinstance(declared, str) and ":" in declared and typed != declared:
        raise ConfigError(f"{source}: recipe {declared!r} is a module reference, not an installed recipe; detbin "
                          "imports a module named in a file only when you type it: add --recipe "
                          f"{declared} to resume it, if you trust that module")


def resume_options(directory: Path, recipe: str | None = None) -> tuple[RunConfig, dict[str, Any], RunOptions]:
    """The config and options of an existing run folder, to continue it from ``last.pt``.

    Args:
        recipe: the ``--recipe`` the user typed with ``--resume``, if any. A ``module:Class``
            recipe in the folder's recipe.yaml is refused unless it is exactly this.

    Raises:
        ConfigError: not a run folder, or a recipe reference the user did not type.
    """
    directory = Path(directory)
    for required in ("recipe.yaml", "args.yaml", "weights/last.pt"):
        if not (directory / required).is_file():
            raise ConfigError(f"{directory}: cannot resume, {required} is missing (is it a detbin run folder?)")
    raw = read_yaml(directory / "recipe.yaml")
    _check_resume_recipe(directory, raw.get("recipe"), recipe)
    args = read_yaml(directory / "args.yaml")
    options = RunOptions(verb=args["verb"], project=directory.parent.parent, name=directory.name, exist_ok=True,
                         data=Path(args["data"]) if args.get("data") else None,
                         teacher=Path(args["teacher"]) if args.get("teacher") else None,
                         teacher_arch=args.get("teacher_arch"), device=args.get("device"), resume=directory,
                         source=str(directory / "recipe.yaml"), overrides=list(args.get("set") or []))
    return validate(raw, options.source), raw, options


def run(config: RunConfig, raw: dict[str, Any], options: RunOptions) -> RunResult:
    """Build everything from ``config`` and train; resumes when ``options.resume`` is set."""
    ctx, device = distributed.setup(options.device)
    try:
        return _run(config, raw, options, ctx, device)
    finally:
        distributed.teardown()


def _effective(config: RunConfig, student: Detector, spec: BinarizeSpec | None, source: str) -> RunConfig:
    """The config with the detector and layout actually built, so recipe.yaml rebuilds them exactly."""
    effective = {**config.model_dump(mode="json"), "detector": student.config.to_dict()}
    if spec is not None:
        effective["binarize"] = spec.to_dict()
    return validate(effective, source)


def _place(student: Detector, teacher: Detector | None, recipe: Recipe,
           ctx: distributed.Context, device: torch.device) -> None:
    """Move everything to the device; wrap the student in DDP when distributed."""
    for module in (student, teacher, recipe):
        if module is not None:
            module.to(device)
    if ctx.distributed:
        student.forward_module = distributed.wrap(student.model, device)


def _non_finite_note(hooks: list[Hook], directory: Path) -> str:
    saver = next((h for h in hooks if isinstance(h, CheckpointHook)), None)
    if saver is None:
        return ""
    if saver.saved_iteration is None:
        return "; no weights/last.pt was written (the weights were never finite at a checkpoint)"
    return (f"; {directory / 'weights' / 'last.pt'} keeps iteration {saver.saved_iteration}, the last with finite "
            "weights (lower train.optimizer.lr or set train.clip_grad, then train again)")


def _run(config: RunConfig, raw: dict[str, Any], options: RunOptions, ctx: distributed.Context,
         device: torch.device) -> RunResult:
    torch.manual_seed(config.train.seed)
    if ctx.is_main:  # the output folder first: an unwritable --project fails before any long work
        check_writable(Path(options.resume or options.directory or Path(options.project) / options.verb),
                       "the run folder (--project)")
    recipe = build.build_recipe(config, options.source)
    train_set = build.build_dataset(config.data.train, options.data)
    test_set = build.build_dataset(config.data.test, options.data)
    val_set = build.build_dataset(config.data.val, options.data) if config.data.val is not None else None
    check_train_split(train_set, config, ctx.world_size, options.source)
    check_annotations(train_set)
    check_annotations(test_set, config.eval.max_images)
    if val_set is not None:
        check_annotations(val_set, config.eval.max_images)
    classes = build.dataset_classes(train_set)
    models = build.build_models(config, recipe, classes, options.verb, options.teacher, options.teacher_arch,
                                options.source)
    student, teacher, binarized, spec = models.student, models.teacher, models.binarized, models.spec
    config = _effective(config, student, spec, options.source)
    recipe.prepare(student, teacher)
    _place(student, teacher, recipe, ctx, device)
    optimizer = build.build_optimizer(recipe.param_groups(student), config.train.optimizer)
    plan = build.plan_iterations(config, len(train_set), ctx.world_size)
    scheduler = build.build_scheduler(optimizer, config.train.schedule, plan.max_iterations, plan.iters_per_epoch)
    name = options.name or (config.recipe or student.config.arch)
    directory = Path(options.resume or options.directory or next_run_dir(options.project, options.verb, name,
                                                                         options.exist_ok))
    outputs = Outputs(directory, "teacher" if options.verb == "train" else "student", student, spec, recipe,
                       classes, config.model_dump(mode="json"))
    outputs.teacher_metrics.update(options.teacher_metrics)
    hooks: list[Hook] = [ScheduleHook(scheduler), *recipe.hooks(), *([SyncBuffers(student)] if ctx.distributed else [])]
    if ctx.is_main:
        prepare_run_folder(directory, student, fresh=not options.resume)
        if not options.resume:
            write_run_files(directory, config, options, ctx, device)
        validate = build.Evaluation(config, val_set, classes, prefix="val/") if val_set is not None else None
        hooks += outputs.hooks(config, build.Evaluation(config, test_set, classes), options.hooks, validate)
    trainer = Trainer(student, recipe, build.train_loader(train_set, config, ctx.rank, ctx.world_size), optimizer,
                      plan.max_iterations, teacher=teacher, hooks=hooks, clip_grad=config.train.clip_grad,
                      amp=config.train.amp, device=device, milestones=plan.milestones, phases=recipe.phases(plan),
                      **_syncs(recipe, optimizer, ctx))
    if options.resume:
        _restore(trainer, student, recipe, directory)
    start = time.perf_counter()
    try:
        trainer.train()
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(f"{exc}{_non_finite_note(hooks, directory)}") from None
    if ctx.is_main:
        from detbin.app.plots import plot_results

        plot_results(directory / "metrics.jsonl", directory / "plots" / "results.png")
    return RunResult(directory if ctx.is_main else None, dict(outputs.final), dict(outputs.teacher_metrics),
                     binarized, trainer.iteration, time.perf_counter() - start, classes, student)


def _syncs(recipe: Recipe, optimizer: torch.optim.Optimizer, ctx: distributed.Context) -> dict[str, Any]:
    """Gradient averaging of what DDP does not cover: the recipe's parameters in the student's
    optimizer (after every student backward), and those of its own optimizers (``Step.sync``)."""
    if not ctx.distributed:
        return {}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    student_side = [p for p in recipe.parameters() if id(p) in in_optimizer]
    return {"grad_sync": lambda: distributed.all_reduce_grads(student_side, ctx.world_size),
            "sync": lambda parameters: distributed.all_reduce_grads(parameters, ctx.world_size)}


def _restore(trainer: Trainer, student: Detector, recipe: Recipe, directory: Path) -> None:
    """Load ``last.pt`` into the rebuilt student, recipe and trainer (every rank reads it)."""
    state = checkpoint.read(directory / "weights" / "last.pt")
    checkpoint.load_state(student, state["model"], str(directory / "weights" / "last.pt"))
    recipe.load_state_dict(state["recipe_state"])
    trainer.load_state_dict(state["trainer"])
