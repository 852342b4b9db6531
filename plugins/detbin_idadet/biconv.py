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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detbin import Quantizer, sign

__all__ = ["BiConvWeight", "biconv_weight"]


class _BiConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, scale: Tensor, c: float, mu: float) -> Tensor:  # type: ignore[override]
        binary = sign(weight)
        magnitude = scale.abs().view(-1, *([1] * (weight.dim() - 1)))
        binarized = c * magnitude * binary
        ctx.save_for_backward(weight, scale, binary, binarized)
        ctx.c, ctx.mu = c, mu
        return binarized

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        weight, scale, binary, binarized = ctx.saved_tensors
        magnitude = scale.abs().view(-1, *([1] * (weight.dim() - 1)))
        residual = weight - binarized
        dims = tuple(range(1, weight.dim()))
        grad_weight = magnitude * grad + ctx.mu * residual
        grad_scale = (grad * weight).sum(dim=dims) - ctx.mu * (residual * ctx.c * binary).sum(dim=dims)
        return grad_weight, grad_scale, None, None


def biconv_weight(weight: Tensor, scale: Tensor, c: float = 0.02, mu: float = 1e-4) -> Tensor:
    """``c |s| o sign(W)`` with the repository's backward. Shapes: ``W [O, I, k, k]``, ``s [O]``."""
    return _BiConvFunction.apply(weight, scale, c, mu)


class BiConvWeight(Quantizer):
    """The BiConv weight quantizer (1 bit), owning the learned per-channel scale ``s``.

    ``init_from`` sets ``s_o = mean|W_o| / c`` so the first ``W_hat`` is the XNOR weight of the
    real teacher's conv (methods.md §2.1, the [D] conversion from a real or HardBinaryConv layer).
    """

    bits = 1

    def __init__(self, channels: int, c: float = 0.02, mu: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.c, self.mu = float(c), float(mu)

    def init_from(self, weight: Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(weight.abs().mean(dim=tuple(range(1, weight.dim()))) / self.c)

    def forward(self, weight: Tensor) -> Tensor:
        return biconv_weight(weight, self.scale, self.c, self.mu)

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(sign(W), c |s|)``: the forward value is ``(c |s|) * sign(W)``, multiplied in this order."""
        return sign(weight), self.c * self.scale.abs().view(-1, *([1] * (weight.dim() - 1)))

    def extra_repr(self) -> str:
        return f"bits=1, channels={self.scale.numel()}, c={self.c}, mu={self.mu}"
