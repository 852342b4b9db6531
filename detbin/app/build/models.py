"""Recipes, teachers and students as objects: the ``recipe``, ``params``, ``detector``, ``teacher``,
``student`` and ``binarize`` sections, and every model file detbin reads.

Build order of a run (fixed; recipes rely on it): the recipe class and its ``params``; the
teacher (a detbin checkpoint or a torchvision state dict), frozen; the real network the student
is made from (the teacher, or another architecture, :func:`student_base`); a deep copy of it,
binarized by ``recipe.binarize(student, spec)`` (:func:`make_student`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detbin.config import RunConfig, validate_params
from detbin.binary.layers import is_binary
from detbin.core.errors import CheckpointError, ConfigError
from detbin.models import checkpoint
from detbin.models.config import DetectorConfig
from detbin.models.detector import Detector, build_detector
from detbin.models.families import family_of
from detbin.models.layout import BinarizeSpec
from detbin.training import plugins
from detbin.training.recipe import Recipe
from detbin.training.trainer import freeze

__all__ = ["SHAPE_FIELDS", "Models", "build_recipe", "layout_spec", "build_models", "merge_detector", "load_teacher",
           "student_base", "make_student", "load_model", "load_target"]

log = logging.getLogger(__name__)

# ``options`` are architecture too (BiDet's form, the SSD priors): a teacher keeps its own
SHAPE_FIELDS = ("arch", "num_classes", "width_mult", "fpn_channels", "representation_size", "options")


def build_recipe(config: RunConfig, source: str) -> Recipe:
    """The recipe of the file (``recipe: null``: the task loss alone), ``params`` validated."""
    if config.recipe is None:
        return Recipe()
    cls = plugins.load(config.recipe)
    return cls(validate_params(cls.Params, config.params, source))


def layout_spec(recipe: type[Recipe] | Recipe, config: RunConfig | None = None) -> BinarizeSpec:
    """The recipe's layout, overridden by the keys the recipe file sets explicitly under ``binarize:``."""
    explicit = config.binarize.model_dump(exclude_unset=True) if config is not None else {}
    return BinarizeSpec.from_dict({**BinarizeSpec().to_dict(), **recipe.layout, **explicit})


@dataclass(frozen=True)
class Models:
    """The networks of a run: the student (binarized unless ``detbin train``), the teacher or None."""

    student: Detector
    teacher: Detector | None
    binarized: list[str]
    spec: BinarizeSpec | None


def build_models(config: RunConfig, recipe: Recipe, classes: tuple[str, ...], verb: str, teacher_path: Path | None,
                 teacher_arch: str | None, source: str) -> Models:
    """Teacher and student of a run, in the build order above.

    ``detbin train`` (``verb == "train"``) builds the real-valued detector of the file's
    ``detector`` section; a teacher-free recipe without ``--teacher`` binarizes that detector.
    """
    # Only the keys the file sets: unset fields must not override what the teacher's weights fix.
    section = config.detector.model_dump(exclude_unset=True) if config.detector is not None else None
    teacher_path = teacher_path or (Path(config.teacher.checkpoint) if config.teacher.checkpoint else None)
    if verb == "train" or (teacher_path is None and not recipe.needs_teacher):
        values = {k: v for k, v in (section or {}).items() if v is not None}
        values["num_classes"] = len(classes) + 1
        model = build_detector(DetectorConfig.from_dict(values))
        if verb == "train":
            return Models(model, None, [], None)
        teacher = model
    elif teacher_path is None:
        raise ConfigError(f"recipe {recipe.name!r} needs a teacher: pass --teacher T.pt or set teacher.checkpoint")
    else:
        teacher = load_teacher(teacher_path, teacher_arch or config.teacher.arch, section)
    if teacher.config.num_classes != len(classes) + 1:
        raise ConfigError(f"the teacher predicts {teacher.config.num_classes - 1} classes but the data has "
                          f"{len(classes)} ({', '.join(classes)}); use a teacher trained on this label set")
    init = Path(config.student.init) if config.student.init else None
    base = student_base(teacher, section, init, source) if teacher_path is not None else teacher
    spec = layout_spec(recipe, config)
    student, binarized = make_student(base, recipe, spec)
    return Models(student, teacher if teacher_path is not None else None, binarized, spec)


def merge_detector(base: DetectorConfig, section: dict[str, Any] | None) -> DetectorConfig:
    """``base`` with the file's detector settings applied (``None`` values are skipped)."""
    values = base.to_dict()
    values.update({k: v for k, v in (section or {}).items() if v is not None})
    return DetectorConfig.from_dict(values)


def load_teacher(path: Path, arch: str | None, section: dict[str, Any] | None) -> Detector:
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


