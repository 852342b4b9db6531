"""AutoBiDet's complexity estimator (CES): an SN-GAN-style generator and discriminator.

methods.md §5.4 (paper §3.2.1, Eq. 9 and §4.1 "Implementation details"): the generator
reconstructs the input image from the *detached* high-level feature map through an extra input
conv (instead of a noise vector); the discriminator is a spectral-norm ResNet (Miyato et al. 2018).
The layouts below are the [D] rows of §5.4:

    G: conv3x3(C_f -> 4 ch) -> ResBlock-up x n -> BN -> ReLU -> conv3x3(-> 3) -> tanh, top-left crop
    D: ResBlock-down x k (SN convs, avg-pool) -> ReLU -> global sum pool -> SN-Linear -> logit

``n`` follows from the feature stride and the output scale (SSD300: fc7 at stride 16, output at
1/2 -> 3 up-blocks, 19 -> 38 -> 76 -> 152, cropped to 150; Faster R-CNN C4: stride 16, output at
1/4 -> 2 up-blocks). Images are ``[B, 3, H, W]`` in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from detbin import DetbinError

__all__ = ["CESError", "Discriminator", "Generator", "generator_widths", "output_size", "real_images", "up_blocks"]


class CESError(DetbinError):
    """The complexity estimator cannot be built or run for this detector (AutoBiDet, methods.md §5.4)."""


def up_blocks(feature_stride: int, output_scale: float) -> int:
    """Number of x2 up-blocks from a stride-``feature_stride`` map to an image at ``output_scale``.

    SSD300 fc7: ``up_blocks(16, 1/2) == 3``; Faster R-CNN C4 layer3: ``up_blocks(16, 1/4) == 2``.
    """
    factor = feature_stride * output_scale
    n = round(math.log2(factor)) if factor > 0 else -1
    if n < 0 or not math.isclose(2.0 ** n, factor):
        raise CESError(f"feature stride {feature_stride} x output scale {output_scale} = {factor} is not a "
                       "power of two >= 1; set params.output_scale so that the generator upsamples by 2^n")
    return n


def output_size(input_hw: tuple[int, int], output_scale: float) -> tuple[int, int]:
    """Reconstruction size for a backbone input ``input_hw``: 300x300 at 1/2 -> 150x150, 600x1000 at 1/4 -> 150x250."""
    return round(input_hw[0] * output_scale), round(input_hw[1] * output_scale)


def generator_widths(channels: int, n_up: int) -> list[int]:
    """Channel widths ``[input conv, after up-block 1, ..., after up-block n]``.

    The input conv maps to ``4 ch`` (§5.4); each up-block halves the width, never below ``ch``:
    ``generator_widths(256, 3) == [1024, 512, 256, 256]``.
    """
    widths = [4 * channels]
    for _ in range(n_up):
        widths.append(max(widths[-1] // 2, channels))
    return widths


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


class _UpBlock(nn.Module):
    """SN-GAN generator block: BN-ReLU-up(nearest x2)-conv3x3-BN-ReLU-conv3x3, skip up -> conv1x1."""

    def __init__(self, cin: int, cout: int, sn: bool) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = _maybe_sn(nn.Conv2d(cin, cout, 3, padding=1), sn)
        self.conv2 = _maybe_sn(nn.Conv2d(cout, cout, 3, padding=1), sn)
        self.skip = _maybe_sn(nn.Conv2d(cin, cout, 1), sn)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """G: detached feature map ``[B, C_f, h, w]`` -> image ``[B, 3, H, W]`` in [-1, 1] (§5.4 [D]).

    Args:
        feature_channels: ``C_f`` (SSD300 fc7: 1024; FRCNN-C4 layer3: 256).
        n_up: up-blocks (see :func:`up_blocks`).
        channels: base width ``ch`` (the spec's 256 "increased channels"; 2-8 on a CPU).
        spectral: spectral norm on G's convs as well (SN-GAN/BigGAN practice; off by default).
    """

    def __init__(self, feature_channels: int, n_up: int, channels: int = 256, spectral: bool = False) -> None:
        super().__init__()
        widths = generator_widths(channels, n_up)
        self.input = _maybe_sn(nn.Conv2d(feature_channels, widths[0], 3, padding=1), spectral)
        self.blocks = nn.Sequential(*(_UpBlock(a, b, spectral) for a, b in zip(widths, widths[1:])))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.output = _maybe_sn(nn.Conv2d(widths[-1], 3, 3, padding=1), spectral)
        self.scale = 2 ** n_up

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """Reconstruct at ``size`` (``(H, W)``): upsample by ``2^n``, then crop the top-left ``H x W``.

        The crop is top-left because conv feature cells are aligned to the image's top-left corner
        and torchvision pads batches at the bottom/right.
        """
        h, w = features.shape[-2] * self.scale, features.shape[-1] * self.scale
        if size[0] > h or size[1] > w:
            raise CESError(f"the generator makes {h}x{w} from a {tuple(features.shape[-2:])} map, smaller than the "
                           f"requested {size[0]}x{size[1]}; lower params.output_scale")
        x = self.blocks(self.input(features))
        return torch.tanh(self.output(F.relu(self.bn(x))))[..., : size[0], : size[1]]


class _DownBlock(nn.Module):
    """SN-GAN discriminator block; ``first`` is the 'optimized' block that sees the image (no pre-ReLU)."""

    def __init__(self, cin: int, cout: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        skip = self.skip(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.skip(x), 2)
        return h + skip


class Discriminator(nn.Module):
    """D: image ``[B, 3, H, W]`` -> logit ``[B]``; ``D(x) = sigmoid(logit)`` (§5.4 [D]).

    Widths ``ch, 2 ch, 4 ch, ...`` capped at ``16 ch`` (SN-GAN's 128-px discriminator: 5 blocks).
    Every conv and the linear layer are spectral-normalised.
    """

    def __init__(self, channels: int = 64, blocks: int = 5) -> None:
        super().__init__()
        if blocks < 1:
            raise CESError(f"the discriminator needs >= 1 down-block, got {blocks}")
        widths = [3] + [channels * min(2 ** i, 16) for i in range(blocks)]
        self.blocks = nn.Sequential(*(_DownBlock(a, b, i == 0) for i, (a, b) in enumerate(zip(widths, widths[1:]))))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))

    def forward(self, images: Tensor) -> Tensor:
        h = F.relu(self.blocks(images)).sum(dim=(2, 3))  # global sum pool, as SN-GAN
        return self.linear(h).squeeze(1)


def real_images(batch: Tensor, mean: list[float] | Tensor, std: list[float] | Tensor, size: tuple[int, int]) -> Tensor:
    """The detector's (augmented, transformed) input as GAN reals, ``[B, 3, *size]`` in [-1, 1] (§5.4 [D]).

    Args:
        batch: the backbone input ``[B, 3, H, W]`` normalised as ``(x - mean) / std`` with ``x`` in 0..1
            (torchvision's ``model.transform`` output, padding included).
        mean, std: the transform's ``image_mean`` / ``image_std``.
        size: the generator's output size.

    Un-normalised to 0..1, clamped (photometric augmentation may leave the range), resized with
    area interpolation, mapped by ``2 x - 1``.
    """
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    unit = (batch * std_t + mean_t).clamp(0.0, 1.0)
    return F.interpolate(unit, size=size, mode="area") * 2.0 - 1.0
