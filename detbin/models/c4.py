"""Faster R-CNN ResNet-18-C4, real and BiDet's 1-bit student: the ``fasterrcnnc4`` family (methods.md §4.2, §1.9).

Layout (jwyang/faster-rcnn.pytorch as used by the BiDet release, ``bidet_resnet.py``):

* ``backbone.body``: stem (7x7 s2 conv + BN [+ ReLU in the real net] + max-pool) and layer1-3,
  stride 16, 256 channels: one feature map ``"0"``;
* RPN on that map: 3x3 conv 256 -> 512, then 1x1 objectness and 1x1 boxes, 9 anchors (VOC scales
  8, 16, 32 of a 16-px base = sizes 128, 256, 512; ratios 0.5, 1, 2);
* ``MultiScaleRoIAlign(["0"], 7, 0)``, ``box_head`` = layer4 + spatial mean -> 512-d;
* predictor: ``Linear(512, C)`` scores and a ``Linear`` box output.

``fasterrcnnc4_resnet18`` is the real net: a plain ResNet-18 with ReLUs, a ReLU after the RPN conv,
boxes per class. ``fasterrcnnc4_resnet18_bidet`` is BiDet's student:

* every ResNet block in Bi-Real form (``BN(BinConv3x3(x)) + shortcut`` per conv, no ReLU,
  downsample ``AvgPool(2, ceil) -> 1x1 -> BN``, stem without ReLU), each 3x3 conv a BiDet binary conv;
  names are torchvision's, so the real teacher's weights load by name;
* RPN conv a binary 3x3 256 -> 512 **with bias** + BN, no ReLU; real 1x1 objectness and a real 1x1
  box output of **8 per anchor** (log var, mean) sampled with ``sample_sigma`` 0.001;
* predictor class-agnostic (the release's ``--cag True``): 8 outputs whose sampled 4 deltas are
  repeated for every class (torchvision's per-class decoding and loss).

Options: ``class_agnostic`` (default: True for the student, False for the real net),
``rpn_channels`` (512, scaled by ``width_mult``), ``variance`` (student only; False: the inference
form, 4 box outputs). Settings (§4.2): RPN 256 anchors (1/2 positive, IoU 0.7 / 0.3), NMS 0.7;
RoIs 1/4 positive at IoU >= 0.5, background [0, 0.5); box coder (10, 10, 5, 5); smooth-L1 beta 1/9
(RPN) and 1 (RoIs); test p > 0.01 ([I] ``test_net.py``), NMS 0.3, 100 detections; the release's
proposal counts (12000/2000 train, 6000/300 test) are the VOC recipe file's.

[D] Objectness is torchvision's one sigmoid logit per anchor (the release: a 2-way softmax).
[D] Anchors are torchvision's (centred at ``stride * (x, y)``, unrounded sizes); py-faster-rcnn
centres at ``stride * (x, y) + 7.5`` and rounds the ratio shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from detbin.binary.blocks import convert_resnet
from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import ApproxSign, ScaledSign
from detbin.binary.surgery import set_submodule
from detbin.core.errors import ConfigError, reject_unknown_keys
from detbin.models.backbones import resnet, scaled
from detbin.models.c4_heads import BiDetRPNHead, BoxPredictor, C4RPN, C4RoIHeads, RealRPNHead
from detbin.models.config import DetectorConfig
from detbin.models.families import DetectorFamily, register_family
from detbin.models.location import fill_mean_half

__all__ = ["ARCHS", "VOC_ANCHOR_SIZES", "RATIOS", "C4Backbone", "C5BoxHead", "build_c4", "transfer"]

ARCHS = ("fasterrcnnc4_resnet18", "fasterrcnnc4_resnet18_bidet")
VOC_ANCHOR_SIZES = (128, 256, 512)  # py-faster-rcnn scales (8, 16, 32) x base 16
RATIOS = (0.5, 1.0, 2.0)


class C4Backbone(nn.Module):
    """Stem + layer1-3 of a ResNet body; returns ``{"0": [N, 256w, H/16, W/16]}``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict((k, getattr(body, k)) for k in
                                              ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
        self.out_channels = _width(body.layer3)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


class C5BoxHead(nn.Module):
    """``layer4`` on the 7x7 RoI features, then the spatial mean (``_head_to_tail``): ``[R, 512w]``."""

    def __init__(self, layer4: nn.Module) -> None:
        super().__init__()
        self.layer4 = layer4
        self.out_channels = _width(layer4)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


def _width(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def _bidet_conv(conv: nn.Conv2d) -> BinaryConv2d:
    """``conv`` as BiDet's ``BinarizeConv2d`` (ApproxSign, non-detached mean|W| scale, identity STE, -1 padding)."""
    return BinaryConv2d.from_conv(conv, ApproxSign(), ScaledSign(detach_scale=False, ste="identity"), pad_value=-1.0)


def _binarize_body(body: nn.Module) -> None:
    """Bi-Real blocks, then every 3x3 conv of layer1-4 (the blocks' ``conv1``/``conv2``) binary."""
    convert_resnet(body, "bireal", lambda channels: nn.Identity())
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for name, module in list(getattr(body, stage).named_modules()):
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                set_submodule(body, f"{stage}.{name}", _bidet_conv(module))


def _options(cfg: DetectorConfig, bidet: bool) -> dict[str, Any]:
    known = {"class_agnostic": bidet, "rpn_channels": 512, **({"variance": True} if bidet else {})}
    reject_unknown_keys(f"detector.options of {cfg.arch}", cfg.options, known)
    options = {**known, **cfg.options}
    for key in ("class_agnostic", "variance"):
        if key in options and not isinstance(options[key], bool):
            raise ConfigError(f"detector.options.{key} must be true or false, got {options[key]!r}")
    return options


def build_c4(cfg: DetectorConfig) -> FasterRCNN:
    """Faster R-CNN R18-C4 of ``cfg.arch``: the real net or BiDet's student (module docstring)."""
    bidet = cfg.arch.endswith("_bidet")
    options = _options(cfg, bidet)
    body = resnet(18, cfg.width_mult)
    if bidet:
        _binarize_body(body)
    backbone, box_head = C4Backbone(body), C5BoxHead(body.layer4)
    anchors = AnchorGenerator((tuple(cfg.anchor_sizes or VOC_ANCHOR_SIZES),), (RATIOS,))
    count, mid = anchors.num_anchors_per_location()[0], scaled(int(options["rpn_channels"]), cfg.width_mult)
    variance = bool(options.get("variance", False))
    rpn_head = (BiDetRPNHead(_bidet_conv(nn.Conv2d(backbone.out_channels, mid, 3, padding=1)), count, variance)
                if bidet else RealRPNHead(backbone.out_channels, mid, count))
    predictor = BoxPredictor(box_head.out_channels, cfg.num_classes, options["class_agnostic"], variance)
    model = FasterRCNN(
        backbone, None, min_size=cfg.train_sizes, max_size=cfg.input_size[1], rpn_anchor_generator=anchors,
        rpn_head=rpn_head, rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test, rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7,
        rpn_bg_iou_thresh=0.3, rpn_batch_size_per_image=cfg.rpn_batch_size_per_image, rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, sampling_ratio=0), box_head=box_head, box_predictor=predictor,
        box_score_thresh=0.01 if cfg.score_thresh is None else cfg.score_thresh,
        box_nms_thresh=0.3 if cfg.nms_thresh is None else cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_img or 100, box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
        box_batch_size_per_image=cfg.box_batch_size_per_image, box_positive_fraction=0.25,
    )
    model.rpn.__class__, model.roi_heads.__class__ = C4RPN, C4RoIHeads
    model.rpn.proposal_scores, model.roi_heads.sampled_proposals = nn.Identity(), nn.Identity()  # tap points
    model.roi_heads.box_beta = 1.0  # smooth-L1 sigma 1 for the RoIs (the RPN keeps 1/9: sigma 3)
    return model


@torch.no_grad()
def transfer(model: nn.Module, teacher: Any) -> list[str] | None:
    """Start a BiDet C4 student from a real ``fasterrcnnc4_resnet18`` teacher; None for other archs ([D]).

    Copies every tensor whose name and shape match: the ResNet body, layer4, the downsample
    convs/BNs, the RPN conv and objectness, the class scores. The RPN box output (teacher 4A,
    student 8A) fills its mean half; a per-class teacher box predictor has no counterpart in the
    class-agnostic student, which keeps the release's init (normal, std 0.001), as do the RPN BN
    and the log-variance rows. Returns the student tensors set from the teacher.
    """
    if teacher.config.arch != "fasterrcnnc4_resnet18" or not hasattr(model.rpn.head, "bn"):
        return None
    t_state, s_state = teacher.model.state_dict(), model.state_dict()
    loaded = [k for k, v in s_state.items() if k in t_state and t_state[k].shape == v.shape]
    model.load_state_dict({k: t_state[k] for k in loaded}, strict=False)
    t_rpn, s_rpn = teacher.model.rpn.head.bbox_pred, model.rpn.head.bbox_pred
    if s_rpn.out_channels == 2 * t_rpn.out_channels:
        fill_mean_half(s_rpn, t_rpn, "rpn.head.bbox_pred")
        loaded += ["rpn.head.bbox_pred.weight (mean half)", "rpn.head.bbox_pred.bias (mean half)"]
    return loaded


def _infer(shape: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    if "roi_heads.box_head.layer4.0.conv1.weight" not in shape or "backbone.body.conv1.weight" not in shape:
        return None
    bidet = "rpn.head.bn.weight" in shape
    width = shape["backbone.body.layer3.0.bn2.weight"][0] / 256  # the stem's 64 w has a minimum of 8
    classes = shape["roi_heads.box_predictor.cls_score.weight"][0]
    box = shape["roi_heads.box_predictor.bbox_pred.weight"][0]
    mid = shape["rpn.head.conv.weight"][0]
    options: dict[str, Any] = {"class_agnostic": box in (4, 8),
                               "rpn_channels": 512 if scaled(512, width) == mid else round(mid / width)}
    if bidet:
        options["variance"] = shape["rpn.head.bbox_pred.weight"][0] == 2 * shape["rpn.head.cls_logits.weight"][0] * 4
    return {"arch": ARCHS[bidet], "num_classes": classes, "width_mult": width, "options": options}


register_family(DetectorFamily(
    "fasterrcnnc4", ARCHS, build_c4, default_size=(600, 1000),
    keep_real=("backbone.body.conv1", "*.downsample.*", "rpn.head.cls_logits", "rpn.head.bbox_pred",
               "roi_heads.box_predictor.*"),
    tiny={"width_mult": 0.25, "min_size": 128, "max_size": 128, "anchor_sizes": (32, 64, 128),
          "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300,
          "rpn_post_nms_top_n_test": 150, "box_batch_size_per_image": 64},
    infer=_infer, transfer=transfer,
    description="Faster R-CNN ResNet-18-C4 (BiDet's two-stage detector): real, and BiDet's 1-bit student (_bidet)",
))
