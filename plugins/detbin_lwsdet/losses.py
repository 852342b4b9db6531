"""LWS-Det's per-layer losses (methods.md §3.3; book Eqs. 6.67, 6.69, 6.71, 6.75, 6.76).

For binary layer i with teacher input ``a`` (real), teacher weight ``w`` (real), student input
``x`` (before the input quantizer), ``a^ = sign(x)``, searched signs ``*w`` and scale ``alpha``:

* angular (Eqs. 6.71, 6.75), per output element (o, p) [D]::

      cos   = (a (*) w)[o, p]  / (||w_o|| ||patch_p(a)||),     ||patch|| = sqrt(conv(a^2, ones_{I x k x k}))
      cos^  = (a^ (*) *w)[o, p] / (sqrt(I k^2) ||patch_p(a^)||)
      L_ang = mean_{b, o, p} (cos - cos^)^2

* amplitude (Eq. 6.76 = E_i of Eq. 6.69), gradient to alpha only [D]::

      L_amp = mean_{b, o, p} ((a (*) w)[o, p] - alpha_o (a^ (*) *w)[o, p])^2      (*w, a^ constants)

* weight reconstruction (Eq. 6.67): ``L_w = mean_{o, i, u, v} (w - alpha_o *w)^2``.

Gradients [D]: ``a^`` is detached (each layer's loss is local to the layer), the teacher side is
constant, ``*w`` is DBS's straight-through sign (so L_ang and L_w reach beta), alpha reaches
L_amp and L_w. Convolutions use no bias: the angle is between the weight and the patch. All
terms are computed in float32 outside autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detbin import DetbinError, sign

__all__ = ["ConvGeometry", "patch_norm", "row_norm", "widen_kernel", "angular_loss", "amplitude_loss",
           "weight_reconstruction", "layer_losses"]

EPS = 1e-12  # a patch or weight of norm 0 has a zero numerator too: its cosine is 0


@dataclass(frozen=True)
class ConvGeometry:
    """The student conv's ``stride, padding, dilation`` (``groups == 1``), used on both sides."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        if conv.groups != 1 or isinstance(conv.padding, str):
            raise DetbinError(f"LWS layer losses need a dense conv with numeric padding; got groups={conv.groups}, "
                              f"padding={conv.padding!r}")
        return cls(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))  # type: ignore[arg-type]

    def conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)


def patch_norm(x: Tensor, kernel_size: Sequence[int], geometry: ConvGeometry) -> Tensor:
    """``||patch_p(x)||_2`` at every output position: ``sqrt(conv(x^2, ones_{I x kh x kw}))``, ``[B, 1, H', W']``.

    Zero padding enters as zeros, as it does in the conv itself.
    """
    ones = x.new_ones(1, x.shape[1], *kernel_size)
    return geometry.conv(x * x, ones).clamp_min(0).sqrt()


def row_norm(weight: Tensor) -> Tensor:
    """``||w_o||_2`` per output channel, ``[O]`` (``sqrt(I k^2)`` for +-1 weights)."""
    return weight.flatten(1).pow(2).sum(dim=1).sqrt()


