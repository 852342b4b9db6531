"""The ``data`` and ``eval`` sections, and ``detbin eval --dataset``, as objects.

Data sets read local disk only (detbin never downloads one): VOC-layout folders (PASCAL VOC, or
the synthetic benchmark written by ``detbin data synthetic``), COCO instances JSON, or the
synthetic renderer in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from detbin.config import DataSplit, RunConfig
from detbin.core.errors import ConfigError
from detbin.data.datasets import ConcatDetection, TrainView, VocDetection, collate
from detbin.data.ssd_augment import SSDAugmentation, SSDTrainView
from detbin.data.synthetic import BENCHMARK_TEST, BENCHMARK_TRAIN, SyntheticDetection
from detbin.evaluation.inference import run_evaluation
from detbin.evaluation.metrics import VocMAP
from detbin.training.sampler import EpochSampler

__all__ = ["DATASETS", "build_dataset", "dataset_classes", "open_eval_dataset", "train_loader", "test_loader",
           "check_train_split", "build_evaluator", "Evaluation", "loader_workers"]

log = logging.getLogger(__name__)

DATASETS = ("voc07", "voc12", "coco", "synthetic")


def build_dataset(split: DataSplit, root_override: Path | None = None) -> Dataset:
    """The dataset of one ``data`` split (``--data`` replaces the file's root)."""
    if split.source == "synthetic" and root_override is None:
        return SyntheticDetection(split.size or 200, seed=split.seed, offset=split.offset)
    root = root_override or (Path(split.root) if split.root else None)
    if root is None:
        raise ConfigError(f"data: split {split.split!r} of source {split.source!r} needs a root (set data.*.root "
                          "or pass --data PATH)")
    allow = split.allow_outside_root
    if split.source == "coco":
        from detbin.data.coco_dataset import CocoDetection

        return CocoDetection(root, split.split, split.annotations, allow_outside_root=allow)
    if isinstance(split.year, list):  # e.g. VOC07+12 trainval
        return ConcatDetection([VocDetection(root, split.split, year, allow_outside_root=allow)
                                for year in split.year])
    return VocDetection(root, split.split, split.year, allow_outside_root=allow)


def dataset_classes(dataset: Dataset) -> tuple[str, ...]:
    return tuple(getattr(dataset, "classes"))


def open_eval_dataset(name: str, data: Path | None, split: str, annotations: str | None = None,
                      allow_outside_root: bool = False) -> tuple[Dataset, str]:
    """``(data set, metric)`` for ``detbin eval --dataset``; ``synthetic`` without ``data`` renders in memory.

    ``voc07``/``voc12`` read ``VOC2007``/``VOC2012`` of a ``VOCdevkit`` (or a VOC-layout folder),
    ``coco`` a COCO instances JSON (:class:`~detbin.data.coco_dataset.CocoDetection`),
    ``synthetic`` a folder written by ``detbin data synthetic`` (VOC layout, scored with ``voc07``).
    ``allow_outside_root`` lets image paths of the annotation files lead outside ``data``.
    """
    if name not in DATASETS:
        raise ConfigError(f"--dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        if data is None:
            return SyntheticDetection(BENCHMARK_TEST, seed=0, offset=BENCHMARK_TRAIN), "voc07"
        return VocDetection(data, split, allow_outside_root=allow_outside_root), "voc07"
    if data is None:
        what = "a COCO folder (annotations/ + images)" if name == "coco" else "a VOCdevkit folder"
        raise ConfigError(f"--dataset {name} needs --data PATH ({what}; detbin never downloads)")
    if name == "coco":
        from detbin.data.coco_dataset import CocoDetection

        return CocoDetection(data, split, annotations, allow_outside_root=allow_outside_root), "coco"
    return VocDetection(data, split, year="VOC2007" if name == "voc07" else "VOC2012",
                        allow_outside_root=allow_outside_root), name


def train_loader(dataset: Dataset, config: RunConfig, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training batches: difficult objects dropped, flips (or ``data.augment: ssd``), a resumable seeded order."""
    if config.data.augment == "ssd":  # resized to the SSD's fixed input side (300 unless min_size says otherwise)
        size = config.detector.min_size if config.detector is not None else None
        side = size if isinstance(size, int) else 300
        view: Dataset = SSDTrainView(dataset, SSDAugmentation(side, flip=config.data.flip), seed=config.train.seed)
    else:
        view = TrainView(dataset, flip=config.data.flip, seed=config.train.seed)
    sampler = EpochSampler(len(view), seed=config.train.seed, shuffle=True, rank=rank, world_size=world_size)
    # An own generator: without it every new iterator draws its seed from the global RNG, so a
    # run resumed mid-epoch would consume it at a different point than an uninterrupted one.
    generator = torch.Generator().manual_seed(config.train.seed)
    return DataLoader(view, batch_size=config.train.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                      num_workers=loader_workers(config.train.workers), persistent_workers=False, generator=generator)


def loader_workers(asked: int) -> int:
    """``train.workers``, at most the CPU cores this process may use (one log line when capped).

    More would make torch's DataLoader print a raw ``UserWarning`` and only slow a small machine.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if asked > cores:
        log.info("train.workers %d > %d CPU core(s) here: loading with %d worker(s)", asked, cores, cores)
        return cores
    return asked


def _describe(dataset: Dataset) -> str:
    """Where a split's image list lives, for messages."""
    if isinstance(dataset, ConcatDetection):
        return " + ".join(_describe(part) for part in dataset.datasets)
    if isinstance(dataset, VocDetection):
        return f"{dataset.root}/ImageSets/Main/{dataset.split}.txt"
    if hasattr(dataset, "path"):  # COCO: the instances JSON
        return str(getattr(dataset, "path"))
    return "the synthetic split (data.train.size)"


def check_train_split(dataset: Dataset, config: RunConfig, world_size: int, source: str) -> None:
    """Fail before training when the training split cannot fill one batch per rank.

    :func:`train_loader` drops the last partial batch (BatchNorm needs 2+ images, and every step
    has the same size), so a split with fewer images per rank than ``train.batch_size`` yields no
    batch at all: without this check the trainer would wait for one forever.

    Raises:
        ConfigError: names the split's file, its size, the batch size and the fix.
    """
    size, batch = len(dataset), config.train.batch_size  # type: ignore[arg-type]
    per_rank = -(-size // world_size)
    if per_rank >= batch:
        return
    ranks = f" per rank ({world_size} ranks: {per_rank} each)" if world_size > 1 else ""
    what = "is empty (0 images)" if size == 0 else f"has {size} image{'s' if size != 1 else ''}{ranks}"
    fix = "add images to the split" if size == 0 else f"lower it (--set train.batch_size={max(1, per_rank)}) or add images"
    raise ConfigError(f"{source}: data.train: split {config.data.train.split!r} ({_describe(dataset)}) {what}, fewer "
                      f"than train.batch_size {batch}; the last partial batch is dropped, so no batch would ever be "
                      f"trained on; {fix}")


def test_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """The test split in order (the scorers read its exact ground truth by index)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def build_evaluator(metric: str, classes: Sequence[str], backend: str | None = None) -> Any:
    """``VocMAP`` (``voc07``: 11-point, ``voc12``: area) or ``CocoMAP`` (``coco``)."""
    if metric == "coco":
        from detbin.evaluation.coco import CocoMAP

        return CocoMAP(classes, backend)
    return VocMAP(classes, use_07_metric=metric == "voc07")


class Evaluation:
    """Scores a detector on one split with the run's metric, as ``{"voc07/mAP50": ...}``.

    ``prefix`` names the split in the keys (``"val/"``: ``{"val/voc07/mAP50": ...}``); the test
    split's keys carry none.
    """

    def __init__(self, config: RunConfig, test_set: Dataset, classes: tuple[str, ...], prefix: str = "") -> None:
        self.metric, self.max_images, self.prefix = config.eval.metric, config.eval.max_images, prefix
        self.evaluator = build_evaluator(self.metric, classes)
        self.loader = test_loader(test_set, config.eval.batch_size)
        self.key = f"{prefix}{self.metric}/{'AP' if self.metric == 'coco' else 'mAP50'}"

    def __call__(self, detector: Any) -> dict[str, float]:
        result = run_evaluation(detector, self.loader, self.evaluator, max_images=self.max_images)
        return {self.key: result.mAP, **{f"{self.prefix}{self.metric}/{k}": v for k, v in result.stats.items()}}
