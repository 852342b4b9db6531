"""The Detector adapter and the builders of torchvision's detector families.

Every detector speaks torchvision's two-mode contract: in training mode ``model(images,
targets)`` returns a dict of named losses; in eval mode ``model(images)`` returns one
``{"boxes", "labels", "scores"}`` dict per image, boxes ``xyxy`` in input-image pixels.

Families: Faster R-CNN, RetinaNet and FCOS on a ResNet-18/34/50/101 FPN, SSD300-VGG16 and
SSDlite320-MobileNetV3. torchvision has no ResNet-18/34 FPN builders; they are composed here.
BatchNorm is plain ``BatchNorm2d`` everywhere (torchvision freezes it by default), so a
student made from a teacher trains all of it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.detection import _utils as det_utils
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detbin import backbones
from detbin.heads import use_heads
from detbin.errors import ConfigError, close_matches, reject_unknown_keys
from detbin.types import Detections, Target

__all__ = ["ARCHS", "DetectorConfig", "TorchvisionDetector", "build_detector", "tiny_config"]

_FPN_ARCH = re.compile(r"^(fasterrcnn|retinanet|fcos)_resnet(18|34|50|101)_fpn$")
ARCHS: tuple[str, ...] = tuple(
    f"{family}_resnet{depth}_fpn" for family in ("fasterrcnn", "retinanet", "fcos") for depth in (18, 34, 50, 101)
) + ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")

# Layers every family keeps real-valued by default (methods.md §1.7): the stem conv, the 1x1
# downsample shortcuts and the final predictors. Shell patterns over module names.
_RESNET_KEEP = ("backbone.body.conv1", "backbone.body.layer*.downsample.*")
DEFAULT_KEEP_REAL: dict[str, tuple[str, ...]] = {
    "fasterrcnn": _RESNET_KEEP + ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.*"),
    "retinanet": _RESNET_KEEP + ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "fcos": _RESNET_KEEP + (
        "head.classification_head.cls_logits", "head.regression_head.bbox_reg", "head.regression_head.bbox_ctrness",
    ),
    # BiDet SSD300: first conv, fc7 (1x1, 1024->1024) and all loc/conf heads stay real.
    "ssd300": ("backbone.features.0", "backbone.extra.0.7.3", "head.*"),
    # SSDlite: stem, squeeze-excitation 1x1s and heads; depthwise convs are kept by the layout.
    "ssdlite320": ("backbone.features.0.0.0", "*.fc1", "*.fc2", "head.*"),
}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector's architecture (saved in every checkpoint).

    Attributes:
        arch: one of :data:`ARCHS`.
        num_classes: classes including background (21 for VOC).
        width_mult: channel multiplier of the backbone (1.0 = the paper-size network).
        fpn_channels: FPN width (256 in torchvision); also the RPN/dense-head width.
        representation_size: width of the two FCs of the R-CNN box head (1024).
        min_size, max_size: resize bounds of the input transform; ``None`` keeps torchvision's
            family default (800/1333 for FPN families; the papers' VOC setting is 600/1000).
            SSD families use ``min_size`` as their fixed square input size (300, 320). A list of
            ``min_size`` values trains multi-scale (one drawn per batch, torchvision's rule) and
            tests at the last one.
        anchor_sizes: smallest anchor per FPN level; ``None`` keeps the family default.
        rpn_*, box_*: Faster R-CNN proposal and sampling settings (torchvision names).
        score_thresh, nms_thresh, detections_per_img: test-time post-processing; ``None`` keeps
            the family default (Faster R-CNN: 0.05, 0.5, 100).
    """

    arch: str = "fasterrcnn_resnet18_fpn"
    num_classes: int = 21
    width_mult: float = 1.0
    fpn_channels: int = 256
    representation_size: int = 1024
    min_size: int | tuple[int, ...] | None = None
    max_size: int | None = None
    anchor_sizes: tuple[int, ...] | None = None
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    score_thresh: float | None = None
    nms_thresh: float | None = None
    detections_per_img: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}{close_matches(self.arch, ARCHS)}; "
                              f"valid: {', '.join(ARCHS)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must count background too (>= 2), got {self.num_classes}")
        if self.anchor_sizes is not None:
            object.__setattr__(self, "anchor_sizes", tuple(int(a) for a in self.anchor_sizes))
        if isinstance(self.min_size, (list, tuple)):
            object.__setattr__(self, "min_size", tuple(int(a) for a in self.min_size))

    @property
    def family(self) -> str:
        """``fasterrcnn``, ``retinanet``, ``fcos``, ``ssd300`` or ``ssdlite320``."""
        return self.arch.split("_")[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """Test-time ``(min_size, max_size)`` with family defaults filled in."""
        default = {"ssd300": (300, 300), "ssdlite320": (320, 320)}.get(self.family, (800, 1333))
        smallest = self.min_size[-1] if isinstance(self.min_size, tuple) else self.min_size
        return (smallest or default[0], self.max_size or default[1])

    @property
    def train_sizes(self) -> int | tuple[int, ...]:
        """``min_size`` as torchvision's transform takes it (a tuple trains multi-scale)."""
        return self.min_size if isinstance(self.min_size, tuple) else self.input_size[0]

    @property
    def depth(self) -> int | None:
        """ResNet depth of FPN families, else None."""
        match = _FPN_ARCH.match(self.arch)
        return int(match.group(2)) if match else None

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so the config survives ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        out["anchor_sizes"] = list(self.anchor_sizes) if self.anchor_sizes else None
        out["min_size"] = list(self.min_size) if isinstance(self.min_size, tuple) else self.min_size
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        reject_unknown_keys("detector", values, (f.name for f in dataclasses.fields(cls)))
        return cls(**values)


def tiny_config(arch: str = "fasterrcnn_resnet18_fpn", num_classes: int = 6, **overrides: Any) -> DetectorConfig:
    """The CPU-sized variant of ``arch``: quarter-width backbone, 64-channel FPN, 128-px images.

    Every code path of the full-size model is kept; only widths, image size and proposal
    counts shrink (a training step takes ~0.2 s on two CPU cores for Faster R-CNN R18).
    """
    family = arch.split("_")[0]
    values: dict[str, Any] = dict(arch=arch, num_classes=num_classes, width_mult=0.25, fpn_channels=64,
                                  representation_size=256, min_size=128, max_size=128,
                                  anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=600,
                                  rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                                  rpn_post_nms_top_n_test=150, box_batch_size_per_image=128)
    if family == "ssd300":
        values.update(width_mult=0.125, min_size=None, max_size=None, anchor_sizes=None)
    elif family == "ssdlite320":
        values.update(width_mult=0.25, min_size=None, max_size=None, anchor_sizes=None)
    values.update(overrides)
    return DetectorConfig(**values)


def _fpn_backbone(cfg: DetectorConfig, returned: list[int], extra: nn.Module) -> BackboneWithFPN:
    body = backbones.resnet(cfg.depth or 18, cfg.width_mult)
    channels = backbones.stage_channels(body)
    return BackboneWithFPN(
        body, {f"layer{k}": str(i) for i, k in enumerate(returned)}, [channels[k - 1] for k in returned],
        cfg.fpn_channels, extra_blocks=extra,
    )


def _postprocess(cfg: DetectorConfig, **names: str) -> dict[str, Any]:
    values = {"score_thresh": cfg.score_thresh, "nms_thresh": cfg.nms_thresh,
              "detections_per_img": cfg.detections_per_img}
    return {names.get(k, k): v for k, v in values.items() if v is not None}


def _build_fasterrcnn(cfg: DetectorConfig) -> nn.Module:
    backbone = _fpn_backbone(cfg, [1, 2, 3, 4], LastLevelMaxPool())
    sizes = cfg.anchor_sizes or (32, 64, 128, 256, 512)
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    max_size = cfg.input_size[1]
    return use_heads(FasterRCNN(
        backbone, num_classes=None, min_size=cfg.train_sizes, max_size=max_size, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image, box_batch_size_per_image=cfg.box_batch_size_per_image,
        **_postprocess(cfg, score_thresh="box_score_thresh", nms_thresh="box_nms_thresh",
                       detections_per_img="box_detections_per_img"),
    ))


def _build_retinanet(cfg: DetectorConfig) -> nn.Module:
    backbone = _fpn_backbone(cfg, [2, 3, 4], LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels))
    base = cfg.anchor_sizes or (32, 64, 128, 256, 512)
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in base)  # torchvision's 3 scales
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    max_size = cfg.input_size[1]
    return RetinaNet(backbone, cfg.num_classes, min_size=cfg.train_sizes, max_size=max_size,
                     anchor_generator=anchors, **_postprocess(cfg))


