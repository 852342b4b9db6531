"""Does D separate easy from hard images? The paper's own argument, measured (issue 13, methods.md §5.1).

The paper claims (Appendix C, unavailable) that ``D(G(f(x)))`` correlates with the image complexity
``C(x) = inf_w L(p(l, c | f))`` (Eq. 8), i.e. *negatively* with the per-image detection loss of a
trained detector. :func:`complexity_correlation` reports Pearson's r and Spearman's rho of the two;
Spearman ranks with ties averaged (no scipy dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detbin import ConfigError

__all__ = ["complexity_correlation", "pearson", "per_image_detection_losses", "rankdata", "spearman"]


def _vector(values: Sequence[float] | Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).flatten()


def rankdata(values: Sequence[float] | Tensor) -> Tensor:
    """1-based ranks, ties given the mean of the ranks they span: ``[3, 1, 3, 2] -> [3.5, 1, 3.5, 2]``."""
    x = _vector(values)
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start: end + 1]] = (start + end) / 2.0 + 1.0  # mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def pearson(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Pearson's r in float64; NaN when either input is constant (r is undefined there)."""
    a, b = _vector(x), _vector(y)
    if len(a) != len(b) or len(a) < 2:
        raise ConfigError(f"correlation needs two sequences of equal length >= 2, got {len(a)} and {len(b)}")
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else math.nan


def spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman's rho: Pearson's r of the tie-averaged ranks."""
    return pearson(rankdata(x), rankdata(y))


def complexity_correlation(d_probabilities: Sequence[float] | Tensor,
                           detection_losses: Sequence[float] | Tensor) -> dict[str, float]:
    """``{"pearson", "spearman", "n"}`` of per-image ``D(G(f(x)))`` against per-image detection losses.

    The paper's claim predicts both correlations negative (easy image: high D, low loss).
    """
    return {"pearson": pearson(d_probabilities, detection_losses),
            "spearman": spearman(d_probabilities, detection_losses), "n": float(len(_vector(d_probabilities)))}


@torch.no_grad()
def per_image_detection_losses(model: nn.Module, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
                               ) -> Tensor:
    """Sum of a torchvision detector's losses for each image alone, ``[N]``.

    The model runs in training mode (only then does torchvision return losses) with every BatchNorm
    in eval mode, one image per call, so an image's loss does not depend on its batch mates and the
    running statistics are untouched. Modes are restored afterwards.
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        return torch.stack([sum(model([image], [target]).values()) for image, target in zip(images, targets)])
    finally:
        for m, mode in modes.items():
            m.training = mode
