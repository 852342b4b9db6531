"""Differentiable binarization search (DBS) as a 1-bit weight quantizer (methods.md §3.3, §3.4).

LWS-Det (Xu et al., CVPR 2021; book Eqs. 6.73-6.74) gives every weight element ``l`` two
architecture logits ``beta+_l, beta-_l``; ``p+- = softmax(beta-, beta+)``, so

    relaxed   w~_l = p+ - p- = tanh((beta+_l - beta-_l) / 2)
    discrete  *w_l = sign(beta+_l - beta-_l)                       (argmax of the two)
    used      w_l  = *w_l + (w~_l - sg(w~_l))                       [D] §3.3: hard forward, soft backward

and the conv's channel scale ``alpha`` (§3.2, channel-wise [D] §3.7) lives here too: the quantizer
returns ``|alpha| o w_used``, and ``conv(x_b, |alpha| o *w) = |alpha| o conv(x_b, *w)`` for a conv
without groups, so this is the release's ``y = conv(x_b, *w) * alpha``.

[D] ``|alpha|`` rather than softplus keeps alpha positive: gradient steps on alpha stay linear
(softplus scales them by ``sigmoid(.) ~ alpha`` at alpha ~ 1e-2, freezing it under SGD 0.004) and
the teacher's ``mean|w|`` is the parameter's initial value as is.

The straight-through sum is written ``*w + (w~ - sg(w~))``: the bracket is exactly 0.0 in IEEE
arithmetic, so the forward is exactly ``+-|alpha|``; ``(*w + w~) - sg(w~)`` would not be.

Deployment (core, no plugin): :meth:`DBSWeight.deploy` gives ``(*w, |alpha|)``, the product of
which is the forward value bit for bit, so a deployed conv is ``weight = *w`` with core
``deployed_sign(|alpha|)``; ``detbin profile`` counts a DBS conv as that deployed conv (1 bit per
weight + O real scales), never its ``2 x O x I x k x k`` search logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detbin import BinaryConv2d, DetbinError, Quantizer, register_quantizer, sign

__all__ = ["CLIP", "DBSWeight", "dbs_convs"]

CLIP = 0.9  # §3.4 [D]: |w~| <= 0.9 at initialisation, so every logit can still be searched


class DBSWeight(Quantizer):
    """DBS weight binarizer with its channel scale ``alpha`` (1 bit; training-only state).

    The logits have the weight's shape, known when :meth:`init_from` sees the latent weight
    (``BinaryConv2d.from_conv`` calls it with the teacher's weight copy). The latent
    ``conv.weight`` is not used after that: the weight is the search state.

    Args:
        channels: output channels O (``alpha`` has shape ``[O]``).
        zero_init: ``|w~|`` given to elements whose teacher weight is exactly 0 (the border of a
            widened 1x1 lateral): these get a random sign, as the paper's ``beta ~ N(0, 1)`` would.

    Shape:
        ``forward(weight [O, I, k, k]) -> [O, I, k, k]`` with values ``+-|alpha_o|``.
    """

    bits = 1

    def __init__(self, channels: int, zero_init: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))
        self.zero_init = float(zero_init)
        self.beta_plus: nn.Parameter | None
        self.beta_minus: nn.Parameter | None
        self.register_parameter("beta_plus", None)
        self.register_parameter("beta_minus", None)

    def init_from(self, weight: Tensor) -> None:
        """§3.4 [D]: ``beta+ - beta- = 2 atanh(clip(w / (3 sigma_w), -0.9, 0.9))``, ``alpha_o = mean|w_o|``.

        ``sigma_w`` is the layer's standard deviation (population) over its non-zero elements and
        ``mean|w_o|`` is over the non-zero elements of channel o: exact zeros are the widened
        lateral's border, which carries no teacher information (for a dense weight both are
        the plain statistics). The logits are split symmetrically, ``beta+- = +-d/2``.
        """
        with torch.no_grad():
            w = weight.detach()
            nonzero = w != 0
            sigma = w[nonzero].std(correction=0) if bool(nonzero.any()) else w.new_tensor(0.0)
            if not bool(sigma > 0):
                sigma = w.abs().max().clamp_min(1e-12)
            relaxed = (w / (3 * sigma)).clamp(-CLIP, CLIP)
            coin = torch.where(torch.rand_like(w) < 0.5, -1.0, 1.0)
            relaxed = torch.where(nonzero, relaxed, self.zero_init * coin)
            half = torch.atanh(relaxed)  # (beta+ - beta-) / 2
            self.beta_plus = nn.Parameter(half.clone())
            self.beta_minus = nn.Parameter(-half)
            count = nonzero.flatten(1).sum(dim=1).clamp_min(1)
            self.alpha.copy_(w.abs().flatten(1).sum(dim=1) / count)

    def _logits(self) -> Tensor:
        if self.beta_plus is None or self.beta_minus is None:
            raise DetbinError("DBSWeight has no search logits yet: build the conv with BinaryConv2d.from_conv "
                              "(it calls init_from with the teacher's weight)")
        return self.beta_plus - self.beta_minus

    def relaxed(self) -> Tensor:
        """``w~ = tanh((beta+ - beta-) / 2)``, shape of the weight."""
        return torch.tanh(self._logits() / 2)

    def signs(self) -> Tensor:
        """``*w`` in {-1, +1} forward; backward ``d w~ / d beta`` (straight through)."""
        relaxed = self.relaxed()
        return sign(self._logits().detach()) + (relaxed - relaxed.detach())

    def scale(self) -> Tensor:
        """``|alpha|`` shaped ``[O, 1, 1, 1]``."""
        return self.alpha.abs().view(-1, 1, 1, 1)

    def forward(self, weight: Tensor) -> Tensor:
        signs = self.signs()
        if signs.shape != weight.shape:
            raise DetbinError(f"DBSWeight logits have shape {tuple(signs.shape)}, the conv weight "
                              f"{tuple(weight.shape)}: the quantizer belongs to another conv")
        return self.scale() * signs.to(weight.dtype)

    @torch.no_grad()
    def deploy(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``(signs in {-1, +1} of weight's shape, scale [O, 1, 1, 1])``; ``scale * signs`` is the forward.

        Before :meth:`init_from` (an export probing the spec's deploy form) the signs are those
        ``init_from(weight)`` would start from, ``sign(weight)``.
        """
        signs = sign(weight) if self.beta_plus is None else sign(self._logits())
        return signs.to(weight.dtype), self.scale().to(weight.dtype).clone()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A quantizer built without init_from (no logits yet) takes their shape from the checkpoint.
        for name in ("beta_plus", "beta_minus"):
            if getattr(self, name) is None and prefix + name in state_dict:
                setattr(self, name, nn.Parameter(torch.empty_like(state_dict[prefix + name])))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"bits=1, channels={self.alpha.numel()}"


def dbs_convs(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """The binary convs of ``model`` whose weight quantizer is DBS, in registration order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, DBSWeight)]


register_quantizer("dbs", DBSWeight, needs_channels=True)
