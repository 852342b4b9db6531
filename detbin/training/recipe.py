"""The recipe contract: what a training method (a plugin) may define.

A recipe is an ``nn.Module`` so the parameters it owns (adaptation convs, learned variances,
search logits, a GAN) are checkpointed with the run. Every hook has a default.

**The student's architecture belongs to** :meth:`Recipe.binarize`: every module on the
student's forward path is built there (from detbin's core pieces, driven by the spec), because
``detbin eval``, ``profile`` and ``export`` rebuild a student by calling ``binarize`` alone.
Modules only training needs (adaptation convs, a generator and discriminator, search state)
are built in :meth:`Recipe.prepare`, and never reach an evaluated or exported model.

Order of calls (fixed; :mod:`detbin.app.build` and :class:`detbin.training.trainer.Trainer` keep it):

Once, when a run is built:
    1. ``Recipe(params)``                       params validated against ``Recipe.Params``
    2. ``binarize(student, spec)``              the student is a deep copy of the teacher
    3. ``prepare(student, teacher)``            training-only modules, recipe-owned optimizers
    4. ``param_groups(student)``                -> the student's optimizer (owned parameters excluded)
    5. ``owned_optimizers()``                   -> optimizers of recipe-owned parameters (saved, resumed)
    6. ``phases(plan)``                         -> ordered phases (default: one, the student trains)
    7. ``hooks()``                              -> trainer hooks (schedules, stage switches)
    8. ``tap_names(student)`` / ``input_tap_names(student)``: module outputs / inputs recorded
       on student and teacher, by name

When a phase starts (also when a run resumes inside it): ``on_phase(name, trainer)``.

Every step of a phase in which the student trains, inside ``Trainer.run_step``:
    9. student losses under taps; ``teacher_features`` under taps (no grad, eval mode)
   10. ``loss(step)``                           extra loss terms, namespaced ``<recipe>/...``
   11. total = ``task_weight() * sum(task) + sum(extra)``; backward; clip; optimizer step
   12. ``after_optimizer_step(step)``           values to log (or extra optimization it owns)

Every step of a phase with ``student=False``: ``phase_step(step)`` (e.g. a GAN update on
detached features); such a phase ends after its ``iterations`` or when ``phase_done`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from detbin.config import Params
from detbin.core.errors import DetbinError
from detbin.core.types import Target
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec, apply_layout
from detbin.training.hook import Hook

if TYPE_CHECKING:
    from detbin.training.trainer import Trainer

__all__ = ["Recipe", "Step", "Phase", "Plan"]


def _no_sync(parameters: Iterable[nn.Parameter]) -> None:
    """Single process: nothing to all-reduce."""


@dataclass(frozen=True)
class Step:
    """What a recipe's ``loss`` (or ``phase_step``) sees at one step.

    Attributes:
        images: the batch, ``FloatTensor[3, H, W]`` in 0..1 (before the detector transform).
        targets: ground truth, boxes xyxy in input pixels.
        task_losses: the student's detection losses (torchvision names), with grad; empty in a
            phase where the student does not train.
        student_taps / teacher_taps: ``{module name: [outputs]}`` for ``tap_names``.
        iteration: student optimizer steps so far (0-based); ``max_iterations`` the run's length.
        student, teacher: the detectors (teacher ``None`` without one), for recipes that need
            an extra no-grad call (IDa-Det's teacher proposals).
        student_inputs / teacher_inputs: ``{module name: [input]}`` for ``input_tap_names``
            (the module's first positional argument, e.g. a conv's input tensor).
        epoch: passes over the training split so far.
        lr_stage: LR milestones passed (0 until the first decay; BiDet's terms switch on at 1).
        phase: the name of the current phase.
        sync: ``sync(parameters)`` averages the gradients of recipe-owned ``parameters`` across
            ranks before the recipe steps their optimizer (a no-op in one process).
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
    student_inputs: dict[str, list[Any]] = field(default_factory=dict)
    teacher_inputs: dict[str, list[Any]] = field(default_factory=dict)
    epoch: int = 0
    lr_stage: int = 0
    phase: str = "train"
    sync: Callable[[Iterable[nn.Parameter]], None] = _no_sync


@dataclass(frozen=True)
class Phase:
    """One stage of a recipe's training.

    Attributes:
        name: logged with every step of the phase (``search``, ``gan1`` ...).
        iterations: steps in this phase; ``None``: until ``Recipe.phase_done`` says so (a phase
            with ``student=False``) or the end of the run. The last phase lasts until the run's
            ``max_iterations`` whatever it says. Steps of a student phase count toward
            ``max_iterations``; steps of the others do not (they still consume batches).
        student: whether the student trains in it (forward, ``loss``, backward, its optimizer);
            False: each step is ``Recipe.phase_step``.
    """

    name: str
    iterations: int | None = None
    student: bool = True


@dataclass(frozen=True)
class Plan:
    """The schedule a recipe plans its phases on (student optimizer steps).

    Attributes:
        iters_per_epoch: student steps per pass over the training split.
        max_iterations: the run's length.
        milestones: the LR-step iterations of a ``step`` schedule.
    """

    iters_per_epoch: int
    max_iterations: int
    milestones: tuple[int, ...] = ()


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
        """Turn the (copied) student into its 1-bit form; returns the binarized conv names.

        Everything on the student's forward path is built here (eval, profile and export
        rebuild a student from its checkpoint by calling this alone).
        """
        return apply_layout(student, spec)

    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        """Create training-only modules and optimizers (default: none)."""

    def owned_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers of parameters the recipe trains itself (a GAN); saved and restored with the run.

        Their parameters are left out of the student's optimizer; the recipe steps them (in
        ``phase_step`` or ``after_optimizer_step``), calling ``step.sync(parameters)`` first.
        """
        return {}

    def param_groups(self, student: Detector) -> list[dict[str, Any]]:
        """The student's optimizer groups (default: student and recipe parameters, one group).

        Parameters of :meth:`owned_optimizers` are excluded.
        """
        owned = {id(p) for opt in self.owned_optimizers().values() for g in opt.param_groups for p in g["params"]}
        params = [p for p in student.model.parameters() if p.requires_grad]
        params += [p for p in self.parameters() if p.requires_grad and id(p) not in owned]
        return [{"params": params}]

    def phases(self, plan: Plan) -> Sequence[Phase]:
        """Ordered phases of the run (default: one phase, ``train``, the student throughout)."""
        return [Phase("train")]

    def on_phase(self, name: str, trainer: Trainer) -> None:
        """Called when phase ``name`` starts, and when a run resumes inside it (freeze, unfreeze ...)."""

    def phase_step(self, step: Step) -> dict[str, float]:
        """One step of a phase with ``student=False``; returns values to log."""
        raise DetbinError(f"recipe {self.name!r} declares a phase without the student but defines no phase_step")

    def phase_done(self, name: str, trainer: Trainer) -> bool:
        """Whether the open-ended phase ``name`` (``iterations=None``) has converged (default: never)."""
        return False

    def hooks(self) -> list[Hook]:
        """Trainer hooks this recipe adds (schedules of its own terms, stage switches)."""
        return []

    def tap_names(self, student: Detector) -> Sequence[str]:
        """Modules whose outputs ``loss`` needs, recorded on student and teacher by name."""
        return ()

    def input_tap_names(self, student: Detector) -> Sequence[str]:
        """Modules whose inputs ``loss`` needs (a binary conv's input), recorded on student and teacher."""
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
