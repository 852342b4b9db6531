"""``detbin demo``: the whole story on the embedded synthetic benchmark, cached and resumable.

Four stages under one folder (default ``runs/demo``):

1. ``data/``: the synthetic set (2000 trainval + 500 test images, seed 0);
2. ``teacher/``: the tiny real-valued Faster R-CNN R18-FPN (``recipes/teacher/tiny_synthetic.yaml``
   with :data:`DEMO_SETTINGS`);
3. ``student/``: its ``reactnet`` 1-bit student (``recipes/reactnet/tiny_synthetic.yaml``; the
   student copies the teacher's detector, so the same settings);
4. the comparison: VOC07 mAP on the test split, parameters, memory and OPs of both.

A stage folder carries ``demo_stamp.json`` (the resolved config it was made from, and whether it
finished). A finished stage with the same config is reused; an unfinished one (Ctrl-C, a kill)
resumes from its ``weights/last.pt``. ``--fresh`` removes only what the demo wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detbin import config as cfg
from detbin.app import build
from detbin.app.runner import RunOptions, resume_options, run
from detbin.core.errors import DataError
from detbin.cost.profile import Cost, profile
from detbin.data.synthetic import BENCHMARK_TEST, BENCHMARK_TRAIN, write_dataset

__all__ = ["DemoRow", "DemoResult", "STAGES", "STUDENT_RECIPE", "DEMO_SETTINGS", "run_demo", "clean"]

STUDENT_RECIPE = "reactnet"
TRAIN_IMAGES, TEST_IMAGES = BENCHMARK_TRAIN, BENCHMARK_TEST
STAGES = ("data", "teacher", "student", "compare")
STAMP = "demo_stamp.json"
# 64 sampled RoIs per image instead of the recipe file's 128: RoIAlign's backward and forward were
# 42% of a training step on two cores (torch.profiler), and halving the RoIs took the teacher's step
# from 0.58 to 0.33 s and the whole demo from ~15 to 9.3 minutes, with the teacher at 0.635 and the
# student at 0.472 VOC07 mAP (0.668 / 0.541 with 128). The benchmark scripts keep the recipe files.
DEMO_SETTINGS = {"teacher": ["detector.box_batch_size_per_image=64"]}


@dataclass(frozen=True)
class DemoRow:
    """One model of the comparison."""

    name: str
    checkpoint: Path
    map50: float
    cost: Cost
    reused: bool


@dataclass
class DemoResult:
    """Both rows and the wall time of each stage (seconds; ``reused`` stages cost almost nothing)."""

    rows: list[DemoRow]
    seconds: dict[str, float] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def clean(root: Path) -> list[Path]:
    """Remove what the demo wrote under ``root``: its stage folders and its data set; nothing else.

    A stage folder counts as the demo's when it carries ``demo_stamp.json``; the data folder
    when it carries the synthetic set's manifest. Other files and folders stay.

    Returns:
        The folders removed.
    """
    root, removed = Path(root), []
    for name in ("teacher", "student"):
        if _read_stamp(root / name) is not None:
            shutil.rmtree(root / name)
            removed.append(root / name)
    if (root / "data" / "detbin_synthetic.json").is_file():
        shutil.rmtree(root / "data")
        removed.append(root / "data")
    return removed


def _stage(root: Path, name: str, verb: str, recipe_file: Path, overrides: list[str], data: Path,
           teacher: Path | None, hooks: list[Any], teacher_metrics: dict[str, float]) -> tuple[Path, bool]:
    """Train one stage into ``root/name``: reuse it when finished, resume it when interrupted."""
    config, _ = cfg.load(recipe_file, overrides)
    folder = root / name
    best = folder / "weights" / "best.pt"
    key = {"config": config.model_dump(mode="json"), "teacher": _sha256(teacher) if teacher else None}
    stamp = _read_stamp(folder)
    if stamp is not None and stamp.get("key") == key and stamp.get("complete") and best.is_file():
        return best, True
    if stamp is not None and stamp.get("key") == key and (folder / "weights" / "last.pt").is_file():
        config, raw, options = resume_options(folder)  # an interrupted stage continues where it stopped
        options.hooks = hooks
    else:
        if folder.exists() and stamp is None:
            raise DataError(f"{folder}: exists and was not written by detbin demo; move it or choose another --out")
        if folder.exists():
            shutil.rmtree(folder)  # a stage the demo made from another config (its own output)
        folder.mkdir(parents=True)
        (folder / STAMP).write_text(json.dumps({"key": key, "complete": False}))
        raw = config.model_dump(mode="json")
        options = RunOptions(verb=verb, directory=folder, data=data, teacher=teacher, source=str(recipe_file),
                             hooks=hooks, teacher_metrics=teacher_metrics)
    run(config, raw, options)
    (folder / STAMP).write_text(json.dumps({"key": key, "complete": True}))
    return best, False


def _row(name: str, path: Path, reused: bool) -> DemoRow:
    detector, meta = build.load_model(path)
    image_size = tuple(meta["config"]["profile"]["image_size_hw"])
    cost = profile(detector, image_size, meta["config"]["profile"]["rois"])  # type: ignore[arg-type]
    return DemoRow(name, path, float(meta["metrics"].get("voc07/mAP50", float("nan"))), cost, reused)


def run_demo(root: Path, hooks_for: Callable[[str], list[Any]], status: Callable[[str], None],
             fresh: bool = False, overrides: dict[str, list[str]] | None = None,
             images: tuple[int, int] = (TRAIN_IMAGES, TEST_IMAGES)) -> DemoResult:
    """Run (or reuse, or resume) every stage under ``root``.

    Args:
        hooks_for: trainer hooks for a stage, given its title (``"[2/4] teacher (real-valued)"``).
        status: receives one line per stage.
        fresh: remove what an earlier demo wrote first (:func:`clean`).
        overrides: ``--set`` values per stage (``"teacher"``, ``"student"``).
        images: trainval and test images of the synthetic set (smaller in tests).
    """
    root, overrides = Path(root), overrides or {}
    if fresh:
        for path in clean(root):
            status(f"--fresh: removed {path}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    status(f"[1/4] synthetic data: {images[0]} trainval + {images[1]} test images in {root / 'data'}")
    data = write_dataset(root / "data", images[0], images[1], seed=0)
    seconds["data"] = time.perf_counter() - start
    files = cfg.recipes_dir()
    start = time.perf_counter()
    teacher, teacher_reused = _stage(root, "teacher", "train", files / "teacher" / "tiny_synthetic.yaml",
                                     [*DEMO_SETTINGS["teacher"], *overrides.get("teacher", [])], data, None,
                                     hooks_for("[2/4] teacher (real-valued)"), {})
    seconds["teacher"] = time.perf_counter() - start
    start = time.perf_counter()
    # the teacher was scored on this very test split when it finished: its student need not score it again
    scored = {f"teacher/{k}": v for k, v in build.load_model(teacher)[1].get("metrics", {}).items()}
    student, student_reused = _stage(root, "student", "binarize", files / STUDENT_RECIPE / "tiny_synthetic.yaml",
                                     overrides.get("student", []), data, teacher,
                                     hooks_for(f"[3/4] student ({STUDENT_RECIPE})"), scored)
    seconds["student"] = time.perf_counter() - start
    start = time.perf_counter()
    status("[4/4] comparing both: VOC07 mAP from their checkpoints, cost by detbin.profile")
    rows = [_row("teacher (32-bit)", teacher, teacher_reused),
            _row(f"student (1-bit, {STUDENT_RECIPE})", student, student_reused)]
    seconds["compare"] = time.perf_counter() - start
    return DemoResult(rows, seconds)