def widen_kernel(weight: Tensor, kernel_size: Sequence[int]) -> Tensor:
    """A 1x1 kernel embedded at the centre of a ``kh x kw`` one (the widened lateral's teacher, [D]).

    The teacher's 1x1 lateral and its widened form compute the same function, so the layer
    losses of the student's 3x3 lateral compare against the teacher in the student's geometry.
    """
    if tuple(weight.shape[-2:]) == tuple(kernel_size):
        return weight
    if tuple(weight.shape[-2:]) != (1, 1):
        raise DetbinError(f"teacher kernel {tuple(weight.shape[-2:])} vs student {tuple(kernel_size)}: LWS-Det "
                          "needs a same-topology teacher (methods.md §3.3)")
    out = weight.new_zeros(*weight.shape[:2], *kernel_size)
    out[:, :, kernel_size[0] // 2, kernel_size[1] // 2] = weight[:, :, 0, 0]
    return out


def _cosine(x: Tensor, weight: Tensor, geometry: ConvGeometry, weight_norm: Tensor) -> tuple[Tensor, Tensor]:
    """``(conv(x, w), conv(x, w) / (||w_o|| ||patch_p(x)||))``, both ``[B, O, H', W']``."""
    out = geometry.conv(x, weight)
    denominator = weight_norm.view(1, -1, 1, 1) * patch_norm(x, weight.shape[-2:], geometry)
    return out, out / denominator.clamp_min(EPS)


def _terms(teacher_input: Tensor, teacher_weight: Tensor, student_input: Tensor, signs: Tensor,
           geometry: ConvGeometry) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher output, L_ang and the student's unscaled binary output (with the STE graph)."""
    with torch.no_grad():
        a, w = teacher_input.float(), teacher_weight.float()
        teacher_out, teacher_cos = _cosine(a, w, geometry, row_norm(w))
    a_hat = sign(student_input.detach().float())
    signs = signs.float()
    student_out, student_cos = _cosine(a_hat, signs, geometry, row_norm(signs.detach()))
    return teacher_out, (teacher_cos - student_cos).pow(2).mean(), student_out


def _fp32(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, enabled=False)


def angular_loss(teacher_input: Tensor, teacher_weight: Tensor, student_input: Tensor, signs: Tensor,
                 geometry: ConvGeometry) -> Tensor:
    """L_ang of one layer (Eq. 6.75, per-element cosine [D] §3.3); scalar, mean over (b, o, p).

    Args:
        teacher_input: ``a [B, I, H, W]``, the teacher conv's input.
        teacher_weight: ``w [O, I, k, k]``, the teacher conv's weight.
        student_input: ``[B, I, H, W]``, the student conv's input before binarization.
        signs: ``*w [O, I, k, k]`` in {-1, +1} (DBS's straight-through signs carry the gradient).
        geometry: the student conv's stride, padding and dilation.
    """
    with _fp32(signs.device):
        return _terms(teacher_input, teacher_weight, student_input, signs, geometry)[1]


def amplitude_loss(teacher_input: Tensor, teacher_weight: Tensor, student_input: Tensor, signs: Tensor,
                   alpha: Tensor, geometry: ConvGeometry) -> Tensor:
    """L_amp of one layer (Eq. 6.76): ``mean (a (*) w - alpha o (a^ (*) *w))^2``, gradient to ``alpha [O]`` only."""
    with _fp32(signs.device), torch.no_grad():
        teacher_out = geometry.conv(teacher_input.float(), teacher_weight.float())
        student_out = geometry.conv(sign(student_input.float()), signs.float())
    with _fp32(alpha.device):
        return (teacher_out - alpha.float().view(1, -1, 1, 1) * student_out).pow(2).mean()


def weight_reconstruction(teacher_weight: Tensor, signs: Tensor, alpha: Tensor) -> Tensor:
    """L_w of one layer (Eq. 6.67): ``mean_{o,i,u,v} (w - alpha_o *w)^2`` (gradient to alpha and, via STE, beta)."""
    with _fp32(signs.device):
        return (teacher_weight.float() - alpha.float().view(-1, 1, 1, 1) * signs.float()).pow(2).mean()


def layer_losses(teacher_weight: Tensor, teacher_inputs: Sequence[Tensor], student_inputs: Sequence[Tensor],
                 signs: Tensor, alpha: Tensor, geometry: ConvGeometry) -> dict[str, Tensor]:
    """``{"ang", "amp", "w"}`` of one layer, sharing the convolutions between L_ang and L_amp.

    A conv called several times per forward (the RPN conv, once per FPN level) contributes the
    mean over its calls [D], each call a mean over (b, o, p); inputs pair up in call order.
    A teacher 1x1 kernel is widened to the student's kernel (:func:`widen_kernel`).
    """
    if len(teacher_inputs) != len(student_inputs) or not teacher_inputs:
        raise DetbinError(f"input taps: teacher called {len(teacher_inputs)} times, student "
                          f"{len(student_inputs)}; both must run the same layers on the same batch")
    weight = widen_kernel(teacher_weight.detach(), signs.shape[-2:])
    with _fp32(signs.device):
        angular, amplitude = [], []
        scale = alpha.float().view(1, -1, 1, 1)
        for a, x in zip(teacher_inputs, student_inputs):
            teacher_out, ang, student_out = _terms(a, weight, x, signs, geometry)
            angular.append(ang)
            amplitude.append((teacher_out - scale * student_out.detach()).pow(2).mean())
    return {"ang": torch.stack(angular).mean(), "amp": torch.stack(amplitude).mean(),
            "w": weight_reconstruction(weight, signs, alpha)}
