"""Binarization layouts: how a real-valued detector becomes its 1-bit student.

A layout is a :class:`BinarizeSpec` (plain values, saved in checkpoints) applied by
:func:`apply_layout`, in this order:

1. make every layer trainable (FrozenBatchNorm2d -> BatchNorm2d);
2. rewrite the ResNet body's blocks into the spec's form (the open table of
   :mod:`detbin.binary.blocks`: ``xnor``, ``bireal``, ``reactnet`` ...);
3. optionally widen FPN lateral 1x1 convs to 3x3 (IDa-Det/LWS-Det necks), the teacher's
   1x1 kernel placed at the centre so the function is unchanged at conversion;
4. swap every conv not matched by the keep-real patterns for a :class:`BinaryConv2d`, its
   quantizers from the spec (``rules`` override them per module-name pattern);
5. the activations of the neck and RPN: named by ``neck_activation`` (IDa-Det's PReLU after
   every FPN conv and the RPN conv; LWS-Det's, with the RPN conv as BN -> conv -> BN -> PReLU),
   or else every activation that would feed a binary conv's sign is replaced
   (:func:`~detbin.binary.surgery.fix_activations_before_binary`).

Deterministic given the detector config and the spec, so a checkpoint rebuilds its student.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detbin.binary import quantizers
from detbin.binary.blocks import get_form
from detbin.binary.layers import BinaryConv2d
from detbin.binary.lws_blocks import LWSRPNConv
from detbin.binary.surgery import binarize, fix_activations_before_binary, matches_any, set_submodule, unfreeze
from detbin.core.errors import ConfigError, reject_unknown_keys
from detbin.models.detector import Detector

__all__ = ["BinarizeSpec", "apply_layout", "widen_fpn_laterals", "add_neck_activation", "add_lws_neck"]

_NECK_ACTIVATIONS = (None, "prelu", "lws")


@dataclass(frozen=True)
class BinarizeSpec:
    """What to binarize and how.

    Attributes:
        form: ``xnor`` (block shortcut only), ``bireal`` (a real shortcut per binary conv)
            or ``reactnet`` (Bi-Real + RPReLU); decides the activations too.
        activation: input quantizer spec of every binary conv (e.g. ``approx_sign``, ``rsign``).
        weight: weight quantizer spec (e.g. ``scaled_sign``, ``{"name": "scaled_sign",
            "detach_scale": true}``).
        keep_real: extra module-name patterns kept real, on top of the family defaults.
        default_keep_real: apply the family's defaults (stem, 1x1 downsample, predictors).
        keep_depthwise_real: keep depth-wise convs real (they binarize poorly).
        pad_value: border padding after binarization (0, or -1 as in BiDet).
        fpn_lateral_kernel: 1 (torchvision) or 3 (IDa-Det/LWS-Det binary 3x3 laterals).
        rules: per-module overrides, first match wins: ``{"match": glob, "activation": spec,
            "weight": spec}`` (IDa-Det: ApproxSign instead of RSign in the neck and RPN).
        conv_bias: give every binary conv a real bias (zero-initialised) where the real one had
            none (IDa-Det's BiConv has one).
        neck_activation: ``prelu``: a PReLU after every FPN conv (laterals and outputs) and in
            place of the RPN conv's ReLU (IDa-Det §2.1); ``lws``: the same PReLUs, the RPN conv
            between two BNs (LWS-Det §3.2); None: activations found automatically.
        activation_init: initial slope of those PReLUs (PyTorch's 0.25).
        extra: method-specific values a recipe records with the layout.
    """

    form: str = "reactnet"
    activation: Any = "approx_sign"
    weight: Any = "scaled_sign"
    keep_real: tuple[str, ...] = ()
    default_keep_real: bool = True
    keep_depthwise_real: bool = True
    pad_value: float = 0.0
    fpn_lateral_kernel: int = 1
    rules: tuple[dict[str, Any], ...] = ()
    conv_bias: bool = False
    neck_activation: str | None = None
    activation_init: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_form(self.form)  # unknown forms fail here, with the valid names
        if self.fpn_lateral_kernel not in (1, 3):
            raise ConfigError(f"binarize.fpn_lateral_kernel must be 1 or 3, got {self.fpn_lateral_kernel}")
        if self.neck_activation not in _NECK_ACTIVATIONS:
            raise ConfigError(f"binarize.neck_activation must be one of {_NECK_ACTIVATIONS}, got {self.neck_activation!r}")
        for rule in self.rules:
            if not isinstance(rule, dict) or "match" not in rule or set(rule) - {"match", "activation", "weight"}:
                raise ConfigError(f"binarize.rules: each rule is {{match: GLOB, activation: ..., weight: ...}}, "
                                  f"got {rule!r}")
        object.__setattr__(self, "keep_real", tuple(self.keep_real))
        object.__setattr__(self, "rules", tuple(dict(r) for r in self.rules))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for checkpoints."""
        out = dataclasses.asdict(self)
        out["keep_real"], out["rules"] = list(self.keep_real), [dict(r) for r in self.rules]
        return out

    def quantizers_for(self, name: str) -> tuple[Any, Any]:
        """``(activation spec, weight spec)`` of the conv called ``name`` (the first matching rule wins)."""
        for rule in self.rules:
            if matches_any(name, [rule["match"]]):
                return rule.get("activation", self.activation), rule.get("weight", self.weight)
        return self.activation, self.weight

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BinarizeSpec:
        reject_unknown_keys("binarize", values, (f.name for f in dataclasses.fields(cls)))
        return cls(**values)


def widen_fpn_laterals(model: nn.Module) -> list[str]:
    """Turn the FPN's 1x1 lateral convs into 3x3 (padding 1), kernel embedded at the centre."""
    widened = []
    for name, module in list(model.named_modules()):
        if ".fpn.inner_blocks." in name and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            conv = nn.Conv2d(module.in_channels, module.out_channels, 3, padding=1, bias=module.bias is not None)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[:, :, 1, 1] = module.weight[:, :, 0, 0]
                if module.bias is not None:
                    conv.bias.copy_(module.bias)
            set_submodule(model, name, conv.to(module.weight.device))
            widened.append(name)
    return widened


def add_neck_activation(model: nn.Module, slope: float) -> None:
    """A PReLU after every FPN conv (laterals and outputs) and in place of the RPN conv's ReLU.

    IDa-Det's neck and RPN (methods.md §2.1: ``PReLU(BiConv3x3(...))``), whose binary outputs
    would otherwise reach the next sign unchanged or through a ReLU.
    """
    def prelu(conv: nn.Conv2d) -> nn.PReLU:
        return nn.PReLU(conv.out_channels, init=slope).to(conv.weight.device)

    for block in [*model.backbone.fpn.inner_blocks, *model.backbone.fpn.layer_blocks]:
        block.append(prelu(block[0]))
    conv_block = model.rpn.head.conv[0]
    conv_block[1] = prelu(conv_block[0])


def add_lws_neck(model: nn.Module, slope: float) -> None:
    """LWS-Det's neck and RPN (methods.md §3.2): FPN convs as IDa-Det's, the RPN conv ``BN -> conv -> BN -> PReLU``.

    Raises:
        ConfigError: not a Faster R-CNN with an FPN, or an RPN head with several convs (LWS-Det's has one).
    """
    if not (hasattr(model, "rpn") and hasattr(model.backbone, "fpn")):
        raise ConfigError("binarize.neck_activation lws is LWS-Det's FPN and RPN (§3.2): it needs a Faster R-CNN "
                          f"with an FPN, not a {type(model).__name__}")
    convs = model.rpn.head.conv
    if len(convs) != 1:
        raise ConfigError(f"binarize.neck_activation lws: the RPN head has {len(convs)} convs, LWS-Det's (§3.2) "
                          "has one (build the detector with torchvision's default RPNHead)")
    add_neck_activation(model, slope)
    convs[0] = LWSRPNConv(convs[0], slope)


def _binary_conv(name: str, conv: nn.Conv2d, spec: BinarizeSpec) -> BinaryConv2d:
    activation, weight = spec.quantizers_for(name)
    binary = BinaryConv2d.from_conv(conv, quantizers.get(activation, channels=conv.in_channels),
                                    quantizers.get(weight, channels=conv.out_channels), pad_value=spec.pad_value)
    if spec.conv_bias and binary.bias is None:  # zeros, not a fresh init: the converted function is kept
        binary.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
    return binary


def apply_layout(detector: Detector, spec: BinarizeSpec) -> list[str]:
    """Binarize ``detector.model`` in place according to ``spec``.

    Returns:
        Names of the convs that became binary, in registration order.
    """
    model = detector.model
    unfreeze(model)
    form = get_form(spec.form)
    if detector.resnet_body is not None:
        form.convert(model.get_submodule(detector.resnet_body), form.activation)
    if spec.fpn_lateral_kernel == 3:
        widen_fpn_laterals(model)
    keep = (detector.keep_real + form.keep_real if spec.default_keep_real else ()) + spec.keep_real

    def choose(name: str, conv: nn.Conv2d) -> nn.Module | None:
        if matches_any(name, keep):
            return None
        if spec.keep_depthwise_real and conv.groups > 1 and conv.groups == conv.in_channels:
            return None
        return _binary_conv(name, conv, spec)

    swapped = binarize(model, choose)
    if spec.neck_activation == "prelu":
        add_neck_activation(model, spec.activation_init)
    elif spec.neck_activation == "lws":
        add_lws_neck(model, spec.activation_init)
    else:
        skip = [detector.resnet_body] if detector.resnet_body else []
        fix_activations_before_binary(model, form.activation, detector.dry_run, skip=skip)
    return swapped
