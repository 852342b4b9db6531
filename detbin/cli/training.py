"""``detbin train``, ``binarize`` and ``demo``: the commands that train.

Each command parses options, calls the library, and renders the result; heavy imports happen
inside the command bodies.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from detbin.cli.common import (DataOpt, DeviceOpt, ExistOkOpt, NameOpt, NoProgressOpt, ProjectOpt, SetOpt, app, err, fmt_ap,
                        handles_errors, interactive, out)
from detbin.core.errors import ConfigError

log = logging.getLogger("detbin")

ResumeOpt = Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from weights/last.pt.")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="Recipe file: a path, or a shipped variant name "
                                               "(see `detbin recipes show NAME`).")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture, when a state dict's cannot be inferred.")]


def make_progress_hook(title: str, no_progress: bool) -> Any:
    """A trainer hook showing a rich bar on a terminal, or a plain line every log interval."""
    from detbin.training.hook import Hook

    class ProgressHook(Hook):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task: Any = None
            self.started = time.perf_counter()

        def before_train(self, trainer: Any) -> None:
            self.started = time.perf_counter()
            if interactive(no_progress):
                self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=err, transient=False)
                self.bar.start()
                self.task = self.bar.add_task(title, total=trainer.max_iterations, completed=trainer.iteration,
                                              status="")

        def after_step(self, trainer: Any) -> None:
            last = trainer.last
            status = f"loss {last.total:.3f} lr {last.lr:.2e} {last.seconds:.2f}s/it"
            if self.bar is not None:
                self.bar.update(self.task, completed=trainer.iteration, status=status)
            elif trainer.iteration % 20 == 0 or trainer.iteration == trainer.max_iterations:
                elapsed = time.perf_counter() - self.started
                err.print(f"{title}: iteration {trainer.iteration}/{trainer.max_iterations} {status} "
                          f"(elapsed {elapsed:.0f}s)", soft_wrap=True)

        def after_train(self, trainer: Any) -> None:
            if self.bar is not None:
                self.bar.stop()

    return ProgressHook()


def _run_options(verb: str, **values: Any) -> Any:
    from detbin.app.runner import RunOptions

    return RunOptions(verb=verb, **values)


def _summary(result: Any, title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_row("run folder", Text(str(result.directory)))  # a path is text, never markup
    for key, value in {**result.teacher_metrics, **result.metrics}.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("iterations", str(result.iterations))
    table.add_row("training time", f"{result.seconds:.0f} s")
    if result.binarized:
        table.add_row("binary convs", str(len(result.binarized)))
    out.print(table)


@app.command()
@handles_errors
def train(
    config: ConfigOpt = None, arch: ArchOpt = None, data: DataOpt = None, set_: SetOpt = None,
    project: ProjectOpt = Path("runs"), name: NameOpt = None, exist_ok: ExistOkOpt = False,
    device: DeviceOpt = None, resume: ResumeOpt = None, no_progress: NoProgressOpt = False,
) -> None:
    """Train a real-valued teacher.

    Example: detbin train --config tiny_synthetic --data data/synthetic
    """
    from detbin import config as cfg
    from detbin.app.runner import resume_options, run

    if resume is not None:
        run_config, raw, options = resume_options(resume)
    else:
        path = cfg.find_recipe_file(config, "teacher")
        overrides = list(set_ or []) + ([f"detector.arch={arch}"] if arch else [])
        run_config, raw = cfg.load(path, overrides)
        if run_config.recipe is not None:
            raise ConfigError(f"{path}: recipe: {run_config.recipe} is a binarization recipe; use `detbin binarize`")
        options = _run_options("train", project=project, name=name, exist_ok=exist_ok, data=data, device=device,
                               source=str(path), overrides=overrides)
    options.hooks = [make_progress_hook(f"train {options.name or run_config.detector.arch if run_config.detector else ''}",
                                        no_progress)]
    _summary(run(run_config, raw, options), "real-valued training")


@app.command()
@handles_errors
def binarize(
    recipe: Annotated[str | None, typer.Option("--recipe", help="Recipe name (`detbin recipes`) or module:Class.")] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="Real-valued teacher: detbin checkpoint or "
                                                 "torchvision state dict.")] = None,
    config: ConfigOpt = None, arch: ArchOpt = None, data: DataOpt = None, set_: SetOpt = None,
    project: ProjectOpt = Path("runs"), name: NameOpt = None, exist_ok: ExistOkOpt = False,
    device: DeviceOpt = None, resume: ResumeOpt = None, no_progress: NoProgressOpt = False,
) -> None:
    """Train a 1-bit student from a real-valued teacher with a recipe.

    Example: detbin binarize --recipe ida-det --teacher r50.pt --data data/VOCdevkit
    """
    from detbin import config as cfg
    from detbin.training import plugins
    from detbin.app.runner import resume_options, run

    if resume is not None:
        run_config, raw, options = resume_options(resume, recipe)  # a module:Class in the folder needs --recipe typed
    else:
        if recipe is None:
            raise ConfigError("binarize needs --recipe NAME (see `detbin recipes`) or --resume RUN_FOLDER")
        plugins.load(recipe)  # fail early, with close names, before reading files
        path = cfg.find_recipe_file(config, recipe.split(":")[-1].lower())
        run_config, raw = cfg.load(path, [f"recipe={recipe}", *(set_ or [])])
        options = _run_options("binarize", project=project, name=name, exist_ok=exist_ok, data=data, device=device,
                               teacher=teacher, teacher_arch=arch, source=str(path), overrides=list(set_ or []))
    options.hooks = [make_progress_hook(f"binarize {run_config.recipe}", no_progress)]
    _summary(run(run_config, raw, options), f"1-bit student ({run_config.recipe})")


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo keeps its data, runs and cache.")] = Path("runs/demo"),
    fresh: Annotated[bool, typer.Option(help="Ignore the cache and redo every stage.")] = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Make data, train a teacher, binarize it (reactnet), compare both: the whole story in one command."""
    from detbin.app.demo import run_demo

    rows = run_demo(out_dir, lambda title: [make_progress_hook(title, no_progress)],
                    lambda text: err.print(f"[dim]{text}[/]", soft_wrap=True), fresh)
    table = Table(title="detbin demo: synthetic test split (500 images), tiny Faster R-CNN R18-FPN",
                  caption="mAP: VOC07 11-point; memory: 32 bit/real param + 1 bit/binary weight; "
                          "OPs = FLOPs + BOPs/64 at 128x128 with 150 RoIs; binary convs simulated in float here")
    for column in ("model", "VOC07 mAP", "real params", "binary params", "memory (MB)", "FLOPs (M)", "BOPs (M)",
                   "OPs (M)", "checkpoint"):
        table.add_column(column, justify="left" if column in ("model", "checkpoint") else "right")
    for row in rows:
        c = row.cost
        table.add_row(row.name, fmt_ap(row.map50), f"{c.params_real:,}", f"{c.params_binary:,}",
                      f"{c.memory_mb:.3f}", f"{c.flops / 1e6:.1f}", f"{c.bops / 1e6:.1f}", f"{c.ops / 1e6:.1f}",
                      f"{row.checkpoint}" + (" (cached)" if row.reused else ""))
    out.print(table)
    teacher, student = rows
    if not math.isnan(teacher.map50) and teacher.cost.memory_bits:
        out.print(f"student: {teacher.cost.memory_bits / student.cost.memory_bits:.1f}x smaller (ideal, packed), "
                  f"{teacher.cost.ops / student.cost.ops:.1f}x fewer OPs, mAP {student.map50 - teacher.map50:+.4f}")
