"""``detbin demo``: the whole story on the embedded synthetic benchmark, cached.

1. write the synthetic set (2000 trainval + 500 test images, seed 0);
2. train the tiny real-valued Faster R-CNN R18-FPN teacher (``recipes/teacher/tiny_synthetic.yaml``);
3. binarize it with ``reactnet`` (``recipes/reactnet/tiny_synthetic.yaml``);
4. compare both: VOC07 mAP on the test split, parameters, memory and OPs.

Each stage is skipped when its output exists and was made from the same resolved config
(and, for the student, the same teacher file), so a second ``detbin demo`` only prints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detbin.app import build
from detbin import config as cfg
from detbin.cost.profile import Cost, profile
from detbin.app.runner import RunOptions, run
from detbin.data.synthetic import BENCHMARK_TEST, BENCHMARK_TRAIN, write_dataset

__all__ = ["DemoRow", "run_demo", "STUDENT_RECIPE"]

STUDENT_RECIPE = "reactnet"
TRAIN_IMAGES, TEST_IMAGES = BENCHMARK_TRAIN, BENCHMARK_TEST


@dataclass(frozen=True)
class DemoRow:
    """One model of the comparison."""

    name: str
    checkpoint: Path
    map50: float
    cost: Cost
    reused: bool


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage(root: Path, name: str, verb: str, recipe_file: Path, overrides: list[str], data: Path,
           teacher: Path | None, hooks: list[Any]) -> tuple[Path, bool]:
    """Train one stage into ``root/name`` unless an identical result is cached there."""
    config, _ = cfg.load(recipe_file, overrides)
    best = root / name / "weights" / "best.pt"
    stamp = root / name / "demo_stamp.json"
    key = {"config": config.model_dump(mode="json"), "teacher": _sha256(teacher) if teacher else None}
    if best.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return best, True
    shutil.rmtree(root / name, ignore_errors=True)  # a stale demo stage (detbin's own output)
    options = RunOptions(verb=verb, directory=root / name, data=data, teacher=teacher, source=str(recipe_file),
                         hooks=hooks)
    run(config, config.model_dump(mode="json"), options)
    stamp.write_text(json.dumps(key))
    return best, False


def run_demo(root: Path, hooks_for: Callable[[str], list[Any]], status: Callable[[str], None],
             fresh: bool = False) -> list[DemoRow]:
    """Run (or reuse) every stage under ``root`` and return the teacher and student rows."""
    root = Path(root)
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
    status(f"synthetic data: {TRAIN_IMAGES} trainval + {TEST_IMAGES} test images in {root / 'data'}")
    data = write_dataset(root / "data", TRAIN_IMAGES, TEST_IMAGES, seed=0)
    files = cfg.recipes_dir()
    teacher, teacher_reused = _stage(root, "teacher", "train", files / "teacher" / "tiny_synthetic.yaml", [], data,
                                     None, hooks_for("teacher (real-valued)"))
    student, student_reused = _stage(root, "student", "binarize", files / STUDENT_RECIPE / "tiny_synthetic.yaml", [],
                                     data, teacher, hooks_for(f"student ({STUDENT_RECIPE})"))
    rows = []
    for name, path, reused in (("teacher (32-bit)", teacher, teacher_reused),
                               (f"student (1-bit, {STUDENT_RECIPE})", student, student_reused)):
        detector, meta = build.load_model(path)
        image_size = tuple(meta["config"]["profile"]["image_size_hw"])
        cost = profile(detector, image_size, meta["config"]["profile"]["rois"])  # type: ignore[arg-type]
        rows.append(DemoRow(name, path, float(meta["metrics"].get("voc07/mAP50", float("nan"))), cost, reused))
    return rows

