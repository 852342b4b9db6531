"""The ``lws`` binary form: LWS-Det's ResNet blocks and RPN conv (methods.md §3.2).

Core code: a trained or exported LWS-Det student runs from these modules and core quantizers
alone (the ``lws-det`` plugin only adds its training state, the DBS search logits). Every
binary conv of the release (``resnet_pcnn_offline``, ``rpn_head_bin_offline``) is one unit in
the Bi-Real arrangement with a pre-BN on its input::

    y   = BN_in(x)                          # over C_in, before binarization
    y   = conv(ApproxSign(y); +-1) * alpha  # a BinaryConv2d once the layout swaps it in
    y   = y + (x or DS(x))                  # DS = strided real 1x1 conv -> BN (no AvgPool)
    out = PReLU(y)

Child names: convs and shortcuts keep the teacher's names (``conv1..3``, ``downsample.0/1``), so
student and teacher layer i line up by name and the teacher's weights initialise the student.
The teacher's post-conv BNs (``bn1``...) have no counterpart (alpha takes their place) and are
dropped; new layers get new names (``bn_in1..3`` pre-BNs, ``act1..3`` PReLUs, ``downsample2``
R50's strided-3x3 shortcut), so a name shared by student and teacher always means the same
layer with the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from detbin.binary.blocks import BlockForm, register_form

__all__ = ["PRELU_INIT", "LWSBasicBlock", "LWSBottleneck", "LWSRPNConv", "convert_resnet_lws", "identity_shortcut"]

PRELU_INIT = 0.25  # nn.PReLU's (and mmcv's) default slope: what the release's nn.PReLU(C) starts from


def _device(like: nn.Module) -> torch.device:
    return next(like.parameters()).device


def _prelu(channels: int, like: nn.Module, init: float = PRELU_INIT) -> nn.PReLU:
    return nn.PReLU(channels, init=init).to(_device(like))


def _bn(channels: int, like: nn.Module) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels).to(_device(like))


def identity_shortcut(channels: int, stride: int, like: nn.Module) -> nn.Sequential:
    """``Conv1x1(stride, real, no bias) -> BN`` initialised to the strided identity (§3.2's DS).

    Children ``0``/``1`` as torchvision's downsample. Used where the student needs a shortcut
    the teacher does not have (R50's strided 3x3), so it starts as plain sub-sampling.
    """
    conv = nn.Conv2d(channels, channels, 1, stride=stride, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return nn.Sequential(conv, nn.BatchNorm2d(channels)).to(_device(like))


class LWSBasicBlock(nn.Module):
    """A torchvision basic block as two LWS units (ResNet-18/34: 16/32 single-conv blocks, §3.2).

    ``out1 = act1(conv1(bn_in1(x)) + (x or DS(x)))``; ``out = act2(conv2(bn_in2(out1)) + out1)``.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H/s, W/s]``.
    """

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        planes = block.conv1.out_channels
        self.bn_in1, self.conv1, self.act1 = _bn(block.conv1.in_channels, block), block.conv1, _prelu(planes, block)
        self.bn_in2, self.conv2, self.act2 = _bn(planes, block), block.conv2, _prelu(planes, block)
        self.downsample = block.downsample  # the teacher's strided 1x1 + BN (LWS: no AvgPool)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.conv1(self.bn_in1(x)) + shortcut)
        return self.act2(self.conv2(self.bn_in2(out)) + out)


class LWSBottleneck(nn.Module):
    """A torchvision bottleneck as three LWS units (ResNet-50, "Bi-Real-modified"; [D]).

    The release is R18 only. [D] as detbin's ``bireal`` bottleneck: the 1x1 convs change the width
    and keep only the block's shortcut; the 3x3 gets its own, through ``downsample2`` (a strided
    real 1x1 + BN, LWS's shortcut rule, identity-initialised) when it is strided::

        out1 = act1(conv1(bn_in1(x)))
        out2 = act2(conv2(bn_in2(out1)) + (out1 or downsample2(out1)))
        out  = act3(conv3(bn_in3(out2)) + (x or downsample(x)))
    """

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        width, out = block.conv2.out_channels, block.conv3.out_channels
        self.bn_in1, self.conv1, self.act1 = _bn(block.conv1.in_channels, block), block.conv1, _prelu(width, block)
        self.bn_in2, self.conv2 = _bn(width, block), block.conv2
        stride = int(block.conv2.stride[0])
        self.downsample2 = identity_shortcut(width, stride, block) if stride > 1 else None
        self.act2 = _prelu(width, block)
        self.bn_in3, self.conv3, self.act3 = _bn(width, block), block.conv3, _prelu(out, block)
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.act1(self.conv1(self.bn_in1(x)))
        mid = out1 if self.downsample2 is None else self.downsample2(out1)
        out2 = self.act2(self.conv2(self.bn_in2(out1)) + mid)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act3(self.conv3(self.bn_in3(out2)) + shortcut)


class LWSRPNConv(nn.Module):
    """The RPN's shared conv (§3.2, ``rpn_head_bin_offline``): ``bn1 -> conv -> bn2 -> PReLU``.

    Replaces torchvision's ``rpn.head.conv[0]`` (``Conv2dNormActivation(conv, ReLU)``); the conv
    stays child ``0`` and the PReLU takes the ReLU's name ``1``, so ``rpn.head.conv.0.0`` is the
    teacher's conv. ApproxSign and alpha are inside the conv once it is binary, so the forward
    is [I] §3.2's ``BN1 -> ApproxSign -> conv -> x alpha -> BN2 -> PReLU``.
    """

    def __init__(self, unit: nn.Sequential, prelu_init: float = PRELU_INIT) -> None:
        super().__init__()
        conv = unit[0]
        self.bn1 = _bn(conv.in_channels, conv)
        self.add_module("0", conv)
        self.bn2 = _bn(conv.out_channels, conv)
        self.add_module("1", _prelu(conv.out_channels, conv, prelu_init))

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, "1")(self.bn2(getattr(self, "0")(self.bn1(x))))


def convert_resnet_lws(body: nn.Module, make_activation: Callable[[int], nn.Module] | None = None) -> int:
    """Rewrite ``body.layer1..4`` into LWS blocks in place; the stem ReLU becomes ``PReLU(C)``.

    Stem (§3.2): real 7x7 conv -> BN -> PReLU -> max-pool; the PReLU keeps the name ``relu``.
    ``make_activation`` is the form table's argument; LWS's activations are always PReLUs.

    Returns:
        The number of blocks converted.
    """
    count = 0
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(body, stage)
        for i, block in enumerate(layer):
            if isinstance(block, BasicBlock):
                layer[i] = LWSBasicBlock(block)
            elif isinstance(block, Bottleneck):
                layer[i] = LWSBottleneck(block)
            else:
                continue
            count += 1
    body.relu = _prelu(body.bn1.num_features, body.bn1)
    return count


def _prelu_activation(channels: int) -> nn.Module:
    return nn.PReLU(channels, init=PRELU_INIT)


# R50's strided-3x3 shortcut is real, as every shortcut of the form (§3.2).
register_form(BlockForm("lws", convert_resnet_lws, _prelu_activation, keep_real=("*.downsample2.*",)))
