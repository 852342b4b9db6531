"""One ``detbin eval`` as library calls: the data set by name, predictions, scores, run files.

:mod:`detbin.cli.evaluate` parses options and renders; everything a run computes and writes into
``runs/eval/<name>/`` comes from here:

* ``metrics.json``: the report (data set, protocol and its facts, mAP 0..1, the COCO stats,
  per-class AP, and the same for the ``--compare`` model);
* ``per_class.csv``: class, ground-truth count, then AP and detection count per model;
* ``detections.json`` (and ``detections_compare.json``): COCO results, re-scorable with
  ``detbin eval --detections``;
* ``pr_curve.png`` and ``pr_<class>.png``: precision-recall curves.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from detbin.app import build
from detbin.core import jsonio
from detbin.core.errors import ConfigError, DataError
from detbin.core.types import Detections, Target
from detbin.data.datasets import check_annotations
from detbin.evaluation import detections as saved
from detbin.evaluation.inference import exact_targets, predict_loader
from detbin.evaluation.metrics import PROTOCOLS, EvalResult
from detbin.models.detector import Detector

__all__ = ["Scored", "image_index", "ground_truth", "score", "score_saved", "check_images", "score_models", "report",
           "write_run"]


@dataclass(frozen=True)
class Scored:
    """One scored source: a column of the report."""

    label: str
    source: Path
    result: EvalResult
    detections: list[Detections]


def image_index(dataset: Dataset, split: str, count: int) -> saved.ImageIndex:
    """Image ids, stems and category ids of every image; sizes of the first ``count``."""
    n, classes = len(dataset), tuple(getattr(dataset, "classes"))  # type: ignore[arg-type]
    if hasattr(dataset, "image_id"):
        ids = tuple(dataset.image_id(i) for i in range(n))
        stems = tuple(dataset.stems)
    else:  # the in-memory synthetic set: ids and stems as `detbin data synthetic` writes them
        offset = getattr(dataset, "offset", 0)
        ids, stems = tuple(range(offset, offset + n)), tuple(f"{offset + i + 1:06d}" for i in range(n))
    if hasattr(dataset, "image_size"):
        sizes = tuple(dataset.image_size(i) for i in range(count))
    elif hasattr(dataset, "annotation"):
        sizes = tuple((dataset.annotation(i).height, dataset.annotation(i).width) for i in range(count))
    else:
        sizes = ()
    category_ids = tuple(getattr(dataset, "category_ids", range(1, len(classes) + 1)))
    return saved.ImageIndex(ids, stems, classes, category_ids, split, str(getattr(dataset, "root", "synthetic")), sizes)


def ground_truth(dataset: Dataset, count: int) -> list[Target]:
    """Targets of the first ``count`` images, without decoding images where the source can."""
    if hasattr(dataset, "target"):
        return [dataset.target(i) for i in range(count)]
    return [dataset[i][1] for i in range(count)]


def score(metric: str, classes: Sequence[str], targets: Sequence[Target], detections: Sequence[Detections],
          backend: str | None = None) -> EvalResult:
    """Score per-image detections with ``voc07``, ``voc12`` or ``coco``."""
    evaluator = build.build_evaluator(metric, classes, backend)
    evaluator.process(targets, detections)
    return evaluator.summarize()


def score_saved(path: Path, dataset: Dataset, split: str, metric: str, count: int) -> Scored:
    """Score a saved COCO results JSON or VOC devkit folder on the first ``count`` images."""
    detections = saved.read_detections(path, image_index(dataset, split, count))[:count]
    result = score(metric, getattr(dataset, "classes"), ground_truth(dataset, count), detections)
    return Scored(Path(path).name, Path(path), result, detections)


def check_images(dataset: Dataset, count: int) -> None:
    """Fail before any inference when images of a VOC-layout split are missing (COCO checks on opening).

    Raises:
        DataError: names how many are missing and the first one.
    """
    stems, root = getattr(dataset, "stems", None), getattr(dataset, "root", None)
    if stems is None or root is None or not (Path(root) / "JPEGImages").is_dir() or hasattr(dataset, "folder"):
        return
    missing = [s for s in stems[:count] if not (Path(root) / "JPEGImages" / f"{s}.jpg").is_file()]
    if missing:
        raise DataError(f"{root}/JPEGImages/{missing[0]}.jpg: image file is missing ({len(missing)} of the {count} "
                        f"images of split {getattr(dataset, 'split', '')!r}); the copy is incomplete, restore them")


def _load(path: Path, classes: Sequence[str], device: torch.device) -> Detector:
    detector, _ = build.load_model(path)
    if detector.config.num_classes != len(classes) + 1:
        raise ConfigError(f"{path}: predicts {detector.config.num_classes - 1} classes but the data set has "
                          f"{len(classes)} ({', '.join(classes[:5])}{'...' if len(classes) > 5 else ''})")
    return detector.to(device)


def _label(path: Path, depth: int) -> str:
    """``runs/binarize/reactnet/weights/best.pt`` -> ``reactnet (best.pt)``; ``depth`` more folders when asked."""
    path = Path(path)
    run = path.parent.name == "weights"
    if not run and depth == 0:
        return path.name
    parent = path.parent.parent if run else path.parent
    folders = [p.name for p in [parent, *parent.parents][: depth + int(run)] if p.name][::-1]
    return f"{'/'.join(folders)} ({path.name})" if folders else path.name


def labels(paths: Sequence[Path]) -> list[str]:
    """Distinct column titles for model files: the run folder's name and the file, more folders
    while two are alike (every detbin run stores ``.../weights/best.pt``), then ``#2``, ``#3``."""
    depth, found = 0, [_label(p, 0) for p in paths]
    while len(set(found)) < len(found) and depth < 8:
        depth += 1
        found = [_label(p, depth) for p in paths]
    return [name if found[:i].count(name) == 0 else f"{name} #{found[:i].count(name) + 1}"
            for i, name in enumerate(found)]


