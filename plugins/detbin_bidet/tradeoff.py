"""AutoBiDet's per-image information-bottleneck trade-off beta(x) and how it weights the loss.

methods.md §5.2 (paper Eq. 10): three transforms of the discriminator probability ``d = D(G(f))``,

    T_lin(d) = delta_1 + theta_1 d,   T_exp(d) = delta_2 exp(theta_2 d),   T_sin(d) = delta_3 + theta_3 sin(pi d / 2)

the sine form with delta_3 = 10, theta_3 = 5 being the paper's default (beta in [10, 15], 10 at d = 0).
The paper's Appendix B.3 (the linear/exponential constants) is unavailable; the [D] defaults below
give the other two the same range [10, 15], so the Table 1 ablation compares shapes, not ranges.

methods.md §5.3 [D]: ``beta(x) = sg(T(D(G(sg(f(x))))))`` enters per image as

    L(x) = L_det(x) + (1 / beta(x)) L_reg(x) + gamma L_CSOP(x)                  ("inverse_reg", default)
    L(x) = beta(x) L_det(x) + L_reg(x) + gamma' L_CSOP(x)                       ("literal", ablation)

and for Faster R-CNN 1/beta(x) multiplies both the RPN and the RoI compression term of image x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from detbin import ConfigError

__all__ = ["DEFAULT_CONSTANTS", "Mode", "Transform", "WeightedTerm", "make_transform", "tradeoff_terms"]

TransformName = Literal["sine", "linear", "exp"]
Mode = Literal["inverse_reg", "literal"]

# (delta, theta) per transform. sine: the paper's (§4.1). linear/exp: [D] same range [10, 15].
DEFAULT_CONSTANTS: dict[str, tuple[float, float]] = {
    "sine": (10.0, 5.0),
    "linear": (10.0, 5.0),
    "exp": (10.0, math.log(1.5)),
}


@dataclass(frozen=True)
class Transform:
    """One of Eq. 10's transforms ``T: [0, 1] -> beta`` (methods.md §5.2)."""

    name: TransformName
    delta: float
    theta: float

    def __call__(self, d: Tensor) -> Tensor:
        """``beta = T(d)`` elementwise for discriminator probabilities ``d`` (any shape)."""
        if self.name == "sine":
            return self.delta + self.theta * torch.sin(0.5 * math.pi * d)
        if self.name == "linear":
            return self.delta + self.theta * d
        return self.delta * torch.exp(self.theta * d)

    @property
    def reference(self) -> float:
        """``T(0) = delta`` for all three forms: the beta of a "hardest" image (BiDet's fixed 10 by default)."""
        return self.delta


def make_transform(name: str, delta: float | None = None, theta: float | None = None) -> Transform:
    """A transform by name, constants defaulting to :data:`DEFAULT_CONSTANTS`."""
    if name not in DEFAULT_CONSTANTS:
        raise ConfigError(f"params.transform: unknown transform {name!r}; choose one of {sorted(DEFAULT_CONSTANTS)}")
    d0, t0 = DEFAULT_CONSTANTS[name]
    delta, theta = d0 if delta is None else delta, t0 if theta is None else theta
    transform = Transform(name, delta, theta)  # type: ignore[arg-type]
    if transform.delta <= 0:
        raise ConfigError(f"params.delta: beta = T(0) = {transform.delta} must be > 0 (it divides the reg term)")
    return transform


@dataclass(frozen=True)
class WeightedTerm:
    """A per-image compression term and BiDet's weight on it after the warm-up.

    Attributes:
        values: ``[B]`` the term of each image (SSD: ``(1/6) sum_k mean(F_k[x]^2)``; FRCNN: ``mean(R[x]^2)``
            or the mean over image x's RoIs of ``mean(h^2)``), with grad.
        weight: BiDet's constant weight (SSD 0.1 = 1/10; FRCNN rpn 0.5, head 0.02, methods.md §4.4).
    """

    values: Tensor
    weight: float


def tradeoff_terms(beta: Tensor, reg: Mapping[str, WeightedTerm], prior: Mapping[str, tuple[Tensor, float]], *,
                   reference: float, mode: Mode = "inverse_reg", det_per_image: Tensor | None = None,
                   literal_prior_scale: float | None = None) -> dict[str, Tensor]:
    """The extra loss terms of one batch, to be added to the trainer's ``sum(task losses)`` (methods.md §5.3).

    Args:
        beta: ``[B]`` detached ``beta(x)``.
        reg: compression terms by name, per image.
        prior: (C-)SOP terms by name: ``(batch value, gamma)``; not weighted by beta in either mode.
        reference: ``beta_ref = T(0)``. [D] a term's weight on image x is ``w_BiDet * beta_ref / beta(x)``:
            for SSD (w = 0.1 = 1/10, beta_ref = 10) exactly §5.3's ``1/beta(x)``; for FRCNN it keeps the
            repository's per-branch weights as the operating point at D = 0 ("keeps BiDet's operating point").
        mode: ``inverse_reg`` (the [D]) or ``literal`` (``beta(x) L_det(x) + ...``, ablation).
        det_per_image: ``[B]`` per-image contributions to the batch detection loss (they sum to it), with grad;
            required by ``literal``.
        literal_prior_scale: ``gamma' / gamma`` in ``literal`` mode; default ``beta_ref``, so that at D = 0 the
            literal loss is exactly ``beta_ref`` times the default one.

    Returns:
        ``{name: scalar}``; ``literal`` adds ``task_beta = sum_x (beta(x) - 1) det(x)`` so that
        ``sum(task) + task_beta = sum_x beta(x) det(x)``. Reg terms are means over the batch (§5.3).
    """
    if beta.requires_grad:
        raise ConfigError("beta(x) must be detached (methods.md §5.3: stop-gradient is essential)")
    out: dict[str, Tensor] = {}
    if mode == "inverse_reg":
        for name, term in reg.items():
            out[name] = (term.weight * reference / beta * term.values).mean()
        for name, (value, gamma) in prior.items():
            out[name] = gamma * value
        return out
    if mode != "literal":
        raise ConfigError(f"params.weighting: unknown mode {mode!r}; choose inverse_reg or literal")
    if det_per_image is None:
        raise ConfigError("params.weighting=literal needs per-image detection losses, which this detector's "
                          "parts do not provide; use weighting: inverse_reg")
    out["task_beta"] = ((beta - 1.0) * det_per_image).sum()
    for name, term in reg.items():
        out[name] = term.weight * reference * term.values.mean()
    scale = reference if literal_prior_scale is None else literal_prior_scale
    for name, (value, gamma) in prior.items():
        out[name] = scale * gamma * value
    return out
