"""``detbin eval``: score a model, two models side by side, or saved detections.

The work happens in :mod:`detbin.app.scoring`; this module parses options and renders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detbin.cli.common import (DataOpt, DeviceOpt, ExistOkOpt, JsonOpt, NoProgressOpt, ProjectOpt, app, err, fmt_ap,
                        handles_errors, interactive, out)
from detbin.core import jsonio
from detbin.core.errors import ConfigError

EXAMPLES = """
Examples:

  detbin eval best.pt --dataset voc07 --data data/VOCdevkit

  detbin eval student.pt --compare teacher.pt --dataset synthetic --data data/synthetic

  detbin eval --detections runs/eval/exp/detections.json --dataset coco --data data/coco --split val2017
"""


@contextmanager
def eval_progress(total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A callback ``progress(done)``: a rich bar on a terminal, a line per 10% otherwise."""
    if quiet:
        yield lambda done: None
    elif interactive(False):
        with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("eval", total=total)
            yield lambda done: bar.update(task, completed=done)
    else:
        printed = [0]

        def line(done: int) -> None:
            decile = done * 10 // max(total, 1)
            if decile > printed[0]:
                printed[0] = decile
                err.print(f"eval: {done}/{total} images", soft_wrap=True)

        yield line


def _check_sources(model: Path | None, detections: Path | None, compare: Path | None) -> None:
    if model is None and detections is None:
        raise ConfigError("eval needs a MODEL file or --detections DETS (a COCO results JSON or a VOC results folder)")
    if model is not None and detections is not None:
        raise ConfigError(f"give MODEL ({model}) or --detections ({detections}), not both")
    if compare is not None and model is None:
        raise ConfigError("--compare OTHER.pt needs a MODEL to compare with")


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _render(report: dict[str, Any]) -> None:
    """The per-class table: one AP and detections column pair per model, protocol facts on top.

    Class names, file names, the split and the folder come from the user or the data: they are
    escaped, so ``[red]`` or ``[/old]`` in them prints as written instead of being read as markup.
    """
    runs = [report] + ([report["compare"]] if "compare" in report else [])
    table = Table(title=escape(f"{report['dataset']} {report['split']} ({report['num_images']} images)"),
                  caption=escape(f"run folder: {report['run_dir']}"))
    table.add_column("class")
    table.add_column("GT", justify="right")
    for run in runs:
        table.add_column(escape(f"AP {run['label']}"), justify="right")
        table.add_column("dets", justify="right")
    for name, first in report["per_class"].items():
        cells = [escape(name), str(first["npos"])]
        for run in runs:
            c = run["per_class"][name]
            cells += [fmt_ap(float("nan") if c["ap"] is None else c["ap"]), str(c["ndet"])]
        table.add_row(*cells)
    table.add_row("[bold]mAP[/]", "", *[cell for run in runs for cell in
                                        (f"[bold]{fmt_ap(float('nan') if run['mAP'] is None else run['mAP'])}[/]", "")])
    out.print(f"[bold]protocol {report['protocol']}[/]: {report['protocol_description']}", soft_wrap=True)
    out.print(table)
    for run in runs:
        if run["stats"]:
            stats = "  ".join(f"{key} {value:.4f}" for key, value in run["stats"].items())
            out.print(escape(f"{run['label']} ({run.get('backend', '')}): {stats}"), soft_wrap=True)


@app.command("eval", epilog=EXAMPLES)
@handles_errors
def eval_command(
    model: Annotated[Path | None, typer.Argument(help="A detbin checkpoint or a torchvision state dict.")] = None,
    dataset: Annotated[str, typer.Option(help="voc07 (11-point), voc12 (area), coco (AP@[.5:.95]) or "
                                              "synthetic.")] = "voc07",
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="Image set to score (COCO: e.g. val2017).")] = "test",
    annotations: Annotated[str | None, typer.Option(help="COCO instances JSON, if not "
                                                         "DATA/annotations/instances_SPLIT.json.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    max_images: Annotated[int | None, typer.Option(min=1, help="Score only the first N images.")] = None,
    detections: Annotated[Path | None, typer.Option(help="Score saved detections instead of a model: a COCO results "
                                                         "JSON or a folder of comp4_det_SPLIT_CLASS.txt files.")] = None,
    compare: Annotated[Path | None, typer.Option(help="A second model scored on the same images "
                                                      "(e.g. the teacher).")] = None,
    device: DeviceOpt = None,
    project: ProjectOpt = Path("runs"),
    name: Annotated[str, typer.Option("--name", help="Run folder name (auto-incremented if taken).")] = "exp",
    exist_ok: ExistOkOpt = False,
    allow_outside_root: Annotated[bool, typer.Option(
        "--allow-outside-root", help="Open image paths of the annotation files that lead outside --data "
                                     "(absolute, or with ..); refused by default.")] = False,
    as_json: JsonOpt = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Score a model (or saved detections) with the VOC or COCO protocol: per-class AP, mAP, PR curves."""
    from detbin.app import build, scoring
    from detbin.app.folders import check_writable
    from detbin.app.runner import next_run_dir

    _check_sources(model, detections, compare)
    folder = next_run_dir(project, "eval", name, exist_ok)
    check_writable(folder if folder.is_dir() else folder.parent, "the eval run folder (--project)")  # before inference
    source, metric = build.open_eval_dataset(dataset, data, split, annotations, allow_outside_root)
    count = min(len(source), max_images or len(source))
    if detections is not None:
        scored = [scoring.score_saved(detections, source, split, metric, count)]
    else:
        paths = [model] + ([compare] if compare is not None else [])
        with eval_progress(count, no_progress or as_json) as progress:
            scored = scoring.score_models(paths, source, metric, count, batch_size, _device(device), progress)
    report = {**scoring.report(dataset, split, data, scored, detections is None), "run_dir": str(folder)}
    scoring.write_run(folder, report, scored, scoring.image_index(source, split, 0))
    if as_json:
        out.print_json(jsonio.dumps(report))
    else:
        _render(report)