def score_models(paths: Sequence[Path], dataset: Dataset, metric: str, count: int, batch_size: int,
                 device: torch.device, progress: Callable[[int], None] | None = None) -> list[Scored]:
    """Run every model on the same first ``count`` images (each batch decoded once) and score each."""
    classes = tuple(getattr(dataset, "classes"))
    check_images(dataset, count)
    check_annotations(dataset, count)  # a malformed annotation fails before any image is predicted
    detectors = [_load(Path(p), classes, device) for p in paths]
    loader = build.test_loader(Subset(dataset, range(count)), batch_size)
    targets, outputs = predict_loader(detectors, loader, progress=progress)
    targets = exact_targets(loader, len(targets)) or targets
    return [Scored(label, Path(p), score(metric, classes, targets, out), out)
            for label, p, out in zip(labels(paths), paths, outputs)]


def _summary(scored: Scored, kind: str) -> dict[str, Any]:
    values = scored.result.to_dict()
    values["mAP"] = None if values["mAP"] != values["mAP"] else values["mAP"]  # NaN (no ground truth) is not JSON
    return {kind: str(scored.source), "label": scored.label, **values}


def report(dataset: str, split: str, data: Path | None, scored: Sequence[Scored], from_model: bool) -> dict[str, Any]:
    """The JSON report: the first source's numbers at the top, a ``--compare`` model under ``compare``."""
    kind = "model" if from_model else "detections"
    out = {"dataset": dataset, "split": split, "data": str(data) if data else None, **_summary(scored[0], kind)}
    out["protocol_description"] = PROTOCOLS[scored[0].result.protocol]
    if len(scored) > 1:
        out["compare"] = _summary(scored[1], kind)
    return out


def _write_csv(path: Path, scored: Sequence[Scored]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "npos", *[f"{c}[{s.label}]" for s in scored for c in ("ap", "ndet")]])
        for name, first in scored[0].result.per_class.items():
            row: list[Any] = [name, first.npos]
            for s in scored:
                c = s.result.per_class[name]
                row += ["" if c.ap != c.ap else f"{c.ap:.6f}", c.ndet]
            writer.writerow(row)


def write_run(folder: Path, report_: dict[str, Any], scored: Sequence[Scored], index: saved.ImageIndex) -> list[Path]:
    """Write ``metrics.json``, ``per_class.csv``, the detections and the PR curves into ``folder``."""
    from detbin.app.plots import plot_pr_curves

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(jsonio.dumps({**report_, "run_dir": str(folder)}, indent=2) + "\n")
    _write_csv(folder / "per_class.csv", scored)
    written = [folder / "metrics.json", folder / "per_class.csv"]
    for n, s in enumerate(scored):
        written.append(saved.write_coco_results(folder / ("detections.json" if n == 0 else "detections_compare.json"),
                                                s.detections, index))
    curves = {s.label: (s.result.mAP, {name: (c.recall, c.precision, c.ap) for name, c in s.result.per_class.items()})
              for s in scored}
    written += plot_pr_curves(curves, folder, scored[0].result.protocol)
    return written
