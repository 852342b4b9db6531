"""BiDet's 1-bit SSD300-VGG16 as a detector family: ``bidetssd300_vgg16`` (methods.md §4.2, §1.7, §1.9).

Two forms (``options.form``), both with the module names of the released ``ssd/bidet_ssd.py``
(``vgg.layers.<i>``, ``L2Norm``, ``extras.<i>``, ``extra_bns.<i>``, ``loc.<k>``, ``conf.<k>``) under
torchvision's ``backbone.`` / ``head.`` prefixes:

* ``sc`` = "BiDet (SC)", the repository's network: real first conv (3->64, no bias) + BN; every
  other VGG entry a block ``BN(BinConv3x3(x)) + x``; at each former pooling position (``M``/``C``)
  a stride-2 binary block to the next stage's width whose shortcut is
  ``AvgPool2d(2, 2[, ceil]) -> real 1x1 -> BN``. Layer 13 (conv4_3) -> ``L2Norm(512, 20)`` -> source
  1 (38x38); then MaxPool(3,1,1) -> binary dilated conv6 (d=6) + BN + ReLU -> real 1x1 conv7 + BN +
  ReLU -> source 2 (19x19); 8 binary extras, each + BN, no activation -> sources 3-6.
* ``plain`` = the paper's "BiDet" row ([D], XNOR-style, no per-conv shortcut): VGG16 with its
  max-pools, every binary conv followed by BN (each binary conv sees ``sign(BN(.))``, XNOR's
  BN -> sign -> conv order); same stem, conv6/conv7, extras and heads, same layer indices.

Binary convs are BiDet's ``BinarizeConv2d`` (§4.3): ApproxSign input, ``mean|W_o| sign(W_o)`` with
the scale differentiated and an identity STE, input padded with -1. ``extras.0`` reads
``ReLU(BN(conv7))`` and binarizes with ``torch.sign`` semantics (:class:`ZeroSignApprox`, {0, +1}).
Heads are real 3x3 convs; ``loc`` has 8 outputs per prior (log var, mean), reparameterised by a
:class:`~detbin.models.location.LocationSampler` (``sample_sigma`` 0: the mean); with
``options.variance: false`` (the inference form) 4. Priors: ssd.pytorch's (``options.priors``,
VOC by default). Initialisation as ``init_model`` of the release; :func:`transfer` starts a
student from a real ``ssd300_vgg16`` teacher instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD

from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import ApproxSign, ScaledSign, ZeroSignApprox
from detbin.core.errors import ConfigError, reject_unknown_keys
from detbin.models import ssd_priors
from detbin.models.backbones import scaled
from detbin.models.config import DetectorConfig
from detbin.models.families import DetectorFamily, register_family
from detbin.models.location import LocationSampler, fill_mean_half, mean_half_of

__all__ = ["FORMS", "CFG", "EXTRAS", "SOURCE_LAYER", "bidet_conv", "BiDetVGGBlock", "L2Norm", "BiDetSSDBackbone",
           "BiDetSSDHead", "build_bidet_ssd300", "teacher_table", "transfer"]

log = logging.getLogger(__name__)

FORMS = ("sc", "plain")
CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
# (in, out, kernel, stride, padding) of the 8 extras; a source after each odd one.
EXTRAS: list[tuple[int, int, int, int, int]] = [
    (1024, 256, 1, 1, 0), (256, 512, 3, 2, 1), (512, 128, 1, 1, 0), (128, 256, 3, 2, 1),
    (256, 128, 1, 1, 0), (128, 256, 3, 1, 0), (256, 128, 1, 1, 0), (128, 256, 3, 1, 0),
]
SOURCE_LAYER = 13  # conv4_3's block: the release's ``range(14)`` split of ``vgg.layers``
_MEAN_RGB = [123.0 / 255, 117.0 / 255, 104.0 / 255]  # ssd.pytorch MEANS (104, 117, 123) are BGR
_OPTIONS = {"form": "sc", "priors": "voc", "variance": True}


def bidet_conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
               bias: bool = False, zero_sign: bool = False) -> BinaryConv2d:
    """A BiDet ``BinarizeConv2d`` (§4.3); ``zero_sign`` for an input that comes out of a ReLU.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H_out, W_out]``.
    """
    return BinaryConv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias,
                        input_quantizer=ZeroSignApprox() if zero_sign else ApproxSign(),
                        weight_quantizer=ScaledSign(detach_scale=False, ste="identity"), pad_value=-1.0)


class BiDetVGGBlock(nn.Module):
    """``y = BN(BinConv(x)) [+ shortcut(x)]`` (the release's ``BiDetVGGBlock``).

    Args:
        shortcut: add the real shortcut (identity, or ``downsample`` when given).
        downsample: ``AvgPool2d -> 1x1 conv -> BN`` at a stride-2 block.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H/s, W/s]``.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: bool = True,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = bidet_conv(cin, cout, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.downsample = downsample
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(self.conv(x))
        if not self.shortcut:
            return out
        return out + (x if self.downsample is None else self.downsample(x))


class L2Norm(nn.Module):
    """ssd.pytorch's ``L2Norm``: ``w_c * x / (||x||_2 over channels + 1e-10)``, ``w`` initialised to 20."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        return self.weight.view(1, -1, 1, 1) * x / norm


def _pooled_shortcut(cin: int, cout: int, ceil: bool) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=ceil), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def vgg_layers(width_mult: float, form: str) -> list[nn.Module]:
    """``vgg.layers`` of the release (SC) or its plain counterpart, widths scaled."""
    s = [c if isinstance(c, str) else scaled(c, width_mult) for c in CFG]
    layers: list[nn.Module] = [nn.Conv2d(3, int(s[0]), 3, padding=1, bias=False), nn.BatchNorm2d(int(s[0]))]
    cin = int(s[0])
    for j in range(1, len(s)):
        v = s[j]
        if isinstance(v, str):  # a former pooling position
            nxt = int(s[j + 1])
            if form == "sc":
                layers.append(BiDetVGGBlock(cin, nxt, stride=2, downsample=_pooled_shortcut(cin, nxt, v == "C")))
                cin = nxt
            else:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
            continue
        layers.append(BiDetVGGBlock(cin, int(v), shortcut=form == "sc"))
        cin = int(v)
    fc = scaled(1024, width_mult)
    layers += [nn.MaxPool2d(3, 1, 1), bidet_conv(cin, fc, 3, padding=6, dilation=6), nn.BatchNorm2d(fc),
               nn.ReLU(inplace=True), nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc), nn.ReLU(inplace=True)]
    return layers


class _VGGBase(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers[: SOURCE_LAYER + 1]:
            x = layer(x)
        conv4_3 = x
        for layer in self.layers[SOURCE_LAYER + 1:]:
            x = layer(x)
        return conv4_3, x


class BiDetSSDBackbone(nn.Module):
    """VGG base + L2Norm + extras; returns the six sources ``"0".."5"`` (38, 19, 10, 5, 3, 1 at 300 px).

    Attributes:
        form: ``sc`` or ``plain``; out_channels: channels of the six sources.
    """

    def __init__(self, width_mult: float = 1.0, form: str = "sc") -> None:
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"detector.options.form: BiDet SSD form {form!r} unknown; valid: {', '.join(FORMS)}")
        self.form = form
        self.vgg = _VGGBase(vgg_layers(width_mult, form))
        c4 = scaled(512, width_mult)
        self.L2Norm = L2Norm(c4)
        extras = [bidet_conv(scaled(cin, width_mult), scaled(cout, width_mult), k, stride, pad, zero_sign=i == 0)
                  for i, (cin, cout, k, stride, pad) in enumerate(EXTRAS)]  # extras.0 reads ReLU(BN(conv7))
        self.extras = nn.ModuleList(extras)
        self.extra_bns = nn.ModuleList(nn.BatchNorm2d(e.out_channels) for e in extras)
        self.out_channels = [c4, scaled(1024, width_mult)] + [e.out_channels for e in extras[1::2]]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        conv4_3, x = self.vgg(x)
        sources = [self.L2Norm(conv4_3), x]
        for i, (extra, bn) in enumerate(zip(self.extras, self.extra_bns)):
            x = bn(extra(x))
            if i % 2 == 1:
                sources.append(x)
        return OrderedDict((str(i), s) for i, s in enumerate(sources))


class BiDetSSDHead(nn.Module):
    """Real 3x3 ``loc`` (8 per prior: log var, mean; 4 in the inference form) and ``conf`` heads.

    Returns ``{"bbox_regression": [N, A, 4] (sampled in training, the mean in eval), "cls_logits":
    [N, A, C], "bbox_mean": [N, A, 4], "bbox_log_var": [N, A, 4] (variance form only)}``; priors
    location-major, box-minor (torchvision's and ssd.pytorch's order).
    """

    def __init__(self, in_channels: list[int], boxes: list[int], num_classes: int, variance: bool = True,
                 sample_sigma: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.variance = num_classes, variance
        per_box = 8 if variance else 4
        self.loc = nn.ModuleList(nn.Conv2d(c, a * per_box, 3, padding=1) for c, a in zip(in_channels, boxes))
        self.conf = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(in_channels, boxes))
        self.sampler = LocationSampler(sample_sigma)

    @staticmethod
    def _flat(x: Tensor, columns: int) -> Tensor:
        n, _, h, w = x.shape
        return x.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        logits = torch.cat([self._flat(m(f), self.num_classes) for m, f in zip(self.conf, features)], dim=1)
        if not self.variance:
            mean = torch.cat([self._flat(m(f), 4) for m, f in zip(self.loc, features)], dim=1)
            return {"bbox_regression": mean, "cls_logits": logits, "bbox_mean": mean}
        raw = torch.cat([self._flat(m(f), 8) for m, f in zip(self.loc, features)], dim=1)
        return {"bbox_regression": self.sampler(raw), "cls_logits": logits,
                "bbox_log_var": raw[..., :4], "bbox_mean": raw[..., 4:]}

    def to_inference_form(self) -> None:
        """Drop the log-variance rows of every ``loc`` conv (paper §3.1.3); eval detections unchanged."""
        if self.variance:
            self.loc = nn.ModuleList(mean_half_of(conv) for conv in self.loc)
            self.variance = False


def init_like_release(model: nn.Module) -> None:
    """``init_model`` of ``bidet_ssd.py``: xavier-normal conv weights, zero biases, BN (1, 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _options(cfg: DetectorConfig) -> dict[str, Any]:
    reject_unknown_keys("detector.options of bidetssd300_vgg16", cfg.options, _OPTIONS)
    options = {**_OPTIONS, **cfg.options}
    if not isinstance(options["variance"], bool):
        raise ConfigError(f"detector.options.variance must be true or false, got {options['variance']!r}")
    return options


def build_bidet_ssd300(cfg: DetectorConfig) -> SSD:
    """The BiDet student as a torchvision ``SSD`` (train: loss dict; eval: detections).

    Test-time defaults are the release's ``Detect``: p > 0.01, NMS 0.45, 200 per image.
    """
    options = _options(cfg)
    backbone = BiDetSSDBackbone(cfg.width_mult, options["form"])
    head = BiDetSSDHead(backbone.out_channels, ssd_priors.BOXES_PER_LOCATION, cfg.num_classes, options["variance"])
    size = cfg.input_size[0]
    model = SSD(backbone, ssd_priors.default_boxes(options["priors"]), (size, size), cfg.num_classes, head=head,
                score_thresh=cfg.score_thresh if cfg.score_thresh is not None else 0.01,
                nms_thresh=cfg.nms_thresh if cfg.nms_thresh is not None else 0.45,
                detections_per_img=cfg.detections_per_img or 200, topk_candidates=200,
                image_mean=list(_MEAN_RGB), image_std=[1.0 / 255.0] * 3)
    init_like_release(model)
    return model


# stage -> indices of the student's ``vgg.layers`` holding a conv; teacher (torchvision SSD VGG) convs
_STUDENT_STAGES = {"sc": [[2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17]],
                   "plain": [[2], [4, 5], [7, 8, 9], [11, 12, 13], [15, 16, 17]]}
_TEACHER_STAGES = [["features.2"], ["features.5", "features.7"], ["features.10", "features.12", "features.14"],
                   ["features.17", "features.19", "features.21"], ["extra.0.1", "extra.0.3", "extra.0.5"]]


def teacher_table(form: str) -> list[tuple[str, str]]:
    """``(teacher module, student module)`` pairs of convs that copy from a real ``ssd300_vgg16`` ([D]).

    Each teacher conv goes to the student conv of the same role and shape: the first conv; in
    stage ``s`` the teacher's ``conv_s_1..conv_s_n`` go to the student's first ``n`` convs of the
    stage, which in the SC form start with the stride-2 block (the only one shaped ``C_{s-1} -> C_s``
    like ``conv_s_1``), so the SC form's last conv of stages 2-5 (layers 5, 9, 13, 17) stays new;
    conv6, conv7, the 8 extras and the ``conf`` heads copy directly.
    """
    pairs = [("backbone.features.0", "backbone.vgg.layers.0")]
    for t_stage, s_stage in zip(_TEACHER_STAGES, _STUDENT_STAGES[form]):
        pairs += [(f"backbone.{t}", f"backbone.vgg.layers.{s}.conv") for t, s in zip(t_stage, s_stage)]
    pairs += [("backbone.extra.0.7.1", "backbone.vgg.layers.19"), ("backbone.extra.0.7.3", "backbone.vgg.layers.22")]
    pairs += [(f"backbone.extra.{1 + i // 2}.{2 * (i % 2)}", f"backbone.extras.{i}") for i in range(8)]
    pairs += [(f"head.classification_head.module_list.{k}", f"head.conf.{k}") for k in range(6)]
    return pairs


def _copy(dst: Tensor, src: Tensor, what: str) -> None:
    if dst.shape != src.shape:
        raise ConfigError(f"{what}: teacher shape {tuple(src.shape)} != student {tuple(dst.shape)}; "
                          "the student's width_mult and num_classes must be the teacher's")
    dst.copy_(src)


@torch.no_grad()
def transfer(model: nn.Module, teacher: Any) -> list[str] | None:
    """Start a BiDet SSD student from a real ``ssd300_vgg16`` teacher (a Detector); None for other archs.

    Along :func:`teacher_table` (weights; biases where both have one), the L2Norm scale, and the
    teacher's 4 box outputs per prior into the *mean* half of the student's 8 (``loc`` rows
    ``8a + 4 .. 8a + 7``). BN layers, shortcuts, log-variance rows and the convs without a
    counterpart keep the release's initialisation. Returns the student parameters set from the teacher.
    """
    if teacher.config.arch != "ssd300_vgg16":
        return None
    t_model, form = teacher.model, model.backbone.form
    if teacher.config.options.get("priors", "coco") != _options_of(model):
        log.warning("the teacher's SSD priors (%s) differ from the student's (%s): its heads predict for other boxes",
                    teacher.config.options.get("priors", "torchvision coco"), _options_of(model))
    t_mod, s_mod = dict(t_model.named_modules()), dict(model.named_modules())
    loaded = []
    for t_name, s_name in teacher_table(form):
        src, dst = t_mod[t_name], s_mod[s_name]
        _copy(dst.weight, src.weight, s_name)
        loaded.append(f"{s_name}.weight")
        if dst.bias is not None and src.bias is not None:
            _copy(dst.bias, src.bias, s_name)
            loaded.append(f"{s_name}.bias")
    _copy(model.backbone.L2Norm.weight, t_model.backbone.scale_weight, "backbone.L2Norm")
    loaded.append("backbone.L2Norm.weight")
    for k, (src, dst) in enumerate(zip(t_model.head.regression_head.module_list, model.head.loc)):
        if model.head.variance:
            fill_mean_half(dst, src, f"head.loc.{k}")
        else:
            _copy(dst.weight, src.weight, f"head.loc.{k}")
            _copy(dst.bias, src.bias, f"head.loc.{k}")
        loaded += [f"head.loc.{k}.weight", f"head.loc.{k}.bias"]
    return loaded


def _options_of(model: nn.Module) -> str:
    """The prior set of a built student, read off its anchor scales."""
    return next((p for p in ssd_priors.PRIORS if model.anchor_generator.scales == ssd_priors.scales(p)), "?")


def _infer(shape: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    if "backbone.vgg.layers.0.weight" not in shape or "head.loc.0.weight" not in shape:
        return None
    options = {"form": "sc" if "backbone.vgg.layers.3.downsample.1.weight" in shape else "plain",
               "variance": shape["head.loc.0.weight"][0] == 8 * ssd_priors.BOXES_PER_LOCATION[0]}
    return {"arch": "bidetssd300_vgg16", "num_classes": shape["head.conf.0.weight"][0] // 4,
            "width_mult": shape["backbone.L2Norm.weight"][0] / 512, "options": options}  # conv4_3: no minimum width


register_family(DetectorFamily(
    "bidetssd300", ("bidetssd300_vgg16",), build_bidet_ssd300, default_size=(300, 300),
    keep_real=("backbone.vgg.layers.0", "backbone.vgg.layers.*.downsample.*", "backbone.vgg.layers.22", "head.*"),
    tiny={"width_mult": 0.125, "min_size": None, "max_size": None, "anchor_sizes": None}, infer=_infer,
    transfer=transfer, description="BiDet's 1-bit SSD300-VGG16 (options.form sc | plain, ssd.pytorch priors)",
))
