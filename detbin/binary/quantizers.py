"""Quantizers: small modules that binarize a tensor and carry their bit width.

A quantizer's forward pass is the binarizer; its backward pass is the estimator the paper
chose. Estimators are written as ``y = sg(forward_value - surrogate) + surrogate`` so autograd
differentiates the surrogate while the forward value is exact (Bi-Real and ReActNet write
them the same way). The profiler reads ``bits``; it never guesses from names (larq's rule).

Sign convention: ``sign(x) = +1 if x >= 0 else -1`` (larq's convention; methods.md §1.1 [D]),
so outputs are exactly {-1, +1} and a zero input never becomes a zero activation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from detbin.core.errors import ConfigError, close_matches

__all__ = [
    "Quantizer", "Identity", "SignSTE", "ApproxSign", "RSign", "ScaledSign", "LearnedScaleSign", "DeployedSign",
    "ZeroSignApprox", "sign", "clipped_ste", "get", "names", "register_quantizer",
]


def sign(x: Tensor) -> Tensor:
    """Exact binarization to {-1, +1}: ``+1`` where ``x >= 0``."""
    return (x >= 0).to(x.dtype) * 2 - 1


def clipped_ste(value: Tensor, x: Tensor, clip: float = 1.0) -> Tensor:
    """``value`` forward, gradient ``g * 1[|x| <= clip]`` w.r.t. ``x`` backward.

    Written with an explicit mask because ``clamp``'s gradient is 0 *at* the clip bounds, while
    the estimator is defined with ``<=`` (methods.md §1.2).
    """
    mask = (x.abs() <= clip).to(x.dtype)
    return value.detach() + (x - x.detach()) * mask


class Quantizer(nn.Module):
    """Base class. ``bits`` is 1 for binarizers and 32 for the identity.

    A 1-bit *weight* quantizer also gives its deploy form (:meth:`deploy`): the signs and the
    per-output-channel scale whose product is exactly its forward value, so a packed or exported
    student needs no training code (:class:`DeployedSign` runs it).
    """

    bits: int = 32

    def init_from(self, weight: Tensor) -> None:
        """Initialise state from the latent weight it will quantize (default: nothing)."""

    def derived_scales(self, weight_shape: torch.Size) -> int:
        """Real values a deployed layer stores that are not parameters (XNOR's alpha: one per channel)."""
        return 0

    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(signs, scale)`` with ``scale * signs == self(weight)`` exactly, for a 1-bit weight quantizer.

        Args:
            weight: the latent weight ``[O, I, k, k]``.

        Returns:
            signs in {-1, +1} of ``weight``'s shape, and the scale ``[O, 1, 1, 1]`` (or None
            when the forward value is the signs themselves).
        """
        raise TypeError(f"{type(self).__name__} (bits={self.bits}) is not a 1-bit weight quantizer; it has no "
                        "deploy form")

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class Identity(Quantizer):
    """No quantization (32-bit). Used for real-valued inputs or weights."""

    bits = 32

    def forward(self, x: Tensor) -> Tensor:
        return x


class SignSTE(Quantizer):
    """Sign with the clipped straight-through estimator (BNN, XNOR-Net).

    Forward ``sign(x)``; backward ``dL/dx = g * 1[|x| <= clip]`` (methods.md §1.2, first row;
    for weights, §1.3 "BNN" and Bi-Real's ``clamp(W, -1, 1)``).
    """

    bits = 1

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = float(clip)

    def forward(self, x: Tensor) -> Tensor:
        return clipped_ste(sign(x), x, self.clip)

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(weight), None

    def extra_repr(self) -> str:
        return f"bits=1, clip={self.clip}"


def approx_sign_surrogate(x: Tensor) -> Tensor:
    """Bi-Real's piecewise polynomial F(x) = 2x - x|x| on [-1, 1], ±1 outside (methods.md §1.2)."""
    xc = x.clamp(-1.0, 1.0)
    return 2 * xc - xc * xc.abs()


class ApproxSign(Quantizer):
    """Sign with Bi-Real's ApproxSign estimator (Liu et al., ECCV 2018, Eq. 4).

    Backward: ``g * (2 + 2x)`` on [-1, 0), ``g * (2 - 2x)`` on [0, 1), 0 elsewhere.
    """

    bits = 1

    def forward(self, x: Tensor) -> Tensor:
        surrogate = approx_sign_surrogate(x)
        return (sign(x) - surrogate).detach() + surrogate


class ZeroSignApprox(Quantizer):
    """``torch.sign`` forward (0 at exactly 0) with the ApproxSign backward (methods.md §1.1-1.2).

    Why a second sign: detbin's :func:`sign` maps 0 to +1, which is measure-zero everywhere except
    behind a ReLU. BiDet's SSD has one binary conv fed by a ReLU (``extras.0`` reads
    ``ReLU(BN(conv7))``): the release's ``torch.sign`` binarizes that input to {0, +1}, while
    :func:`sign` would make it a constant +1 and cut sources 3-6 off from the image. The input is
    still one bit per activation ({0, 1}: an AND-popcount instead of XNOR at deployment).
    """

    bits = 1

    def forward(self, x: Tensor) -> Tensor:
        surrogate = approx_sign_surrogate(x)
        return (torch.sign(x) - surrogate).detach() + surrogate


class RSign(Quantizer):
    """ReActNet's RSign: ``sign(x + b_c)`` with a learnable per-channel shift (Liu et al., ECCV 2020).

    The shift is ReActNet's ``LearnableBias`` (``move0``), initialised to 0; the backward
    estimator is ApproxSign, as in the official ``2_step2/birealnet.py``.

    Args:
        channels: number of input channels C; the shift has shape ``[1, C, 1, 1]``.
    """

    bits = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        shifted = x + self.shift
        surrogate = approx_sign_surrogate(shifted)
        return (sign(shifted) - surrogate).detach() + surrogate

    def extra_repr(self) -> str:
        return f"bits=1, channels={self.shift.shape[1]}"


def _channel_mean_abs(w: Tensor) -> Tensor:
    """``alpha_o = mean_{i,u,v} |W_o|`` broadcastable to ``w`` (shape ``[O, 1, 1, 1]``)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


class ScaledSign(Quantizer):
    """XNOR-Net weight binarization ``W_hat_o = alpha_o * sign(W_o)``, ``alpha_o = ||W_o||_1 / n``.

    Args:
        detach_scale: if True, ``alpha`` is a constant (Bi-Real/ReActNet ``HardBinaryConv``:
            ``sg(alpha * sign(W) - clamp(W)) + clamp(W)``, so ``dL/dW = g * 1[|W| <= 1]``);
            if False, the gradient also flows through ``alpha`` (XNOR-Net paper, BiDet).
        ste: estimator through ``sign``: ``"clip"`` (``1[|W| <= 1]``) or ``"identity"`` (BiDet).
    """

    bits = 1

    def __init__(self, detach_scale: bool = False, ste: str = "clip") -> None:
        super().__init__()
        if ste not in ("clip", "identity"):
            raise ConfigError(f"scaled_sign: ste must be 'clip' or 'identity', got {ste!r}")
        self.detach_scale = bool(detach_scale)
        self.ste = ste

    def _ste(self, value: Tensor, w: Tensor) -> Tensor:
        return clipped_ste(value, w) if self.ste == "clip" else value.detach() + (w - w.detach())

    def forward(self, w: Tensor) -> Tensor:
        if self.detach_scale:
            # HardBinaryConv: the forward value is alpha*sign(W) but the gradient is the clip's,
            # not scaled by alpha (liuzechun/Bi-Real-net birealnet.py).
            return self._ste(_channel_mean_abs(w).detach() * sign(w), w)
        return _channel_mean_abs(w) * self._ste(sign(w), w)

    def derived_scales(self, weight_shape: torch.Size) -> int:
        return int(weight_shape[0])

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(weight), _channel_mean_abs(weight)

    def extra_repr(self) -> str:
        return f"bits=1, detach_scale={self.detach_scale}, ste={self.ste!r}"


class LearnedScaleSign(Quantizer):
    """``W_hat_o = |alpha_o| * sign(W_o)`` with a learnable per-output-channel scale.

    ``alpha`` is initialised to ``mean|W_o|`` of the weight it is attached to (the XNOR
    optimum), so conversion from a real teacher starts at the XNOR point. Clip-STE on W.

    Args:
        channels: number of output channels O.
    """

    bits = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def init_from(self, weight: Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(_channel_mean_abs(weight).flatten())

    def forward(self, w: Tensor) -> Tensor:
        return self.scale.abs().view(-1, *([1] * (w.dim() - 1))) * clipped_ste(sign(w), w)

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(weight), self.scale.abs().view(-1, *([1] * (weight.dim() - 1))).clone()

    def extra_repr(self) -> str:
        return f"bits=1, channels={self.scale.numel()}"


class DeployedSign(Quantizer):
    """A deployed 1-bit weight: ``scale * sign(W)`` with a fixed (buffer) scale.

    What every 1-bit weight quantizer becomes in a packed or exported student: the latent weight
    holds the signs (±1) and ``scale`` the per-output-channel magnitude from the training
    quantizer's :meth:`Quantizer.deploy`, so the forward value is the simulated one bit for bit.

    Args:
        channels: output channels O; ``scaled`` False keeps the forward value ``sign(W)``.
    """

    bits = 1

    def __init__(self, channels: int, scaled: bool = True) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels, 1, 1, 1) if scaled else None)

    def forward(self, w: Tensor) -> Tensor:
        return sign(w) if self.scale is None else self.scale * sign(w)

    def derived_scales(self, weight_shape: torch.Size) -> int:
        return 0 if self.scale is None else int(weight_shape[0])

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(weight), None if self.scale is None else self.scale.clone()

    def extra_repr(self) -> str:
        return f"bits=1, scaled={self.scale is not None}"


# name -> (factory, needs channels). Names are what YAML recipes spell; plugins add theirs
# with register_quantizer (IDa-Det's biconv, LWS-Det's searched signs).
_REGISTRY: dict[str, tuple[Callable[..., Quantizer], bool]] = {
    "identity": (Identity, False),
    "sign": (SignSTE, False),
    "approx_sign": (ApproxSign, False),
    "zero_sign_approx": (ZeroSignApprox, False),
    "rsign": (RSign, True),
    "scaled_sign": (ScaledSign, False),
    "learned_scale_sign": (LearnedScaleSign, True),
    "deployed_sign": (DeployedSign, True),
}


def register_quantizer(name: str, factory: Callable[..., Quantizer], needs_channels: bool = False,
                       replace: bool = False) -> None:
    """Make ``name`` a quantizer spec YAML files and layouts may use.

    Args:
        factory: called with the spec's keyword arguments (and ``channels=`` when
            ``needs_channels``: input channels for an activation quantizer, output channels for a
            weight quantizer).
        replace: overwrite a name already registered (else that is an error).

    Raises:
        ConfigError: the name is taken by another factory.
    """
    current = _REGISTRY.get(name)
    if current is not None and current[0] is not factory and not replace:
        raise ConfigError(f"quantizer {name!r} is already registered ({current[0].__name__})")
    _REGISTRY[name] = (factory, needs_channels)


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(spec: str | Mapping[str, Any] | Quantizer | None, channels: int | None = None) -> Quantizer:
    """Build a quantizer from a name, a ``{"name": ..., **kwargs}`` mapping or an instance.

    Args:
        spec: ``None`` gives :class:`Identity`; an instance is returned unchanged.
        channels: channel count for quantizers with per-channel state (``rsign``: input
            channels; ``learned_scale_sign``: output channels).

    Raises:
        ConfigError: unknown name (the valid names are listed) or bad arguments.
    """
    if spec is None:
        return Identity()
    if isinstance(spec, Quantizer):
        return spec
    kwargs: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name", "")
    if spec not in _REGISTRY:
        raise ConfigError(
            f"unknown quantizer {spec!r}{close_matches(str(spec), _REGISTRY)}; valid: {', '.join(names())}"
        )
    factory, needs_channels = _REGISTRY[spec]
    if needs_channels:
        if channels is None:
            raise ConfigError(f"quantizer {spec!r} needs a channel count")
        kwargs["channels"] = channels
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"quantizer {spec!r}: bad arguments {kwargs}: {exc}") from None
