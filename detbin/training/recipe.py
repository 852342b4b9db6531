"""The recipe contract: what a training method (a plugin) may define.

A recipe is an ``nn.Module`` so the parameters it owns (adaptation convs, learned variances,
search logits) are optimized and checkpointed with the student. Every hook has a default.

Order of calls (fixed; :mod:`detbin.build` and :class:`detbin.train.Trainer` keep it):

Once, when a run is built:
    1. ``Recipe(params)``                       params validated against ``Recipe.Params``
    2. ``binarize(student, spec)``              the student is a deep copy of the teacher
    3. ``prepare(student, teacher)``            create size-dependent modules
    4. ``param_groups(student)``                -> the optimizer
    5. ``hooks()``                              -> trainer hooks (schedules, stage switches)
    6. ``tap_names(student)``                   module outputs recorded on student and teacher

Every iteration, inside ``Trainer.run_step``:
    7. student losses under taps; teacher ``features`` under taps (no grad, eval mode)
    8. ``loss(step)``                           extra loss terms, namespaced ``<recipe>/...``
    9. total = ``task_weight() * sum(task) + sum(extra)``; backward; clip; optimizer step
   10. ``after_optimizer_step(step)``           extra optimization a recipe owns (GAN, search)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detbin.config import Params
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec, apply_layout
from detbin.training.hook import Hook
from detbin.core.types import Target


__all__ = ["Recipe", "Step"]


@dataclass(frozen=True)
class Step:
    """What a recipe's ``loss`` sees at one iteration.

    Attributes:
        images: the batch, ``FloatTensor[3, H, W]`` in 0..1 (before the detector transform).
        targets: ground truth, boxes xyxy in input pixels.
        task_losses: the student's detection losses (torchvision names), with grad.
        student_taps / teacher_taps: ``{module name: [outputs]}`` for ``tap_names``.
        iteration: 0-based; ``max_iterations`` the run's length.
        student, teacher: the detectors (teacher ``None`` without one), for recipes that need
            an extra no-grad call (IDa-Det's teacher proposals).
    """

    images: list[Tensor]
    targets: list[Target]
    task_losses: dict[str, Tensor]
    student_taps: dict[str, list[Any]]
    teacher_taps: dict[str, list[Any]]
    iteration: int
    max_iterations: int
    student: Detector
    teacher: Detector | None


class Recipe(nn.Module):
    """Base class of every recipe; subclasses set ``name``, ``paper`` and usually ``Params``.

    Class attributes:
        name: the entry-point name (kebab-case, e.g. ``ida-det``); checked at load time.
        paper: the method's reference (title, venue, arXiv id), shown by ``detbin recipes show``.
        Params: a :class:`detbin.config.Params` model of the recipe's YAML ``params:`` keys.
        needs_teacher: a run without ``--teacher`` fails early when True.
        layout: the method's binarization (``BinarizeSpec`` fields); keys a recipe file sets
            explicitly under ``binarize:`` override it.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    needs_teacher: ClassVar[bool] = False
    layout: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Params | None = None) -> None:
        super().__init__()
        self.params = params if params is not None else self.Params()

    def binarize(self, student: Detector, spec: BinarizeSpec) -> list[str]:
        """Turn the (copied) student into its 1-bit form; returns the binarized conv names."""
        return apply_layout(student, spec)

    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        """Create modules that depend on the student's or teacher's shapes (default: none)."""

    def param_groups(self, student: Detector) -> list[dict[str, Any]]:
        """Optimizer parameter groups (default: student and recipe parameters, one group)."""
        params = [p for p in student.model.parameters() if p.requires_grad]
        params += [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}]

    def hooks(self) -> list[Hook]:
        """Trainer hooks this recipe adds (schedules of its own terms, stage switches)."""
        return []

    def tap_names(self, student: Detector) -> Sequence[str]:
        """Modules whose outputs ``loss`` needs, recorded on student and teacher by name."""
        return ()

    def task_weight(self) -> float:
        """Factor on the summed detection losses (IDa-Det's repository uses 5)."""
        return 1.0

    def loss(self, step: Step) -> dict[str, Tensor]:
        """Extra loss terms for this step, keys without the recipe prefix (default: none)."""
        return {}

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        """Extra optimization the recipe owns, run after the student's step; returns log values."""
        return {}

    @torch.no_grad()
    def teacher_features(self, images: list[Tensor], teacher: Detector,
                         student_taps: dict[str, list[Any]]) -> None:
        """Run the teacher on the batch so its taps fire (default: backbone + FPN only).

        When the student's ``transform`` was tapped, the teacher sees the student's very input
        tensor (same resize, same padding), as the methods' code runs the teacher on the same
        augmented batch; re-transforming would pick another scale under multi-scale training.
        """
        transformed = student_taps.get("transform")
        if transformed:
            teacher.model.backbone(transformed[0][0].tensors)
        else:
            teacher.features(images)
