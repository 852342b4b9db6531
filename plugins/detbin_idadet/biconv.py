"""IDa-Det's BiConv weight binarizer with the repository's custom backward (methods.md §2.2).

Forward (``mmcv-0.5.1/mmcv/cnn/bricks/BiConv.py``)::

    W_hat = c * |s| o sign(W)                      c = 0.02, s in R^O learned

Backward, with ``G = dL/dW_hat`` and ``mu = 1e-4`` (the paper's reconstruction weight,
Eq. 6.89, hard-coded ``para_loss`` in the repository)::

    dL/dW   = |s| o G + mu (W - W_hat)
    dL/ds_o = sum_{i,u,v} G W  -  mu sum_{i,u,v} (W - W_hat) c sign(W)

[Q] reproduced on purpose: the first sum multiplies G by ``W`` where the exact chain rule has
``c sign(W) sign(s)``. The ``mu`` terms are the gradient of ``(mu/2) ||W - W_hat||^2`` with
``W_hat`` constant for W and ``|s|`` the variable for s, so the reconstruction pull acts
even when the task gradient G is zero.

The defaults are the repository's; the other options exist to take BiConv apart (issue 16,
``bench/bench_idadet.py --isolation``), each changing one piece:

- ``weight_grad``, the task part of ``dL/dW`` (the ``mu`` pull is added to each):
  ``repo`` ``|s| G``; ``forward`` ``c |s| G``, the plain identity STE through the forward value
  ``c |s| sign(W)`` (the repository's is ``1/c`` = 50x larger); ``identity`` ``G`` (an unscaled
  identity STE, the scale-free gradient of ReActNet's HardBinaryConv without its clip).
- ``scale_grad``: ``repo`` as above; ``exact`` the chain rule of ``W_hat`` and of
  ``(mu/2) ||W - W_hat||^2``: ``c sign(s) sum G sign(W) - mu c sign(s) sum (W - W_hat) sign(W)``.
- ``scale``: ``learned`` (the paper); ``frozen`` (``s`` keeps its initial value, no gradient);
  ``mean_abs`` (XNOR's detached per-channel ``mean|W_o|`` recomputed every step; ``s`` unused).
- ``init``: ``xnor`` ``s_o = mean|W_o| / c`` (so the first ``W_hat`` is the XNOR weight of the
  copied real conv, methods.md §2.1 [D]); ``randn`` ``s ~ N(0, 1)`` (the released layer's own
  init, which its ImageNet-pretrained checkpoint overwrites; half the scales negative).

``sign`` is detbin's (+1 at 0, :func:`detbin.sign`); the released code's ``torch.sign``
gives 0 at 0. ``sign(s)`` in the exact scale gradient is the derivative of ``|s|`` (``torch.sign``,
0 at 0, a valid subgradient).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from detbin import ConfigError, Quantizer, sign

__all__ = ["BiConvWeight", "biconv_weight", "WEIGHT_GRADS", "SCALE_GRADS", "SCALES", "INITS"]

WEIGHT_GRADS = ("repo", "forward", "identity")
SCALE_GRADS = ("repo", "exact")
SCALES = ("learned", "frozen", "mean_abs")
INITS = ("xnor", "randn")


class _BiConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, scale: Tensor, c: float, mu: float, weight_grad: str,  # type: ignore[override]
                scale_grad: str) -> Tensor:
        binary = sign(weight)
        magnitude = scale.abs().view(-1, *([1] * (weight.dim() - 1)))
        binarized = c * magnitude * binary
        ctx.save_for_backward(weight, scale, binary, binarized)
        ctx.c, ctx.mu, ctx.weight_grad, ctx.scale_grad = c, mu, weight_grad, scale_grad
        return binarized

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        weight, scale, binary, binarized = ctx.saved_tensors
        shape = (-1, *([1] * (weight.dim() - 1)))
        magnitude = scale.abs().view(shape)
        residual = weight - binarized
        dims = tuple(range(1, weight.dim()))
        task = {"repo": magnitude * grad, "forward": ctx.c * magnitude * grad, "identity": grad}[ctx.weight_grad]
        grad_weight = task + ctx.mu * residual
        if ctx.scale_grad == "repo":
            grad_scale = (grad * weight).sum(dim=dims) - ctx.mu * (residual * ctx.c * binary).sum(dim=dims)
        else:  # d W_hat / d s = c sign(s) sign(W); d (mu/2)||W - W_hat||^2 / d s = -mu (W - W_hat) c sign(s) sign(W)
            grad_scale = ctx.c * torch.sign(scale) * ((grad - ctx.mu * residual) * binary).sum(dim=dims)
        return grad_weight, grad_scale, None, None, None, None


def biconv_weight(weight: Tensor, scale: Tensor, c: float = 0.02, mu: float = 1e-4, weight_grad: str = "repo",
                  scale_grad: str = "repo") -> Tensor:
    """``c |s| o sign(W)`` with the repository's backward (or the named variant).

    Shapes: ``W [O, I, k, k]``, ``s [O]``; returns ``[O, I, k, k]``.
    """
    return _BiConvFunction.apply(weight, scale, c, mu, weight_grad, scale_grad)


def _check(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigError(f"biconv: {name} must be one of {', '.join(valid)}; got {value!r}")
    return value


class BiConvWeight(Quantizer):
    """The BiConv weight quantizer (1 bit), owning the learned per-channel scale ``s``.

    Args:
        channels: output channels O (``s`` has shape ``[O]``).
        c, mu: BiConv's constant and the reconstruction pull (§2.2).
        init, weight_grad, scale_grad, scale: see the module docstring; the defaults
            (``xnor``, ``repo``, ``repo``, ``learned``) are the paper's BiConv started from a real conv.
    """

    bits = 1

    def __init__(self, channels: int, c: float = 0.02, mu: float = 1e-4, init: Literal["xnor", "randn"] = "xnor",
                 weight_grad: str = "repo", scale_grad: str = "repo", scale: str = "learned") -> None:
        super().__init__()
        self.init = _check("init", init, INITS)
        self.weight_grad = _check("weight_grad", weight_grad, WEIGHT_GRADS)
        self.scale_grad = _check("scale_grad", scale_grad, SCALE_GRADS)
        self.scale_mode = _check("scale", scale, SCALES)
        self.scale = nn.Parameter(torch.ones(channels), requires_grad=self.scale_mode == "learned")
        self.c, self.mu = float(c), float(mu)

    def init_from(self, weight: Tensor) -> None:
        with torch.no_grad():
            if self.init == "randn":  # the released BiConv's torch.randn(out_channels)
                self.scale.copy_(torch.randn(self.scale.shape, device=self.scale.device))
            else:
                self.scale.copy_(weight.abs().mean(dim=tuple(range(1, weight.dim()))) / self.c)

    def _scale(self, weight: Tensor) -> Tensor:
        """``s [O]``; with ``scale: mean_abs`` XNOR's ``mean|W_o| / c``, a constant of the step."""
        if self.scale_mode == "mean_abs":
            return weight.detach().abs().mean(dim=tuple(range(1, weight.dim()))) / self.c
        return self.scale

    def forward(self, weight: Tensor) -> Tensor:
        return biconv_weight(weight, self._scale(weight), self.c, self.mu, self.weight_grad, self.scale_grad)

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(sign(W), c |s|)``: the forward value is ``(c |s|) * sign(W)``, multiplied in this order."""
        return sign(weight), self.c * self._scale(weight).abs().view(-1, *([1] * (weight.dim() - 1)))

    def extra_repr(self) -> str:
        return (f"bits=1, channels={self.scale.numel()}, c={self.c}, mu={self.mu}, init={self.init!r}, "
                f"weight_grad={self.weight_grad!r}, scale_grad={self.scale_grad!r}, scale={self.scale_mode!r}")
