"""The ``fgfi`` and ``defeat`` recipes: masked FPN feature imitation of the teacher.

Settings are the VOC configs of the code base IDa-Det forked (``ggjy/DeFeat.pytorch``,
``configs/kd_faster_rcnn/voc_stu_faster_rcnn_r50_FGFI.py`` and ``..._decouple_neck.py``):
one 3x3 adaptation conv per FPN level on the student side, the teacher's FPN output as the
target, loss weight 3 on the object mask and (DeFeat) 12 on the background.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from detbin import (ConfigError, Detector, Params, Recipe, Step, adaptation_convs, fgfi_mask, gt_mask, map_levels,
                    masked_imitation)

__all__ = ["FGFI", "DeFeat"]

_REACTNET = {"form": "reactnet", "activation": "rsign",
             "weight": {"name": "scaled_sign", "detach_scale": True, "ste": "clip"}}


class _Imitation(Recipe):
    """Shared plumbing: taps, adaptation convs, per-level masks."""

    needs_teacher = True
    layout: ClassVar[dict[str, Any]] = _REACTNET

    def tap_names(self, student: Detector) -> list[str]:
        return ["transform", "backbone"]

    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        if not hasattr(student.model.backbone, "fpn"):
            raise ConfigError(f"recipe {self.name!r} imitates FPN features; {student.config.arch} has no FPN "
                              "(use a fasterrcnn/retinanet/fcos *_fpn architecture)")
        was_training = student.model.training
        student.model.eval()
        with torch.no_grad():
            levels = len(student.model.backbone(torch.zeros(1, 3, 64, 64, device=_device(student))))
        student.model.train(was_training)
        self.adapt = adaptation_convs(student.config.fpn_channels, teacher.config.fpn_channels,
                                      levels).to(_device(student))

    def _level_inputs(self, step: Step) -> tuple[list[Tensor], list[Tensor], Any, list[Tensor]]:
        """Student maps (with grad), teacher maps, the transformed image list and targets."""
        image_list, targets = step.student_taps["transform"][0]
        student_maps = list(step.student_taps["backbone"][0].values())
        teacher_maps = [t.detach() for t in step.teacher_taps["backbone"][0].values()]
        boxes = [t["boxes"] for t in targets]
        return student_maps, teacher_maps, image_list, boxes

    def _per_level(self, step: Step) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Adapted student maps, teacher maps and the method's ``[B, H_l, W_l]`` masks per level."""
        student_maps, teacher_maps, image_list, boxes = self._level_inputs(step)
        adapted = [conv(s) for conv, s in zip(self.adapt, student_maps)]
        with torch.no_grad():
            masks = self._masks(step, student_maps, image_list, boxes)
        return adapted, teacher_maps, masks

    def _assign(self, boxes: list[Tensor], levels: int) -> list[Tensor]:
        return [map_levels(b, levels, self.params.canonical_scale) for b in boxes]


def _device(detector: Detector) -> torch.device:
    return next(detector.model.parameters()).device


class FGFI(_Imitation):
    """Fine-grained feature imitation (Wang et al., CVPR 2019, Eq. 2), FPN version of the DeFeat code."""

    name = "fgfi"
    paper = ("Wang et al., Distilling Object Detectors with Fine-grained Feature Imitation, CVPR 2019, "
             "arXiv:1906.03609")

    class Params(Params):
        weight: float = 3.0  # hint_neck_w of the repository's FGFI config
        phi: float = 0.5  # the anchor-IoU threshold factor (paper Sec. 3.1)
        canonical_scale: float = 56.0  # level assignment: floor(log2(sqrt(wh) / 56))

    def _masks(self, step: Step, maps: list[Tensor], image_list: Any, boxes: list[Tensor]) -> list[Tensor]:
        model = step.student.model
        generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
        anchors = generator(image_list, maps)  # per image: [sum_l H_l W_l A_l, 4], level-major
        per_location = generator.num_anchors_per_location()
        sizes = [m.shape[-2] * m.shape[-1] * a for m, a in zip(maps, per_location)]
        assigned = self._assign(boxes, len(maps))
        masks = []
        for level, (fmap, a) in enumerate(zip(maps, per_location)):
            h, w = fmap.shape[-2:]
            per_image = [fgfi_mask(image_anchors.split(sizes)[level].view(h, w, a, 4), b[lv == level],
                                   self.params.phi) for image_anchors, b, lv in zip(anchors, boxes, assigned)]
            masks.append(torch.stack(per_image))
        return masks

    def loss(self, step: Step) -> dict[str, Tensor]:
        adapted, teacher, masks = self._per_level(step)
        terms = [masked_imitation(s, t, m) for s, t, m in zip(adapted, teacher, masks)]
        return {"kd": self.params.weight * torch.stack(terms).mean()}


class DeFeat(_Imitation):
    """Decoupled feature imitation (Guo et al., CVPR 2021, Eq. 3): objects and background apart."""

    name = "defeat"
    paper = "Guo et al., Distilling Object Detectors via Decoupled Features, CVPR 2021, arXiv:2103.14475"

    class Params(Params):
        weight_fg: float = 3.0  # hint_neck_w of the repository's VOC config
        weight_bg: float = 12.0  # hint_neck_back_w
        canonical_scale: float = 56.0

    def _masks(self, step: Step, maps: list[Tensor], image_list: Any, boxes: list[Tensor]) -> list[Tensor]:
        assigned = self._assign(boxes, len(maps))
        padded_height = image_list.tensors.shape[-2]
        masks = []
        for level, fmap in enumerate(maps):
            h, w = fmap.shape[-2:]
            stride = padded_height // h
            masks.append(torch.stack([gt_mask(b[lv == level], stride, h, w) for b, lv in zip(boxes, assigned)]))
        return masks

    def loss(self, step: Step) -> dict[str, Tensor]:
        adapted, teacher, masks = self._per_level(step)
        fg = torch.stack([masked_imitation(s, t, m) for s, t, m in zip(adapted, teacher, masks)]).mean()
        bg = torch.stack([masked_imitation(s, t, ~m) for s, t, m in zip(adapted, teacher, masks)]).mean()
        return {"kd_fg": self.params.weight_fg * fg, "kd_bg": self.params.weight_bg * bg}
