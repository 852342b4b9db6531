"""``build_model(cfg)``: a GeneralizedRCNN with detectron2's structure and module names, on torchvision's box ops.

``backbone.bottom_up.stem.conv1`` ... , ``proposal_generator.rpn_head.{conv, objectness_logits,
anchor_deltas}``, ``roi_heads.box_predictor.{cls_score, bbox_pred}``, as in detectron2; the RPN and
RoI machinery (sampling, losses, NMS) is torchvision's, so the numbers are real.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign

from detectron2.structures import Boxes, Instances


class _Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x):
        return F.relu(self.norm(self.conv1(x)))


class _BottomUp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = _Stem(width)
        self.res2 = nn.Sequential(nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False))

    def forward(self, x):
        return {"res2": self.res2(self.stem(x))}


class _Backbone(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.bottom_up = _BottomUp(width)

    def forward(self, x):
        return self.bottom_up(x)


class _RPNHead(nn.Module):
    def __init__(self, channels: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, anchors * 4, 1)

    def forward(self, features):
        hidden = [F.relu(self.conv(f)) for f in features]
        return [self.objectness_logits(h) for h in hidden], [self.anchor_deltas(h) for h in hidden]


class _RPN(RegionProposalNetwork):
    """torchvision's RPN with its head registered under detectron2's name, ``rpn_head``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rpn_head = self._modules.pop("head")

    @property
    def head(self) -> nn.Module:
        return self.rpn_head


class GeneralizedRCNN(nn.Module):
    """detectron2's contract: ``forward(batched_inputs)``; BGR 0..255 images; 0-based classes."""

    input_format = "BGR"

    def __init__(self, num_classes: int, pixel_mean, pixel_std, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.backbone = _Backbone(width)
        anchors = AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))
        self.proposal_generator = _RPN(
            anchors, _RPNHead(width, 6), 0.7, 0.3, 64, 0.5, dict(training=100, testing=50),
            dict(training=50, testing=20), 0.7)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["res2"], 7, 2), TwoMLPHead(width * 49, 32), FastRCNNPredictor(32, num_classes + 1),
            0.5, 0.5, 32, 0.25, None, 0.05, 0.5, 100)

    def preprocess_image(self, batched_inputs):
        images = [(x["image"].to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return SimpleNamespace(tensor=torch.stack(images), image_sizes=[tuple(i.shape[-2:]) for i in images])

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        image_list = ImageList(images.tensor, images.image_sizes)
        targets = None
        if self.training:
            targets = [{"boxes": x["instances"].gt_boxes.tensor, "labels": x["instances"].gt_classes + 1}
                       for x in batched_inputs]
        proposals, rpn_losses = self.proposal_generator(image_list, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return [{"instances": Instances(size, pred_boxes=Boxes(d["boxes"]), scores=d["scores"],
                                        pred_classes=d["labels"] - 1)} for size, d in zip(images.image_sizes, detections)]


def build_model(cfg) -> nn.Module:
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ValueError(f"the stand-in builds GeneralizedRCNN only, not {cfg.MODEL.META_ARCHITECTURE}")
    return GeneralizedRCNN(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
