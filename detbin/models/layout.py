"""Binarization layouts: how a real-valued detector becomes its 1-bit student.

A layout is a :class:`BinarizeSpec` (plain values, saved in checkpoints) applied by
:func:`apply_layout`, in this order:

1. make every layer trainable (FrozenBatchNorm2d -> BatchNorm2d);
2. rewrite ResNet blocks into the spec's form (``xnor``, ``bireal``, ``reactnet``);
3. optionally widen FPN lateral 1x1 convs to 3x3 (IDa-Det/LWS-Det necks), the teacher's
   1x1 kernel placed at the centre so the function is unchanged at conversion;
4. swap every conv not matched by the keep-real patterns for a :class:`BinaryConv2d`;
5. replace activations that would feed a binary conv's sign (see
   :func:`~detbin.surgery.fix_activations_before_binary`).

Deterministic given the detector config and the spec, so a checkpoint rebuilds its student.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detbin.binary.blocks import FORMS, convert_resnet
from detbin.models.detector import Detector
from detbin.core.errors import ConfigError, reject_unknown_keys
from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.binary.surgery import binarize, fix_activations_before_binary, matches_any, set_submodule, unfreeze

__all__ = ["BinarizeSpec", "apply_layout", "activation_maker", "widen_fpn_laterals"]


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
    """

    form: str = "reactnet"
    activation: Any = "approx_sign"
    weight: Any = "scaled_sign"
    keep_real: tuple[str, ...] = ()
    default_keep_real: bool = True
    keep_depthwise_real: bool = True
    pad_value: float = 0.0
    fpn_lateral_kernel: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ConfigError(f"binarize.form: unknown form {self.form!r}; valid: {', '.join(FORMS)}")
        if self.fpn_lateral_kernel not in (1, 3):
            raise ConfigError(f"binarize.fpn_lateral_kernel must be 1 or 3, got {self.fpn_lateral_kernel}")
        object.__setattr__(self, "keep_real", tuple(self.keep_real))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for checkpoints."""
        out = dataclasses.asdict(self)
        out["keep_real"] = list(self.keep_real)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BinarizeSpec:
        reject_unknown_keys("binarize", values, (f.name for f in dataclasses.fields(cls)))
        return cls(**values)


def activation_maker(form: str) -> Any:
    """The activation placed where a ReLU would feed a sign: Identity, or RPReLU for ReActNet."""
    return RPReLU if form == "reactnet" else (lambda channels: nn.Identity())


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


def apply_layout(detector: Detector, spec: BinarizeSpec) -> list[str]:
    """Binarize ``detector.model`` in place according to ``spec``.

    Returns:
        Names of the convs that became binary, in registration order.
    """
    model = detector.model
    unfreeze(model)
    make_activation = activation_maker(spec.form)
    if detector.resnet_body is not None:
        convert_resnet(model.get_submodule(detector.resnet_body), spec.form, make_activation)
    if spec.fpn_lateral_kernel == 3:
        widen_fpn_laterals(model)
    keep = (detector.keep_real if spec.default_keep_real else ()) + spec.keep_real

    def choose(name: str, conv: nn.Conv2d) -> nn.Module | None:
        if matches_any(name, keep):
            return None
        if spec.keep_depthwise_real and conv.groups > 1 and conv.groups == conv.in_channels:
            return None
        return BinaryConv2d.from_conv(conv, spec.activation, spec.weight, pad_value=spec.pad_value)

    swapped = binarize(model, choose)
    skip = [detector.resnet_body] if detector.resnet_body else []
    fix_activations_before_binary(model, make_activation, detector.dry_run, skip=skip)
    return swapped
