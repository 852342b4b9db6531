"""Deploy forms: a simulated student as the core layers it runs with once trained.

Every 1-bit weight quantizer gives ``deploy(weight) -> (signs, scale)`` with ``scale * signs``
equal to its forward value bit for bit (:meth:`detbin.binary.quantizers.Quantizer.deploy`).
:func:`deployed` makes that the student's state: each binary conv's latent weight becomes its
signs and its weight quantizer a core :class:`~detbin.binary.quantizers.DeployedSign` holding
the scale, so IDa-Det's BiConv, ScaledSign and LearnedScaleSign all come back as the same core
layer and nothing of the training plugin is left on the forward path.

:func:`deployed_spec` is the matching :class:`~detbin.models.layout.BinarizeSpec`: every 1-bit
weight spec replaced by ``deployed_sign``, so ``build_detector(config)`` +
``apply_layout(deployed spec)`` rebuilds the deployed student's structure from core code alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from detbin.binary import quantizers
from detbin.binary.blocks import get_form
from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import DeployedSign, Quantizer
from detbin.core.errors import DetbinError
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec

__all__ = ["ExportError", "check_deploy", "deployed", "deployed_spec", "binary_weight_layers", "input_spec"]


class ExportError(DetbinError):
    """A model cannot be exported, or an exported file cannot be read (the message says why and what to do)."""


def binary_weight_layers(model: nn.Module) -> dict[str, BinaryConv2d]:
    """The convs with 1-bit weights (whatever their input bits), by qualified name, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.bits[1] == 1}


def check_deploy(quantizer: Quantizer, weight: Tensor, name: str = "") -> tuple[Tensor, Tensor | None]:
    """``quantizer.deploy(weight)``, verified: signs exactly ±1, ``scale * signs`` equal to the forward.

    Args:
        quantizer: a 1-bit weight quantizer; weight: its latent weight ``[O, I, kh, kw]``.
        name: the layer, for messages.

    Returns:
        ``(signs [O, I, kh, kw], scale [O, 1, 1, 1] or None)``.

    Raises:
        ExportError: naming the layer, when the quantizer has no deploy form or it breaks the contract.
    """
    with torch.no_grad():
        try:
            signs, scale = quantizer.deploy(weight)
        except TypeError as exc:
            raise ExportError(f"{name}: {exc}") from None
        simulated = quantizer(weight)
        rebuilt = signs if scale is None else scale * signs
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise ExportError(f"{name}: {type(quantizer).__name__}.deploy returned signs that are not all ±1")
    if rebuilt.shape != simulated.shape or rebuilt.dtype != simulated.dtype or not torch.equal(rebuilt, simulated):
        worst = (rebuilt - simulated).abs().max().item() if rebuilt.shape == simulated.shape else float("nan")
        raise ExportError(f"{name}: scale * signs differs from the simulated weight by up to {worst:g}; "
                          f"{type(quantizer).__name__}.deploy does not match its forward (fix deploy)")
    if scale is not None and tuple(scale.shape) != (weight.shape[0], *([1] * (weight.dim() - 1))):
        raise ExportError(f"{name}: deploy scale has shape {tuple(scale.shape)}; expected [O, 1, 1, 1] "
                          f"({weight.shape[0]} output channels)")
    return signs, scale


@torch.no_grad()
def deployed(detector: Detector) -> Detector:
    """A copy of ``detector`` (eval mode) with every 1-bit weight in its deploy form.

    Each binary conv's latent weight becomes ``signs`` (±1) and its weight quantizer a
    :class:`DeployedSign` with the deploy scale, so the forward value is unchanged bit for bit
    (:func:`check_deploy` verifies each layer). Real layers are untouched.

    Raises:
        ExportError: a 1-bit weight quantizer without a valid deploy form.
    """
    out = copy.copy(detector)
    out.model, out.forward_module = copy.deepcopy(detector.model), None
    for name, conv in binary_weight_layers(out.model).items():
        signs, scale = check_deploy(conv.weight_quantizer, conv.weight, name)
        quantizer = DeployedSign(conv.out_channels, scaled=scale is not None).to(conv.weight.device)
        if scale is not None:
            quantizer.scale.copy_(scale)
        conv.weight_quantizer = quantizer
        conv.weight.copy_(signs)
    out.model.eval()
    return out


def _is_core(factory: Any) -> bool:
    return getattr(factory, "__module__", "").startswith("detbin.")


def _deployed_weight(spec: Any, where: str) -> Any:
    """``deployed_sign`` (scaled or not) for a 1-bit weight spec; a real weight spec unchanged."""
    try:
        probe = quantizers.get(spec, channels=2)
    except DetbinError as exc:
        raise ExportError(f"binarize.{where}: {exc}") from None
    if probe.bits != 1:
        return spec
    try:
        scale = probe.deploy(torch.ones(2, 1, 1, 1))[1]
    except TypeError as exc:
        raise ExportError(f"binarize.{where}: {exc}") from None
    return {"name": "deployed_sign", "scaled": scale is not None}


def _core_activation(spec: Any, where: str) -> None:
    try:
        probe = quantizers.get(spec, channels=2)
    except DetbinError as exc:
        raise ExportError(f"binarize.{where}: {exc}") from None
    if not _is_core(type(probe)):
        raise ExportError(f"binarize.{where}: activation quantizer {type(probe).__name__} comes from a plugin; a "
                          "packed model runs with detbin's core only, so its inference form must live in core")


def deployed_spec(spec: BinarizeSpec) -> BinarizeSpec:
    """``spec`` with every 1-bit weight quantizer replaced by ``deployed_sign`` (rules included).

    Raises:
        ExportError: the spec names a block form or an activation quantizer that only a
            plugin provides (a packed model must load with detbin's core alone).
    """
    if not _is_core(get_form(spec.form).convert):
        raise ExportError(f"binarize.form: block form {spec.form!r} comes from a plugin; a packed model needs a "
                          "core form (xnor, bireal, reactnet)")
    _core_activation(spec.activation, "activation")
    rules = []
    for i, rule in enumerate(spec.rules):
        rule = dict(rule)
        if "activation" in rule:
            _core_activation(rule["activation"], f"rules[{i}].activation")
        if "weight" in rule:
            rule["weight"] = _deployed_weight(rule["weight"], f"rules[{i}].weight")
        rules.append(rule)
    values = {**spec.to_dict(), "weight": _deployed_weight(spec.weight, "weight"), "rules": rules}
    return BinarizeSpec.from_dict(values)


_ARGS = {quantizers.SignSTE: ("clip",)}  # constructor arguments read back from an instance (others have none)


def input_spec(quantizer: Quantizer, name: str = "") -> dict[str, Any]:
    """The registry spec (``{"name": ..., **kwargs}``) that rebuilds an input quantizer in core.

    Its learned state (RSign's shift) travels in the state dict; only the constructor is here.

    Raises:
        ExportError: a quantizer that is not a core registry entry (its type is named).
    """
    cls = type(quantizer)
    if _is_core(cls):
        for key in quantizers.names():
            try:
                probe = quantizers.get(key, channels=1)
            except DetbinError:
                continue
            if type(probe) is cls:
                return {"name": key, **{a: getattr(quantizer, a) for a in _ARGS.get(cls, ())}}
    raise ExportError(f"{name}: input quantizer {cls.__name__} is not a core quantizer detbin can rebuild without "
                      "its plugin; keep the layer real or add its inference form to detbin.binary.quantizers")
