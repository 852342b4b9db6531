"""``detbin train`` and ``binarize``: the commands that train (``demo`` is :mod:`detbin.cli.demo`).

Each command parses options, calls the library, and renders the result; heavy imports happen
inside the command bodies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from detbin.cli.common import (DataOpt, DeviceOpt, ExistOkOpt, NameOpt, NoProgressOpt, ProjectOpt, SetOpt, app, err,
                               handles_errors, out)
from detbin.cli.progress import make_progress_hook
from detbin.core.errors import ConfigError

log = logging.getLogger("detbin")

ResumeOpt = Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from weights/last.pt.")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="Recipe file: a path, or a shipped variant name "
                                               "(see `detbin recipes show NAME`).")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture, when a state dict's cannot be inferred.")]


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


def _recipe_file(config: str | None, recipe: str, device: str | None) -> Path:
    """``--config`` as given, or the shipped file that suits this machine, said in one line."""
    from detbin import config as cfg

    if config is not None:
        return cfg.find_recipe_file(config, recipe)
    import torch

    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    path, why = cfg.default_recipe_file(recipe, cuda)
    err.print(Text(f"no --config: using {path} ({why})"), soft_wrap=True)
    return path


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
        path = _recipe_file(config, "teacher", device)
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
        path = _recipe_file(config, recipe.split(":")[-1].lower(), device)
        run_config, raw = cfg.load(path, [f"recipe={recipe}", *(set_ or [])])
        options = _run_options("binarize", project=project, name=name, exist_ok=exist_ok, data=data, device=device,
                               teacher=teacher, teacher_arch=arch, source=str(path), overrides=list(set_ or []))
    options.hooks = [make_progress_hook(f"binarize {run_config.recipe}", no_progress)]
    _summary(run(run_config, raw, options), f"1-bit student ({run_config.recipe})")