def _build_fcos(cfg: DetectorConfig) -> nn.Module:
    backbone = _fpn_backbone(cfg, [2, 3, 4], LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels))
    max_size = cfg.input_size[1]
    return FCOS(backbone, cfg.num_classes, min_size=cfg.train_sizes, max_size=max_size, **_postprocess(cfg))


def _build_ssd300(cfg: DetectorConfig) -> nn.Module:
    backbone = backbones.ssd_vgg16_extractor(cfg.width_mult)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    size = (cfg.input_size[0],) * 2
    channels = det_utils.retrieve_out_channels(backbone, size)
    head = SSDHead(channels, anchors.num_anchors_per_location(), cfg.num_classes)
    return SSD(backbone, anchors, size, cfg.num_classes, head=head,
               image_mean=[0.48235, 0.45882, 0.40784], image_std=[1.0 / 255.0] * 3, **_postprocess(cfg))


def _build_ssdlite320(cfg: DetectorConfig) -> nn.Module:
    from functools import partial

    backbone = backbones.ssdlite_mobilenet_extractor(cfg.width_mult)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    size = (cfg.input_size[0],) * 2
    channels = det_utils.retrieve_out_channels(backbone, size)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), cfg.num_classes, norm)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300}
    return SSD(backbone, anchors, size, cfg.num_classes, head=head, topk_candidates=300,
               image_mean=[0.5] * 3, image_std=[0.5] * 3, **{**defaults, **_postprocess(cfg)})


