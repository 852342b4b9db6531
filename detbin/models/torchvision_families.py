"""torchvision's detector families: Faster R-CNN, RetinaNet and FCOS on ResNet FPNs, SSD300, SSDlite.

torchvision has no ResNet-18/34 FPN builders; they are composed here from width-scalable
backbones (:mod:`detbin.models.backbones`), so the tiny CPU configs keep every code path of the
paper-size models. BatchNorm is plain ``BatchNorm2d`` everywhere (torchvision freezes it by
default), so a student made from a teacher trains all of it. Each family also knows how to
recognise a plain torchvision ``state_dict`` of its own (:attr:`DetectorFamily.infer`).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detbin.core.errors import CheckpointError, reject_unknown_keys
from detbin.models import backbones, ssd_priors
from detbin.models.config import DetectorConfig
from detbin.models.families import DetectorFamily, register_family
from detbin.models.heads import use_heads
from detbin.models.roi_pool import MultiScaleRoIAlign

__all__ = ["FPN_DEPTHS", "resnet_depth"]

FPN_DEPTHS = (18, 34, 50, 101)
Shapes = dict[str, tuple[int, ...]]


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
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),  # torchvision's, with a parallel CPU backward
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
    reject_unknown_keys("detector.options of ssd300_vgg16", cfg.options, ("priors",))
    # options.priors: ssd.pytorch's VOC or COCO priors (BiDet's real baseline: voc); unset: torchvision's
    anchors = ssd_priors.default_boxes(cfg.options["priors"]) if "priors" in cfg.options else DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300])
    size = (cfg.input_size[0],) * 2
    channels = det_utils.retrieve_out_channels(backbone, size)
    head = SSDHead(channels, anchors.num_anchors_per_location(), cfg.num_classes)
    return SSD(backbone, anchors, size, cfg.num_classes, head=head,
               image_mean=[0.48235, 0.45882, 0.40784], image_std=[1.0 / 255.0] * 3, **_postprocess(cfg))


def _build_ssdlite320(cfg: DetectorConfig) -> nn.Module:
    backbone = backbones.ssdlite_mobilenet_extractor(cfg.width_mult)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    size = (cfg.input_size[0],) * 2
    channels = det_utils.retrieve_out_channels(backbone, size)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), cfg.num_classes, norm)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300}
    return SSD(backbone, anchors, size, cfg.num_classes, head=head, topk_candidates=300,
               image_mean=[0.5] * 3, image_std=[0.5] * 3, **{**defaults, **_postprocess(cfg)})


def _count(shape: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shape if (m := regex.match(k))})


def resnet_depth(shape: Shapes) -> int | None:
    """ResNet depth of a state dict's ``backbone.body`` from its block counts, else None."""
    if "backbone.body.conv1.weight" not in shape:
        return None
    bottleneck = any(k.startswith("backbone.body.layer1.0.conv3.") for k in shape)
    blocks = tuple(_count(shape, rf"backbone\.body\.layer{i}\.(\d+)\.") for i in range(1, 5))
    table = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101}
    return table.get((bottleneck, blocks))


def _fpn_widths(shape: Shapes) -> dict[str, Any]:
    fpn = shape.get("backbone.fpn.layer_blocks.0.0.weight") or shape["backbone.fpn.layer_blocks.0.weight"]
    return {"width_mult": shape["backbone.body.conv1.weight"][0] / 64, "fpn_channels": fpn[0]}


def _infer_fasterrcnn(shape: Shapes) -> dict[str, Any] | None:
    depth = resnet_depth(shape)
    if "roi_heads.box_predictor.cls_score.weight" not in shape or not depth:
        return None
    values = dict(arch=f"fasterrcnn_resnet{depth}_fpn", num_classes=shape["roi_heads.box_predictor.cls_score.weight"][0])
    if "roi_heads.box_head.fc6.weight" in shape:
        values["representation_size"] = shape["roi_heads.box_head.fc6.weight"][0]
    return {**values, **_fpn_widths(shape)}


def _infer_fcos(shape: Shapes) -> dict[str, Any] | None:
    depth = resnet_depth(shape)
    if "head.regression_head.bbox_ctrness.weight" not in shape or not depth:
        return None
    return {"arch": f"fcos_resnet{depth}_fpn", "num_classes": shape["head.classification_head.cls_logits.weight"][0],
            **_fpn_widths(shape)}


