"""The recipe-file schema: raw mappings -> validated pydantic models.

The schema is strict: an unknown key fails with its dotted path and the file it is in
(``recipes/x.yaml: train.lerning_rate: unknown key (did you mean: lr?)``). A recipe's own
``params:`` are validated in a second pass by its ``Params`` model.

:mod:`detbin.config` is the only package that imports pydantic (here) and yaml (``files``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from detbin.core.errors import ConfigError, close_matches

__all__ = ["Params", "RunConfig", "DataSplit", "validate", "validate_params"]


class Params(BaseModel):
    """Base of every recipe's ``Params`` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _section_from_dataclass(name: str, cls: type) -> type[BaseModel]:
    """A strict pydantic model with the fields, types and defaults of a library dataclass."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name] | None, default)
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


def _detector_section() -> type[BaseModel]:
    from detbin.models.config import DetectorConfig

    return _section_from_dataclass("DetectorSection", DetectorConfig)


def _binarize_section() -> type[BaseModel]:
    from detbin.models.layout import BinarizeSpec

    return _section_from_dataclass("BinarizeSection", BinarizeSpec)


DetectorSection = _detector_section()
BinarizeSection = _binarize_section()


class TeacherSection(_Strict):
    """``checkpoint``: a detbin checkpoint or a torchvision state dict; ``arch`` if not inferable."""

    checkpoint: str | None = None
    arch: str | None = None


class StudentSection(_Strict):
    """``init``: real-valued weights for a student whose architecture differs from the teacher's."""

    init: str | None = None


class DataSplit(_Strict):
    """One split: ``voc`` (a VOC-layout folder), ``coco`` or in-memory ``synthetic``.

    ``allow_outside_root``: open image paths from the annotation files (a COCO ``file_name``, a
    VOC split entry) that lead outside ``root`` (absolute, or with ``..``); refused by default.
    """

    source: Literal["voc", "coco", "synthetic"] = "voc"
    root: str | None = None
    split: str = "trainval"
    year: str | list[str] | None = None
    annotations: str | None = None
    size: int | None = Field(default=None, ge=1)
    seed: int = 0
    offset: int = 0
    allow_outside_root: bool = False


class DataSection(_Strict):
    """``augment``: training augmentation, ``none`` (flips only) or ``ssd`` (ssd.pytorch's pipeline).

    ``val``: a validation split. With it, the ``eval.every`` evaluations score ``val``, ``best.pt``
    is the best checkpoint on it (its metrics record ``val/<metric>`` and ``val/iteration``), and
    the test split scores the final model once, at the end. Without it (the papers' protocol,
    and every shipped file), evaluations score the test split.
    """

    train: DataSplit = DataSplit()
    val: DataSplit | None = None
    test: DataSplit = DataSplit(split="test")
    flip: float = Field(default=0.5, ge=0, le=1)
    augment: Literal["none", "ssd"] = "none"


class OptimizerSection(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.02, gt=0)
    momentum: float = 0.9
    weight_decay: float = Field(default=1e-4, ge=0)


class ScheduleSection(_Strict):
    """LR schedule after a linear warm-up from ``warmup_factor * lr``.

    ``cosine`` decays to 0 at the last iteration; ``step`` multiplies by ``gamma`` at each
    milestone (in epochs); ``linear`` decays linearly to 0; ``constant`` keeps the lr.
    """

    name: Literal["cosine", "step", "linear", "constant"] = "cosine"
    warmup_iters: int = Field(default=100, ge=0)
    warmup_factor: float = Field(default=0.001, gt=0, le=1)
    milestones: list[float] = []
    gamma: float = 0.1


class TrainSection(_Strict):
    """Either ``epochs`` (passes over the training split) or ``max_iterations``."""

    epochs: float | None = Field(default=None, gt=0)
    max_iterations: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    clip_grad: float | None = Field(default=10.0, gt=0)
    seed: int = 0
    amp: bool = False
    workers: int = Field(default=0, ge=0)
    log_every: int = Field(default=20, ge=1)
    checkpoint_every: int = Field(default=200, ge=1)


class EvalSection(_Strict):
    metric: Literal["voc07", "voc12", "coco"] = "voc07"
    every: int = Field(default=0, ge=0, description="iterations between evaluations; 0: at the end only")
    batch_size: int = Field(default=8, ge=1)
    max_images: int | None = Field(default=None, ge=1)


class ProfileSection(_Strict):
    image_size_hw: tuple[int, int] | None = None
    rois: int = Field(default=1000, ge=1)


class RunConfig(_Strict):
    """A whole recipe file. ``recipe: null`` trains a real-valued model (``detbin train``)."""

    version: Literal[1] = 1
    recipe: str | None = None
    params: dict[str, Any] = {}
    detector: DetectorSection | None = None  # type: ignore[valid-type]
    teacher: TeacherSection = TeacherSection()
    student: StudentSection = StudentSection()
    binarize: BinarizeSection = BinarizeSection()  # type: ignore[valid-type]
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    profile: ProfileSection = ProfileSection()


def _known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = args[0] if args else annotation
    return list(getattr(current, "model_fields", {}))


def _explain(exc: ValidationError, source: str, model: type[BaseModel], prefix: str = "") -> ConfigError:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    path = prefix + ".".join(loc)
    if error["type"] == "extra_forbidden":
        hint = close_matches(loc[-1], _known_keys(model, error["loc"][:-1]))
        return ConfigError(f"{source}: {path}: unknown key{hint}")
    return ConfigError(f"{source}: {path}: {error['msg']} (got {error.get('input')!r})")


def validate(raw: dict[str, Any], source: str) -> RunConfig:
    """Validate a raw mapping; errors name ``source`` and the dotted key."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, source, RunConfig) from None


def validate_params(model: type[Params], raw: dict[str, Any], source: str) -> Params:
    """Second pass: a recipe's ``params:`` against its own ``Params`` model."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, source, model, prefix="params.") from None