_BUILDERS = {"fasterrcnn": _build_fasterrcnn, "retinanet": _build_retinanet, "fcos": _build_fcos,
             "ssd300": _build_ssd300, "ssdlite320": _build_ssdlite320}


class TorchvisionDetector:
    """Adapter giving detbin one interface over torchvision's detector families.

    Attributes:
        model: the torchvision module (``FasterRCNN``, ``RetinaNet``, ``FCOS`` or ``SSD``).
        config: the :class:`DetectorConfig` that rebuilds it.
        keep_real: module-name patterns kept real-valued by default when binarizing.
    """

    def __init__(self, model: nn.Module, config: DetectorConfig) -> None:
        self.model = model
        self.config = config
        self.forward_module: nn.Module | None = None  # a DDP wrapper of ``model`` when distributed
        self.keep_real: tuple[str, ...] = DEFAULT_KEEP_REAL[config.family]

    @property
    def resnet_body(self) -> str | None:
        """Name of the ResNet body (``backbone.body``) of FPN families, else None."""
        return "backbone.body" if self.config.depth is not None else None

    def losses(self, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        """Training losses; the model must be in training mode.

        Args:
            images: ``FloatTensor[3, H, W]`` in 0..1.
            targets: ``boxes [N, 4]`` xyxy pixels and ``labels [N]`` in 1..K per image.
        """
        if not self.model.training:
            raise RuntimeError("Detector.losses needs the model in training mode (call model.train())")
        forward = self.forward_module if self.forward_module is not None else self.model
        return forward(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections per image (eval mode; the previous mode is restored)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(images)
        finally:
            self.model.train(was_training)

    def features(self, images: list[Tensor]) -> dict[str, Tensor]:
        """Backbone (+FPN) feature maps of the transformed batch, keyed as torchvision does."""
        image_list, _ = self.model.transform(images)
        feats = self.model.backbone(image_list.tensors)
        return feats if isinstance(feats, dict) else {str(i): f for i, f in enumerate(feats)}

    def dry_run(self) -> list[Detections]:
        """One forward pass on a small random image (eval mode; FPN families at 64 px)."""
        transform = self.model.transform
        sizes = transform.min_size, transform.max_size
        if self.config.depth is not None:
            transform.min_size, transform.max_size = (64,), 64
        try:
            return self.predict([torch.rand(3, 64, 64, device=next(self.model.parameters()).device)])
        finally:
            transform.min_size, transform.max_size = sizes

    def conv_layers(self) -> Iterator[tuple[str, nn.Conv2d]]:
        """Every ``nn.Conv2d`` (binary or not) with its qualified name, in registration order."""
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d):
                yield name, module

    def to(self, device: torch.device | str) -> TorchvisionDetector:
        self.model.to(device)
        return self


def build_detector(config: DetectorConfig) -> TorchvisionDetector:
    """Build a randomly initialised detector (no downloads: detbin never fetches weights)."""
    return TorchvisionDetector(_BUILDERS[config.family](config), config)