def _infer_retinanet(shape: Shapes) -> dict[str, Any] | None:
    depth = resnet_depth(shape)
    if ("head.classification_head.cls_logits.weight" not in shape or not depth
            or "head.regression_head.bbox_ctrness.weight" in shape):
        return None
    anchors = shape["head.regression_head.bbox_reg.weight"][0] // 4
    return {"arch": f"retinanet_resnet{depth}_fpn",
            "num_classes": shape["head.classification_head.cls_logits.weight"][0] // anchors, **_fpn_widths(shape)}


def _infer_ssd300(shape: Shapes) -> dict[str, Any] | None:
    if "backbone.features.0.weight" not in shape or "head.classification_head.module_list.0.weight" not in shape:
        return None
    return {"arch": "ssd300_vgg16", "num_classes": shape["head.classification_head.module_list.0.weight"][0] // 4,
            "width_mult": shape["backbone.features.0.weight"][0] / 64}


def _infer_ssdlite320(shape: Shapes) -> dict[str, Any] | None:
    if "head.classification_head.module_list.0.1.weight" not in shape:
        return None
    values = {"arch": "ssdlite320_mobilenet_v3_large",
              "num_classes": shape["head.classification_head.module_list.0.1.weight"][0] // 6}
    # MobileNetV3 rounds channels to multiples of 8, so try the usual multipliers on the shapes.
    for width in (1.0, 0.75, 0.5, 0.25, 1.25, 1.5, 2.0):
        model = _build_ssdlite320(DetectorConfig(**{**values, "width_mult": width}))
        if all(shape.get(k) == tuple(v.shape) for k, v in model.state_dict().items() if v.dim()):
            return {**values, "width_mult": width}
    raise CheckpointError("SSDlite state dict: no MobileNetV3 width multiplier fits its shapes")


# Layers every family keeps real-valued by default (methods.md §1.7): the stem conv, the 1x1
# downsample shortcuts and the final predictors. Shell patterns over module names.
_RESNET_KEEP = ("backbone.body.conv1", "backbone.body.layer*.downsample.*")
_SSD_TINY = {"min_size": None, "max_size": None, "anchor_sizes": None}


def _fpn_archs(family: str) -> tuple[str, ...]:
    return tuple(f"{family}_resnet{depth}_fpn" for depth in FPN_DEPTHS)


for _family in (
    DetectorFamily("fasterrcnn", _fpn_archs("fasterrcnn"), _build_fasterrcnn, resnet_body="backbone.body",
                   keep_real=_RESNET_KEEP + ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.*"),
                   infer=_infer_fasterrcnn, description="torchvision Faster R-CNN on a ResNet FPN"),
    DetectorFamily("retinanet", _fpn_archs("retinanet"), _build_retinanet, resnet_body="backbone.body",
                   keep_real=_RESNET_KEEP + ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
                   infer=_infer_retinanet, description="torchvision RetinaNet on a ResNet FPN"),
    DetectorFamily("fcos", _fpn_archs("fcos"), _build_fcos, resnet_body="backbone.body",
                   keep_real=_RESNET_KEEP + ("head.classification_head.cls_logits", "head.regression_head.bbox_reg",
                                             "head.regression_head.bbox_ctrness"),
                   infer=_infer_fcos, description="torchvision FCOS on a ResNet FPN"),
    # BiDet SSD300: first conv, fc7 (1x1, 1024->1024) and all loc/conf heads stay real.
    DetectorFamily("ssd300", ("ssd300_vgg16",), _build_ssd300, default_size=(300, 300),
                   keep_real=("backbone.features.0", "backbone.extra.0.7.3", "head.*"),
                   tiny={"width_mult": 0.125, **_SSD_TINY}, infer=_infer_ssd300,
                   description="torchvision SSD300-VGG16 (ssd.pytorch topology)"),
    # SSDlite: stem, squeeze-excitation 1x1s and heads; depthwise convs are kept by the layout.
    DetectorFamily("ssdlite320", ("ssdlite320_mobilenet_v3_large",), _build_ssdlite320, default_size=(320, 320),
                   keep_real=("backbone.features.0.0.0", "*.fc1", "*.fc2", "head.*"),
                   tiny={"width_mult": 0.25, **_SSD_TINY}, infer=_infer_ssdlite320,
                   description="torchvision SSDlite320-MobileNetV3-Large"),
):
    register_family(_family)
