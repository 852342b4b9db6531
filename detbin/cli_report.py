"""``detbin eval``, ``detbin profile`` and ``detbin demo``: commands that report numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detbin.cli import DataOpt, JsonOpt, NoProgressOpt, app, err, handles_errors, interactive, out
from detbin.cli_commands import make_progress_hook
from detbin.errors import ConfigError

DATASETS = ("voc07", "voc12", "synthetic")


def _fmt_ap(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


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


def _eval_dataset(dataset: str, data: Path | None, split: str) -> tuple[Any, str]:
    """(dataset, metric) for ``--dataset``; ``synthetic`` without ``--data`` renders in memory."""
    from detbin.data import VocDetection
    from detbin.demo import TEST_IMAGES, TRAIN_IMAGES
    from detbin.synthetic import SyntheticDetection

    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset == "synthetic":
        if data is None:
            return SyntheticDetection(TEST_IMAGES, seed=0, offset=TRAIN_IMAGES), "voc07"
        return VocDetection(data, split), "voc07"
    if data is None:
        raise ConfigError(f"--dataset {dataset} needs --data PATH (a VOCdevkit folder; detbin never downloads)")
    return VocDetection(data, split, year="VOC2007" if dataset == "voc07" else "VOC2012"), dataset


@app.command("eval")
@handles_errors
def eval_command(
    model: Annotated[Path, typer.Argument(help="A detbin checkpoint or a torchvision state dict.")],
    dataset: Annotated[str, typer.Option(help="voc07 (11-point), voc12 (area) or synthetic.")] = "voc07",
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="Image set to score.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    max_images: Annotated[int | None, typer.Option(min=1, help="Score only the first N images.")] = None,
    as_json: JsonOpt = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Score a model with the VOC protocol (per-class AP and mAP)."""
    from detbin.build import build_evaluator, load_model, test_loader
    from detbin.evaluate import PROTOCOLS, run_evaluation

    detector, _ = load_model(model)
    source, metric = _eval_dataset(dataset, data, split)
    classes = tuple(source.classes)
    if detector.config.num_classes != len(classes) + 1:
        raise ConfigError(f"{model}: predicts {detector.config.num_classes - 1} classes but the data set has "
                          f"{len(classes)} ({', '.join(classes[:5])}...)")
    total = min(len(source), max_images or len(source))
    with eval_progress(total, no_progress or as_json) as progress:
        result = run_evaluation(detector, test_loader(source, batch_size), build_evaluator(metric, classes),
                                progress=progress, max_images=max_images)
    if as_json:
        out.print_json(json.dumps({"dataset": dataset, **result.to_dict()}))
        return
    table = Table(title=f"{model.name} on {dataset} ({result.num_images} images)", caption=PROTOCOLS[result.protocol])
    for column in ("class", "AP", "GT", "detections"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for name, c in result.per_class.items():
        table.add_row(name, _fmt_ap(c.ap), str(c.npos), str(c.ndet))
    table.add_row("[bold]mAP[/]", f"[bold]{_fmt_ap(result.mAP)}[/]", "", "")
    out.print(table)


def _profile_target(model: str, recipe: str | None, num_classes: int) -> Any:
    """A detector from a checkpoint or an architecture name, with a recipe's layout applied."""
    from detbin import plugins
    from detbin.build import load_model
    from detbin.detector import ARCHS, DetectorConfig, build_detector
    from detbin.layout import BinarizeSpec

    if Path(model).is_file():
        detector, _ = load_model(Path(model))
    elif model in ARCHS:
        detector = build_detector(DetectorConfig(arch=model, num_classes=num_classes))
    else:
        raise ConfigError(f"{model!r} is neither a checkpoint file nor an architecture ({', '.join(ARCHS)})")
    if recipe is not None:
        cls = plugins.load(recipe)
        cls().binarize(detector, BinarizeSpec.from_dict({**BinarizeSpec().to_dict(), **cls.layout}))
    return detector


@app.command("profile")
@handles_errors
def profile_command(
    model: Annotated[str, typer.Argument(help="A checkpoint, or an architecture name (e.g. fasterrcnn_resnet18_fpn).")],
    recipe: Annotated[str | None, typer.Option(help="Apply this recipe's binarization layout first.")] = None,
    image_size: Annotated[tuple[int, int] | None, typer.Option(help="Network input H W.")] = None,
    rois: Annotated[int, typer.Option(min=1, help="Proposals through a two-stage RoI head.")] = 1000,
    num_classes: Annotated[int, typer.Option(min=2, help="Classes incl. background, for architecture names.")] = 21,
    as_json: JsonOpt = False,
) -> None:
    """Count FLOPs (real MACs), BOPs (binary MACs), OPs = FLOPs + BOPs/64 and memory."""
    from detbin.profile import profile

    if image_size is not None and min(image_size) <= 0:
        raise ConfigError(f"--image-size {image_size[0]} {image_size[1]}: both sides must be positive")
    cost = profile(_profile_target(model, recipe, num_classes), image_size, rois)
    if as_json:
        out.print_json(json.dumps(cost.to_dict()))
        return
    table = Table(title=f"{model} at {cost.image_size[0]}x{cost.image_size[1]}"
                  + (f", {cost.rois} RoIs" if cost.rois else ""), caption="1 MAC = 1 FLOP; OPs = FLOPs + BOPs/64")
    for column in ("part", "FLOPs (G)", "BOPs (G)", "real params", "binary params"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for part, v in cost.by_part().items():
        table.add_row(part, f"{v['flops'] / 1e9:.3f}", f"{v['bops'] / 1e9:.3f}", f"{v['params_real']:,}",
                      f"{v['params_binary']:,}")
    table.add_row("[bold]total[/]", f"{cost.flops / 1e9:.3f}", f"{cost.bops / 1e9:.3f}", f"{cost.params_real:,}",
                  f"{cost.params_binary:,}")
    out.print(table)
    out.print(f"OPs {cost.ops / 1e9:.3f} G · memory {cost.memory_mb:.2f} MB (10^6 B) = {cost.memory_mib:.2f} MiB · "
              f"binary share of MACs {cost.binary_mac_share:.1%}")


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo keeps its data, runs and cache.")] = Path("runs/demo"),
    fresh: Annotated[bool, typer.Option(help="Ignore the cache and redo every stage.")] = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Make data, train a teacher, binarize it (reactnet), compare both: the whole story in one command."""
    from detbin.demo import run_demo

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
        table.add_row(row.name, _fmt_ap(row.map50), f"{c.params_real:,}", f"{c.params_binary:,}",
                      f"{c.memory_mb:.3f}", f"{c.flops / 1e6:.1f}", f"{c.bops / 1e6:.1f}", f"{c.ops / 1e6:.1f}",
                      f"{row.checkpoint}" + (" (cached)" if row.reused else ""))
    out.print(table)
    teacher, student = rows
    if not math.isnan(teacher.map50) and teacher.cost.memory_bits:
        out.print(f"student: {teacher.cost.memory_bits / student.cost.memory_bits:.1f}x smaller (ideal, packed), "
                  f"{teacher.cost.ops / student.cost.ops:.1f}x fewer OPs, mAP {student.map50 - teacher.map50:+.4f}")