def student_base(teacher: Detector, section: dict[str, Any] | None, init: Path | None,
                 source: str) -> Detector:
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
        student = build_detector(config)
        transfer = family_of(config.arch).transfer  # a documented teacher -> student table (BiDet's students)
        loaded = transfer(student.model, teacher) if transfer is not None else None
        if loaded is None:
            log.warning("student %s differs from the teacher (%s) and has no student.init: random initialisation",
                        config.arch, teacher.config.arch)
        else:
            log.info("student %s initialised from the teacher %s: %d tensors copied by role and shape",
                     config.arch, teacher.config.arch, len(loaded))
        return student
    where = f"{init} (student.init of {source})"
    source_model, _ = checkpoint.load_detector(Path(init))  # its own shapes, checked against the section below
    if source_model.config.arch != config.arch:
        raise ConfigError(f"{where}: holds {source_model.config.arch} weights, but the detector section makes a "
                          f"{config.arch} student; give student.init a real-valued checkpoint of {config.arch}")
    student = build_detector(config)
    shape = ", ".join(f"{k} {getattr(config, k)}" for k in SHAPE_FIELDS if k != "arch")
    checkpoint.load_state(student, source_model.model.state_dict(), where,
                          f"student.init must have the student's shapes ({shape}); give a checkpoint of that model "
                          "or change the detector section to its shapes")
    return student


def make_student(teacher: Detector, recipe: Recipe, spec: BinarizeSpec) -> tuple[Detector, list[str]]:
    """Deep-copy the teacher, make it trainable and let the recipe binarize it."""
    student = copy.copy(teacher)  # the same adapter class, with its own copy of the network
    student.model, student.forward_module = copy.deepcopy(teacher.model), None
    for p in student.model.parameters():
        p.requires_grad_(True)
    binarized = recipe.binarize(student, spec)
    student.model.train()
    return student, binarized


def load_model(path: Path, arch: str | None = None) -> tuple[Detector, dict[str, Any]]:
    """Any model file: a student (binarization rebuilt from its recipe and spec) or a real model.

    Returns:
        The detector in eval mode and the checkpoint's metadata.
    """
    data = checkpoint.read(Path(path))
    if data.get("format") != checkpoint.FORMAT or data.get("kind") != "student":
        return checkpoint.load_detector(Path(path), arch)
    checkpoint.require(data, Path(path), {"detector": dict, "binarize": dict, "model": dict})
    recipe_cls = plugins.load_installed(data.get("recipe"), str(path))  # never an import string from a file
    params = validate_params(recipe_cls.Params, data.get("recipe_params") or {}, f"{path} (recipe_params)")
    try:
        config = DetectorConfig.from_dict(data["detector"])
        spec = BinarizeSpec.from_dict(data["binarize"])
        detector = build_detector(config)
    except ConfigError as exc:  # the message names the section ("detector: unknown key(s) ..."), add the file
        raise CheckpointError(f"{path}: {exc}") from None
    recipe_cls(params).binarize(detector, spec)
    checkpoint.load_state(detector, data["model"], str(path),
                          f"its 'detector' and 'binarize' fields (arch {config.arch}) do not describe its 'model' "
                          "weights; the file was edited or damaged, re-save it from its run folder")
    detector.model.eval()
    return detector, {k: v for k, v in data.items() if k not in ("model", "recipe_state", "trainer")}


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def load_target(model: str, recipe: str | None = None, num_classes: int = 21, arch: str | None = None) -> Detector:
    """A detector from a checkpoint path or an architecture name, a recipe's layout applied (``detbin profile``).

    Args:
        model: a model file (:func:`load_model`), or an architecture name (random weights).
        recipe: binarize the real-valued model with this recipe's layout.
        num_classes: classes incl. background, for architecture names.
        arch: the architecture of a plain state dict whose keys do not tell.

    Raises:
        CheckpointError: a missing file or one that holds no detector.
        ConfigError: an unknown architecture, or ``recipe`` on a model that is already 1-bit.
        RecipeNotFound: an unknown recipe.
    """
    recipe_cls = plugins.load(recipe) if recipe is not None else None  # fail fast, before building
    if Path(model).is_file():
        detector, _ = load_model(Path(model), arch)
    elif model.endswith(_CHECKPOINT_SUFFIXES) or "/" in model:
        raise CheckpointError(f"{model}: no such checkpoint file")
    else:  # an architecture name; a plugin family is loaded here, unknown names list the valid ones
        detector = build_detector(DetectorConfig(arch=model, num_classes=num_classes))
    if recipe_cls is not None:
        if any(is_binary(m) for m in detector.model.modules()):
            raise ConfigError(f"{model}: already has binary layers (a 1-bit student); --recipe {recipe} applies "
                              "to real-valued models, drop it")
        recipe_cls().binarize(detector, layout_spec(recipe_cls))
    return detector
