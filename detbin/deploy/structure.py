"""A deployed student's architecture as plain JSON, rebuilt from detbin's core pieces alone.

The architecture is the detector config, the deployed layout (:func:`~detbin.deploy.forms.deployed_spec`)
and the *difference* between the student and ``build_detector(config)`` + ``apply_layout(deployed
spec)``. For a recipe whose ``binarize`` is its layout (reactnet, ida-det, every built-in one)
that difference is empty; a recipe that also swaps modules gets them recorded here, in
pre-order (parents before children), as long as each is one of the core types of
:data:`BUILDERS`. No recipe code runs on loading, so a packed student loads without the plugin
that trained it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.binary.quantizers import DeployedSign, Quantizer
from detbin.deploy.forms import ExportError, input_spec
from detbin.models.config import DetectorConfig
from detbin.models.detector import Detector, build_detector
from detbin.models.layout import BinarizeSpec, apply_layout

__all__ = ["describe", "rebuild", "base_detector", "module_spec", "BUILDERS"]


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, tuple) else [int(v)] * 2


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair(m.kernel_size),
            "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation),
            "groups": m.groups, "bias": m.bias is not None}


def _weight_spec(m: BinaryConv2d) -> dict[str, Any] | str:
    q = m.weight_quantizer
    if isinstance(q, DeployedSign):
        return {"name": "deployed_sign", "scaled": q.scale is not None}
    if q.bits != 1:
        return input_spec(q, "weight quantizer")
    raise ExportError(f"a binary conv with weight quantizer {type(q).__name__}: deploy the student first "
                      "(detbin.deploy.forms.deployed)")


def _binary_conv_args(m: BinaryConv2d) -> dict[str, Any]:
    return {**_conv_args(m), "pad_value": m.pad_value, "input_quantizer": input_spec(m.input_quantizer),
            "weight_quantizer": _weight_spec(m)}


def _build_binary_conv(a: dict[str, Any]) -> BinaryConv2d:
    geometry = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()
                if k not in ("pad_value", "input_quantizer", "weight_quantizer")}
    return BinaryConv2d(**geometry, input_quantizer=a["input_quantizer"], weight_quantizer=a["weight_quantizer"],
                        pad_value=a["pad_value"])


def _tuples(a: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}


# type name -> (class, spec of an instance, builder from that spec); exact type matches only.
BUILDERS: dict[str, tuple[type, Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], nn.Module]]] = {
    "BinaryConv2d": (BinaryConv2d, _binary_conv_args, _build_binary_conv),
    "Conv2d": (nn.Conv2d, _conv_args, lambda a: nn.Conv2d(**_tuples(a))),
    "BatchNorm2d": (nn.BatchNorm2d, lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                                               "affine": m.affine, "track_running_stats": m.track_running_stats},
                    lambda a: nn.BatchNorm2d(**a)),
    "PReLU": (nn.PReLU, lambda m: {"num_parameters": m.num_parameters}, lambda a: nn.PReLU(**a)),
    "RPReLU": (RPReLU, lambda m: {"channels": m.prelu.num_parameters}, lambda a: RPReLU(**a)),
    "ReLU": (nn.ReLU, lambda m: {"inplace": m.inplace}, lambda a: nn.ReLU(**a)),
    "Hardtanh": (nn.Hardtanh, lambda m: {"min_val": m.min_val, "max_val": m.max_val}, lambda a: nn.Hardtanh(**a)),
    "Identity": (nn.Identity, lambda m: {}, lambda a: nn.Identity()),
    "Sequential": (nn.Sequential, lambda m: {}, lambda a: nn.Sequential()),  # children follow as their own entries
}


def module_spec(module: nn.Module) -> dict[str, Any] | None:
    """``{"type", "args"}`` of a core module (exact type match), else None."""
    for name, (cls, spec, _) in BUILDERS.items():
        if type(module) is cls:
            return {"type": name, "args": spec(module)}
    return None


def base_detector(config: DetectorConfig, spec: BinarizeSpec | None) -> Detector:
    """``build_detector(config)`` with the (deployed) layout applied: the start of every rebuild."""
    detector = build_detector(config)
    if spec is not None:
        apply_layout(detector, spec)
    detector.model.eval()
    return detector


def describe(detector: Detector, spec: BinarizeSpec | None) -> dict[str, Any]:
    """The JSON-ready architecture of a deployed student: detector config, layout and module swaps.

    Args:
        detector: a deployed student (:func:`~detbin.deploy.forms.deployed`) or a real model.
        spec: its deployed layout, or None for a real model.

    Raises:
        ExportError: a module that differs from the core rebuild and is not a core type (its path
            and type are named).
    """
    base = dict(base_detector(detector.config, spec).model.named_modules())
    entries: list[dict[str, Any]] = []
    done: list[str] = []
    for path, module in detector.model.named_modules():
        if not path or any(path.startswith(p + ".") for p in done) or isinstance(module, Quantizer):
            continue
        spec_, ref = module_spec(module), base.get(path)
        if ref is not None and type(ref) is type(module) and (spec_ is None or module_spec(ref) == spec_):
            continue  # as in the core rebuild (containers: their children are compared in turn)
        if spec_ is None:
            raise ExportError(f"{path}: {type(module).__name__} is not a core module and not what the layout "
                              f"builds; a packed student may only swap in {', '.join(BUILDERS)}")
        entries.append({"path": path, **spec_})
        if spec_["type"] != "Sequential":
            done.append(path)
    return {"detector": detector.config.to_dict(), "binarize": None if spec is None else spec.to_dict(),
            "modules": entries}


def _put(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    (model.get_submodule(parent) if parent else model).add_module(child, module)  # appends to a Sequential


def rebuild(architecture: dict[str, Any]) -> Detector:
    """The student's network (random weights, eval mode) from :func:`describe`'s output.

    Raises:
        ExportError: a module type this detbin does not know (a file from a newer version).
    """
    config = DetectorConfig.from_dict(architecture["detector"])
    spec = BinarizeSpec.from_dict(architecture["binarize"]) if architecture.get("binarize") else None
    detector = base_detector(config, spec)
    for entry in architecture.get("modules", []):
        if entry["type"] not in BUILDERS:
            raise ExportError(f"{entry['path']}: unknown module type {entry['type']!r} in the packed file; this "
                              f"detbin knows {', '.join(BUILDERS)} (a file from a newer detbin?)")
        _put(detector.model, entry["path"], BUILDERS[entry["type"]][2](entry["args"]))
    detector.model.eval()
    return detector
