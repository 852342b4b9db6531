"""Width-scalable backbones whose module names equal torchvision's.

At ``width_mult=1`` each builder gives exactly torchvision's topology, so torchvision state
dicts load into it; smaller widths give the tiny CPU configs, which exercise every code path
of the full-size model. torchvision has no width knob for ResNet basic blocks or for the SSD
VGG extractor, hence these few lines.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import ssd as tv_ssd
from torchvision.models.detection import ssdlite as tv_ssdlite
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

__all__ = [
    "RESNET_DEPTHS", "resnet", "stage_channels", "ssd_vgg16_extractor", "ssdlite_mobilenet_extractor", "scaled",
]

RESNET_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


def scaled(channels: int, width_mult: float, minimum: int = 8) -> int:
    """``channels * width_mult`` rounded to a multiple of 8 (at least ``minimum``)."""
    return max(minimum, int(round(channels * width_mult / 8)) * 8)


class _ScaledResNet(ResNet):
    """torchvision's ResNet with ``64 * width_mult`` base channels and no classifier."""

    def __init__(self, depth: int, width_mult: float) -> None:
        nn.Module.__init__(self)
        block, layers = RESNET_DEPTHS[depth]
        base = scaled(64, width_mult)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = base, 1, 1, 64
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=2)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet(depth: int, width_mult: float = 1.0) -> ResNet:
    """A ResNet-``depth`` body (conv1 ... layer4) with trainable BatchNorm.

    Returns:
        The body; ``stage_channels(body)`` gives C2..C5 widths.
    """
    return _ScaledResNet(depth, width_mult)


def stage_channels(body: ResNet) -> list[int]:
    """Output channels of layer1..layer4."""
    return [_block_out(getattr(body, f"layer{i}")[-1]) for i in range(1, 5)]


def _block_out(block: nn.Module) -> int:
    return block.bn3.num_features if isinstance(block, Bottleneck) else block.bn2.num_features


def ssd_vgg16_extractor(width_mult: float = 1.0) -> tv_ssd.SSDFeatureExtractorVGG:
    """The SSD300 VGG-16 feature extractor (conv4_3 L2Norm, fc6/fc7, 4 extra blocks).

    At ``width_mult=1`` this is torchvision's ``SSDFeatureExtractorVGG`` on a VGG-16 without
    BatchNorm; otherwise every channel count (including fc6/fc7 and the extras) is scaled.
    """
    cfg = [c if c == "M" else scaled(int(c), width_mult) for c in vgg_cfgs["D"]]
    features = make_layers(cfg, batch_norm=False)
    for m in features.modules():  # torchvision VGG's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    extractor = tv_ssd.SSDFeatureExtractorVGG(features, highres=False)
    if width_mult == 1.0:
        return extractor
    s = partial(scaled, width_mult=width_mult)
    c4, fc = s(512), s(1024)
    extractor.scale_weight = nn.Parameter(torch.ones(c4) * 20)
    head = list(extractor.extra[0].children())[:-1]  # maxpool4 + conv5_x, already scaled
    fc_block = nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=False),
        nn.Conv2d(c4, fc, kernel_size=3, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(fc, fc, kernel_size=1),
        nn.ReLU(inplace=True),
    )
    extras = [(fc, s(256), s(512), dict(padding=1, stride=2)), (s(512), s(128), s(256), dict(padding=1, stride=2)),
              (s(256), s(128), s(256), {}), (s(256), s(128), s(256), {})]
    blocks = [nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(inplace=True),
                            nn.Conv2d(mid, cout, 3, **kw), nn.ReLU(inplace=True)) for cin, mid, cout, kw in extras]
    for m in [fc_block, *blocks]:
        tv_ssd._xavier_init(m)
    extractor.extra = nn.ModuleList([nn.Sequential(*head, fc_block), *blocks])
    return extractor


def ssdlite_mobilenet_extractor(width_mult: float = 1.0) -> nn.Module:
    """SSDlite's MobileNetV3-Large extractor (reduced tail, as torchvision uses without pretraining)."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    body = mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=True, width_mult=width_mult)
    tv_ssdlite._normal_init(body)
    features = body.features
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    return tv_ssdlite.SSDLiteFeatureExtractorMobileNet(features, stage_indices[-2], norm_layer, width_mult=width_mult)
