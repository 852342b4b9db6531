"""The only place where configuration becomes objects.

Build order of a run (fixed; recipes rely on it):

1. load and validate the YAML (:mod:`detbin.config`), ``--set`` overrides applied first;
2. load the recipe class (entry point) and validate its ``params``;
3. build and load the teacher (a detbin checkpoint or a torchvision state dict), frozen;
4. deep-copy it into the student, then ``recipe.binarize(student, spec)``;
5. ``recipe.prepare(student, teacher)``;
6. the optimizer from ``recipe.param_groups(student)``, the LR schedule;
7. data, evaluator, trainer with the built-in hooks + ``recipe.hooks()``.

Without a recipe (``detbin train``) steps 2-5 reduce to building a real-valued detector.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from detbin import checkpoint, plugins
from detbin.config import DataSplit, RunConfig, validate_params
from detbin.data import ConcatDetection, TrainView, VocDetection, collate
from detbin.detector import DetectorConfig, TorchvisionDetector, build_detector
from detbin.errors import CheckpointError, ConfigError
from detbin.evaluate import VocMAP
from detbin.hooks import lr_lambda
from detbin.layout import BinarizeSpec
from detbin.recipe import Recipe
from detbin.synthetic import SyntheticDetection
from detbin.train import EpochSampler, freeze

__all__ = [
    "build_dataset", "dataset_classes", "load_teacher", "student_base", "load_model", "make_student", "build_optimizer",
    "build_scheduler", "build_evaluator", "Plan", "plan_iterations", "train_loader", "test_loader",
]

log = logging.getLogger(__name__)

SHAPE_FIELDS = ("arch", "num_classes", "width_mult", "fpn_channels", "representation_size")


def build_dataset(split: DataSplit, root_override: Path | None = None) -> Dataset:
    """The dataset of one ``data`` split (``--data`` replaces the file's root)."""
    if split.source == "synthetic" and root_override is None:
        return SyntheticDetection(split.size or 200, seed=split.seed, offset=split.offset)
    root = root_override or (Path(split.root) if split.root else None)
    if root is None:
        raise ConfigError(f"data: split {split.split!r} of source {split.source!r} needs a root (set data.*.root "
                          "or pass --data PATH)")
    if split.source == "coco":
        from detbin.coco_data import CocoDetection

        return CocoDetection(root, split.split, split.annotations)
    if isinstance(split.year, list):  # e.g. VOC07+12 trainval
        return ConcatDetection([VocDetection(root, split.split, year) for year in split.year])
    return VocDetection(root, split.split, split.year)


def dataset_classes(dataset: Dataset) -> tuple[str, ...]:
    return tuple(getattr(dataset, "classes"))


def merge_detector(base: DetectorConfig, section: dict[str, Any] | None) -> DetectorConfig:
    """``base`` with the file's detector settings applied (``None`` values are skipped)."""
    values = base.to_dict()
    values.update({k: v for k, v in (section or {}).items() if v is not None})
    return DetectorConfig.from_dict(values)


def load_teacher(path: Path, arch: str | None, section: dict[str, Any] | None) -> TorchvisionDetector:
    """A frozen real-valued teacher from a detbin checkpoint or a torchvision state dict.

    Its shapes (architecture, widths, classes) come from the weights; the file's non-shape
    detector settings (input size, proposal counts ...) apply to it as to the student.
    """
    runtime = {k: v for k, v in (section or {}).items() if v is not None and k not in SHAPE_FIELDS}
    teacher, meta = checkpoint.load_detector(Path(path), arch, **runtime)
    if meta.get("kind") == "student":
        raise CheckpointError(f"{path}: is a 1-bit student checkpoint; a teacher must be real-valued")
    config = merge_detector(teacher.config, runtime)
    if config != teacher.config:
        rebuilt = build_detector(config)
        rebuilt.model.load_state_dict(teacher.model.state_dict())
        teacher = rebuilt
    freeze(teacher)
    return teacher


def student_base(teacher: TorchvisionDetector, section: dict[str, Any] | None, init: Path | None,
                 source: str) -> TorchvisionDetector:
    """The real-valued network the student is made from.

    The teacher itself when the file's detector section names no other shape; otherwise (an
    R18 student of an R101 teacher, IDa-Det's setting) that architecture, with the teacher's
    class count and input settings, initialised from ``init`` (a real-valued checkpoint of the
    student architecture) or randomly.
    """
    shape = {k: v for k, v in (section or {}).items() if v is not None and k in SHAPE_FIELDS}
    if all(getattr(teacher.config, k) == v for k, v in shape.items()):
        return teacher
    if shape.get("num_classes", teacher.config.num_classes) != teacher.config.num_classes:
        raise ConfigError(f"{source}: detector.num_classes {shape['num_classes']} differs from the teacher's "
                          f"{teacher.config.num_classes}")
    config = merge_detector(teacher.config, section)
    if init is None:
        log.warning("student %s differs from the teacher (%s) and has no student.init: random initialisation",
                    config.arch, teacher.config.arch)
        return build_detector(config)
    source_model, _ = checkpoint.load_detector(Path(init), config.arch)
    student = build_detector(config)
    checkpoint.load_state(student, source_model.model.state_dict(), str(init))
    return student


def make_student(teacher: TorchvisionDetector, recipe: Recipe, spec: BinarizeSpec) -> tuple[TorchvisionDetector, list[str]]:
    """Deep-copy the teacher, make it trainable and let the recipe binarize it."""
    student = TorchvisionDetector(copy.deepcopy(teacher.model), teacher.config)
    for p in student.model.parameters():
        p.requires_grad_(True)
    binarized = recipe.binarize(student, spec)
    student.model.train()
    return student, binarized


def load_model(path: Path, arch: str | None = None) -> tuple[TorchvisionDetector, dict[str, Any]]:
    """Any model file: a student (binarization rebuilt from its recipe and spec) or a real model.

    Returns:
        The detector in eval mode and the checkpoint's metadata.
    """
    data = checkpoint.read(Path(path))
    if data.get("format") != checkpoint.FORMAT or data.get("kind") != "student":
        return checkpoint.load_detector(Path(path), arch)
    config = DetectorConfig.from_dict(data["detector"])
    recipe_cls = plugins.load(data["recipe"])
    params = validate_params(recipe_cls.Params, data.get("recipe_params") or {}, f"{path} (recipe_params)")
    detector = build_detector(config)
    recipe_cls(params).binarize(detector, BinarizeSpec.from_dict(data["binarize"]))
    checkpoint.load_state(detector, data["model"], str(path))
    detector.model.eval()
    return detector, {k: v for k, v in data.items() if k not in ("model", "recipe_state", "trainer")}


def build_optimizer(groups: list[dict[str, Any]], section: Any) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW from the ``train.optimizer`` section."""
    if section.name == "sgd":
        return torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    cls = torch.optim.Adam if section.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=section.lr, weight_decay=section.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, section: Any, max_iterations: int,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine/step/linear/constant; step milestones are given in epochs."""
    milestones = [int(round(m * iters_per_epoch)) for m in section.milestones]
    factor = lr_lambda(section.name, max_iterations, section.warmup_iters, section.warmup_factor, milestones,
                       section.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_evaluator(metric: str, classes: Sequence[str]) -> Any:
    if metric == "coco":
        from detbin.evaluate import CocoMAP

        return CocoMAP(classes)
    return VocMAP(classes, use_07_metric=metric == "voc07")


@dataclass(frozen=True)
class Plan:
    """Iteration counts of a run."""

    iters_per_epoch: int
    max_iterations: int


def plan_iterations(config: RunConfig, train_size: int, world_size: int = 1) -> Plan:
    """``max_iterations`` from ``train.max_iterations`` or ``train.epochs`` (drop-last batches)."""
    per_epoch = max(1, train_size // (config.train.batch_size * world_size))
    if config.train.max_iterations:
        return Plan(per_epoch, config.train.max_iterations)
    epochs = config.train.epochs or 12
    return Plan(per_epoch, max(1, math.ceil(epochs * per_epoch)))


def train_loader(dataset: Dataset, config: RunConfig, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training batches: difficult objects dropped, flips, a resumable seeded order."""
    view = TrainView(dataset, flip=config.data.flip, seed=config.train.seed)
    sampler = EpochSampler(len(view), seed=config.train.seed, shuffle=True, rank=rank, world_size=world_size)
    # An own generator: without it every new iterator draws its seed from the global RNG, so a
    # run resumed mid-epoch would consume it at a different point than an uninterrupted one.
    generator = torch.Generator().manual_seed(config.train.seed)
    return DataLoader(view, batch_size=config.train.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                      num_workers=config.train.workers, persistent_workers=False, generator=generator)


def test_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
