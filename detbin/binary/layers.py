"""1-bit layers: a convolution with input and weight quantizers, and ReActNet's RPReLU.

Binary compute here is *simulated*: weights and activations are exactly ±1 (times a scale)
but the convolution itself runs in floating point. The profiler counts it as binary MACs
(BOPs) because the values are binary, not because it runs faster here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detbin.binary import quantizers

__all__ = ["BinaryConv2d", "RPReLU", "is_binary"]


class BinaryConv2d(nn.Conv2d):
    """``conv2d(input_quantizer(x), weight_quantizer(W)) + bias``.

    With :class:`~detbin.quantizers.Identity` quantizers it is exactly ``nn.Conv2d``. The
    latent real weight ``W`` is what the optimizer updates; the quantized weight is recomputed
    on every forward pass.

    Args:
        input_quantizer: spec or instance for activations (``None``: identity).
        weight_quantizer: spec or instance for weights (``None``: identity).
        pad_value: value of the border padding *after* input binarization. 0 is zero padding
            (Bi-Real, ReActNet, IDa-Det); BiDet pads its binarized input with -1 so the
            border is binary too (methods.md §1.1).
        Other arguments as ``nn.Conv2d``.

    Shape:
        ``[N, C_in, H, W] -> [N, C_out, H_out, W_out]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        input_quantizer: Any = None,
        weight_quantizer: Any = None,
        pad_value: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device=device, dtype=dtype,
        )
        self.input_quantizer = quantizers.get(input_quantizer, channels=in_channels)
        self.weight_quantizer = quantizers.get(weight_quantizer, channels=out_channels)
        self.pad_value = float(pad_value)

    @property
    def bits(self) -> tuple[int, int]:
        """``(input bits, weight bits)``, read by the profiler."""
        return (self.input_quantizer.bits, self.weight_quantizer.bits)

    def forward(self, x: Tensor) -> Tensor:
        xq = self.input_quantizer(x)
        wq = self.weight_quantizer(self.weight)
        if self.pad_value != 0.0 and any(self.padding):
            ph, pw = self.padding  # type: ignore[misc]
            xq = F.pad(xq, (pw, pw, ph, ph), value=self.pad_value)
            return F.conv2d(xq, wq, self.bias, self.stride, 0, self.dilation, self.groups)
        return self._conv_forward(xq, wq, self.bias)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, input_quantizer: Any = None, weight_quantizer: Any = None, **kwargs: Any
    ) -> BinaryConv2d:
        """A binary conv with ``conv``'s geometry whose latent weight and bias are copies of it."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"cannot binarize a conv with padding={conv.padding!r}, mode={conv.padding_mode!r}")
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None,
            input_quantizer=input_quantizer, weight_quantizer=weight_quantizer,
            device=conv.weight.device, dtype=conv.weight.dtype, **kwargs,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # type: ignore[union-attr]
        new.weight_quantizer.init_from(new.weight)
        new.train(conv.training)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}" + (f", pad_value={self.pad_value}" if self.pad_value else "")


def is_binary(module: nn.Module) -> bool:
    """True for a conv whose MACs are binary: ``max(input bits, weight bits) == 1`` (larq's rule)."""
    return isinstance(module, BinaryConv2d) and max(module.bits) == 1


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``f(x) = PReLU_c(x - gamma_c) + zeta_c`` (Liu et al., ECCV 2020, Eq. 3).

    Written as ReActNet's code does (``move1 -> PReLU(C) -> move2``): the shifts are added,
    initialised to 0, and the PReLU slopes start at 0.25.

    Shape: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.prelu = nn.PReLU(channels)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(x + self.shift_in) + self.shift_out
