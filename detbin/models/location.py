"""Box outputs with a variance: ``(log var, mean)`` per box, sampled in training (BiDet, methods.md §4.4).

BiDet's box branches output 8 numbers per prior/anchor: 4 log-variances, then 4 means (the
released ``bidet_ssd.py`` multibox head, ``rpn.py`` ``RPN_bbox_pred``, ``faster_rcnn.py``
``RCNN_bbox_pred``). The box loss sees a sample

    loc = mu + sample_sigma * exp(log_var / 2) * eps,   eps ~ N(0, I)

with ``sample_sigma`` 0 for SSD (so ``loc = mu``) and 0.001 for Faster R-CNN. At inference the
variance branch is dropped and ``loc = mu`` (paper §3.1.3): :func:`inference_form` turns a
trained student into that form in place (the heads keep their 4 mean rows; detections are
unchanged), which is also what a family builds with ``options.variance: false``.

``eps`` comes from the sampler's own ``torch.Generator``, so a training method can make the noise
a function of ``(seed, iteration)`` (:meth:`LocationSampler.reseed`) and a resumed run draws the
same noise as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detbin.core.errors import ConfigError

__all__ = ["split_location", "sample_location", "LocationSampler", "mean_rows", "mean_half_of", "fill_mean_half",
           "inference_form"]


def split_location(raw: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., 8] -> (log_var [..., 4], mean [..., 4])`` in the release's order."""
    return raw[..., :4], raw[..., 4:]


def sample_location(log_var: Tensor, mean: Tensor, sample_sigma: float, eps: Tensor | None) -> Tensor:
    """``mean + sample_sigma * exp(log_var / 2) * eps`` (``mean`` itself when sigma is 0 or eps absent).

    Args:
        log_var, mean, eps: ``[..., 4]`` each (``eps`` None: no noise).
        sample_sigma: the release's ``sample_sigma`` (SSD 0, Faster R-CNN 0.001).
    """
    if sample_sigma == 0.0 or eps is None:
        return mean
    return mean + sample_sigma * torch.exp(log_var / 2.0) * eps


class LocationSampler(nn.Module):
    """Turns ``[..., 8]`` raw box outputs into the ``[..., 4]`` deltas the box losses see.

    Training mode: ``mean + sample_sigma * sigma * eps`` with ``eps`` from the module's generator
    (nothing drawn when ``sample_sigma == 0``). Eval mode: ``mean``.

    Args:
        sample_sigma: scale of the noise (SSD 0, Faster R-CNN 0.001; a recipe may change it).
        seed: initial seed of the generator.
    """

    def __init__(self, sample_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.sample_sigma = float(sample_sigma)
        self.generator = torch.Generator().manual_seed(int(seed))

    def reseed(self, seed: int, iteration: int) -> None:
        """Seed the noise of one training step from ``(seed, iteration)`` only (exact resume)."""
        self.generator.manual_seed((int(seed) * 1_000_003 + int(iteration)) % (2**63 - 1))

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        """``N(0, I)`` of ``shape`` drawn on the CPU generator, moved to ``like``'s device and dtype."""
        return torch.randn(shape, generator=self.generator).to(device=like.device, dtype=like.dtype)

    def forward(self, raw: Tensor) -> Tensor:
        log_var, mean = split_location(raw)
        if not self.training or self.sample_sigma == 0.0:
            return mean
        return sample_location(log_var, mean, self.sample_sigma, self.noise(mean.shape, mean))

    def extra_repr(self) -> str:
        return f"sample_sigma={self.sample_sigma}"


def mean_rows(boxes: int) -> Tensor:
    """Rows ``8b + 4 .. 8b + 7`` (the means) of an 8-per-box output with ``boxes`` boxes."""
    return (torch.arange(boxes)[:, None] * 8 + 4 + torch.arange(4)[None, :]).flatten()


def mean_half_of(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """A copy of an 8-per-box conv/linear ``layer`` with only its mean rows (4 per box)."""
    rows = mean_rows(layer.weight.shape[0] // 8)
    if isinstance(layer, nn.Conv2d):
        new: nn.Conv2d | nn.Linear = nn.Conv2d(layer.in_channels, rows.numel(), layer.kernel_size, layer.stride,
                                               layer.padding, bias=layer.bias is not None)
    else:
        new = nn.Linear(layer.in_features, rows.numel(), bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[rows])
    return new.to(layer.weight.device)


@torch.no_grad()
def fill_mean_half(dst: nn.Conv2d | nn.Linear, src: nn.Conv2d | nn.Linear, what: str) -> None:
    """Copy a real 4-per-box output ``src`` into the mean rows of an 8-per-box ``dst`` (log var rows keep theirs).

    Raises:
        ConfigError: the shapes do not pair up (different widths or class counts).
    """
    rows = mean_rows(src.weight.shape[0] // 4)
    if dst.weight.shape[0] != 2 * src.weight.shape[0] or dst.weight[rows].shape != src.weight.shape:
        raise ConfigError(f"{what}: the teacher's {tuple(src.weight.shape)} does not fill the mean half of the "
                          f"student's {tuple(dst.weight.shape)}; build both at the same width_mult")
    dst.weight[rows] = src.weight
    if dst.bias is not None and src.bias is not None:
        dst.bias[rows] = src.bias


def inference_form(model: nn.Module) -> nn.Module:
    """The inference form of a student with variance outputs, in place; returns ``model``.

    Paper §3.1.3: "During inference, we drop the network branch of covariance matrix for location
    offset". Every module with a ``to_inference_form()`` method (the heads of BiDet's students)
    keeps its 4 mean rows per box; detections in eval mode are unchanged.
    """
    for module in list(model.modules()):
        convert = getattr(module, "to_inference_form", None)
        if callable(convert):
            convert()
    return model
