"""Detector families: an open table of builders, tiny configs, keep-real rules and checkpoint inference.

A family serves the architectures whose name starts with ``<family>_`` (``fasterrcnn_resnet18_fpn``
is served by ``fasterrcnn``). detbin registers torchvision's families
(:mod:`detbin.models.torchvision_families`) and the detectron2 adapter
(:mod:`detbin.models.detectron2_family`, usable when detectron2 is importable); ``detbin.models``
imports both, so every user of the package sees them. A third-party package registers its own
through the entry-point group ``detbin.detectors``, whose entry-point name is the family name and whose value is a
:class:`DetectorFamily` (or a function returning one). Families found through entry points
are imported only when an architecture of theirs is asked for, so a broken one breaks only
the run that asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detbin.core import entrypoints
from detbin.core.entrypoints import PluginInfo
from detbin.core.errors import ConfigError, DetectorLoadError, close_matches

if TYPE_CHECKING:  # the builders' signatures only
    from torch import nn

    from detbin.models.config import DetectorConfig

__all__ = ["GROUP", "DetectorFamily", "register_family", "get_family", "family_of", "families", "all_archs",
           "available_plugins"]

GROUP = "detbin.detectors"


@dataclass(frozen=True)
class DetectorFamily:
    """One family of detector architectures and everything detbin needs to know about it.

    Attributes:
        name: the architecture prefix (``fasterrcnn`` serves ``fasterrcnn_*``).
        archs: the architecture names it builds.
        build: ``config -> nn.Module`` speaking torchvision's two-mode contract (train:
            ``model(images, targets)`` -> loss dict; eval: ``model(images)`` -> one
            ``{"boxes", "labels", "scores"}`` per image, xyxy pixels). Random initialisation,
            no downloads.
        keep_real: module-name globs kept real by default when binarizing (stem, 1x1
            shortcuts, final predictors: methods.md §1.7).
        default_size: test-time ``(min_size, max_size)`` when the config leaves them unset.
        tiny: :class:`~detbin.models.config.DetectorConfig` overrides of the CPU-sized variant,
            on top of :func:`~detbin.models.config.tiny_config`'s defaults.
        infer: ``{state-dict key: shape} -> config values`` (at least ``arch`` and
            ``num_classes``) when a plain state dict is of this family, else None.
        resnet_body: module name of a ResNet body whose blocks a layout rewrites, or None.
        adapter: ``(model, config) -> Detector``; None means
            :class:`~detbin.models.detector.TorchvisionDetector`.
        description: one line for ``detbin detectors``.
        transfer: ``(model, teacher) -> names | None``: initialise a freshly built ``model`` of this
            family from a real ``teacher`` Detector of another architecture (weights copied by role
            and shape along a documented table; returns the parameter names set from the teacher,
            or None when there is no mapping from the teacher's architecture). Used for a student
            of another architecture without ``student.init`` (BiDet's students of a real SSD300).
    """

    name: str
    archs: tuple[str, ...]
    build: Callable[[DetectorConfig], nn.Module]
    keep_real: tuple[str, ...] = ()
    default_size: tuple[int, int] = (800, 1333)
    tiny: Mapping[str, Any] = field(default_factory=dict)
    infer: Callable[[dict[str, tuple[int, ...]]], dict[str, Any] | None] | None = None
    resnet_body: str | None = None
    adapter: Callable[..., Any] | None = None
    description: str = ""
    transfer: Callable[[nn.Module, Any], list[str] | None] | None = None

    def __post_init__(self) -> None:
        bad = [a for a in self.archs if not a.startswith(self.name + "_")]
        if not self.name or "_" in self.name or bad:
            raise ConfigError(f"detector family {self.name!r}: a family name has no '_' and every architecture "
                              f"starts with '{self.name}_' (got {bad or self.archs})")


_REGISTRY: dict[str, DetectorFamily] = {}


def register_family(family: DetectorFamily, replace: bool = False) -> DetectorFamily:
    """Add ``family`` to the table (``replace`` to overwrite one of the same name).

    Raises:
        ConfigError: the name is taken and ``replace`` is False.
    """
    if family.name in _REGISTRY and not replace and _REGISTRY[family.name] is not family:
        raise ConfigError(f"detector family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def available_plugins() -> dict[str, PluginInfo]:
    """Families registered through the ``detbin.detectors`` entry points; imports nothing."""
    return entrypoints.discover(GROUP, "detector family", DetectorLoadError)


def _from_plugin(name: str) -> DetectorFamily:
    obj, info = entrypoints.load(GROUP, "detector family", name, DetectorLoadError)
    family = obj() if callable(obj) and not isinstance(obj, DetectorFamily) else obj
    if not isinstance(family, DetectorFamily):
        raise DetectorLoadError(f"detector family {name!r} from {info.package}: {info.value} is not a "
                                "detbin.DetectorFamily (nor a function returning one)")
    if family.name != name:
        raise DetectorLoadError(f"detector family {name!r} from {info.package}: it declares name {family.name!r}; "
                                "the entry-point name and DetectorFamily.name must be equal")
    return register_family(family)


def get_family(name: str) -> DetectorFamily:
    """The family called ``name``: built in, or loaded from its entry point on first use.

    Raises:
        ConfigError: no such family (close names and all families are listed).
        DetectorLoadError: its plugin fails to import or is not a DetectorFamily.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in available_plugins():
        return _from_plugin(name)
    known = sorted({*_REGISTRY, *available_plugins()})
    raise ConfigError(f"unknown detector family {name!r}{close_matches(name, known)}; known: {', '.join(known)}")


def family_of(arch: str) -> DetectorFamily:
    """The family serving ``arch``, checked to list it.

    Raises:
        ConfigError: unknown family or architecture (valid names are listed).
    """
    try:
        family = get_family(arch.split("_")[0])
    except ConfigError:
        archs = all_archs()
        raise ConfigError(f"unknown architecture {arch!r}{close_matches(arch, archs)}; valid: "
                          f"{', '.join(archs)}") from None
    if arch not in family.archs:
        raise ConfigError(f"unknown architecture {arch!r}{close_matches(arch, family.archs)}; family "
                          f"{family.name} builds: {', '.join(family.archs)}")
    return family


def families() -> dict[str, DetectorFamily]:
    """The families registered so far (built-ins always; plugins once loaded)."""
    return dict(_REGISTRY)


def all_archs() -> tuple[str, ...]:
    """Every architecture of the registered families (plugins not yet loaded are not imported)."""
    return tuple(a for f in families().values() for a in f.archs)
