"""detectron2's meta-architectures (GeneralizedRCNN, RetinaNet) as a detbin detector family.

detectron2 is not on the package registry detbin installs from, so this adapter is written
against detectron2's documented model interface and tested against a stand-in that follows it
(``tests/standins/detectron2``); it has not been run against detectron2 itself. The interface:

* input: a list with one dict per image: ``"image"`` ``Tensor[C, H, W]`` in the model's
  ``input_format`` (``"BGR"`` by default) and 0..255 range, ``"height"``/``"width"`` (the
  resolution outputs are returned in) and, for training, ``"instances"``: an ``Instances`` with
  ``gt_boxes`` (``Boxes``, xyxy pixels) and ``gt_classes`` (0-based);
* training mode: ``model(batched_inputs)`` returns a dict of losses;
* eval mode: a list of ``{"instances": Instances}`` with ``pred_boxes``, ``scores``, ``pred_classes``;
* ``model.backbone`` maps ``model.preprocess_image(batched_inputs).tensor`` to a dict of maps.

Architectures: ``detectron2_generalizedrcnn`` and ``detectron2_retinanet``. ``options`` of the
:class:`~detbin.models.config.DetectorConfig`: ``config_file`` (a detectron2 YAML on disk) and
``opts`` (``["KEY", "VALUE", ...]`` overrides, as detectron2's ``merge_from_list``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch import Tensor, nn

from detbin.core.errors import ConfigError
from detbin.core.types import Detections, Target
from detbin.models.config import DetectorConfig
from detbin.models.families import DetectorFamily, register_family

__all__ = ["Detectron2Detector", "build_detectron2"]

_META = {"detectron2_generalizedrcnn": "GeneralizedRCNN", "detectron2_retinanet": "RetinaNet"}


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"the detectron2 family needs detectron2 ({exc}); install it from its own instructions "
                          "(it is not on PyPI), then retry") from None


def build_detectron2(config: DetectorConfig) -> nn.Module:
    """``detectron2.modeling.build_model`` of the config file, with detbin's class count, on CPU."""
    cfg = _import("detectron2.config").get_cfg()
    if config.options.get("config_file"):
        cfg.merge_from_file(str(config.options["config_file"]))
    cfg.merge_from_list(list(config.options.get("opts", [])))
    cfg.MODEL.META_ARCHITECTURE = _META[config.arch]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = config.num_classes - 1  # detectron2 counts no background
    cfg.MODEL.RETINANET.NUM_CLASSES = config.num_classes - 1
    cfg.MODEL.DEVICE = "cpu"
    return _import("detectron2.modeling").build_model(cfg)


class Detectron2Detector:
    """The :class:`~detbin.models.detector.Detector` of a detectron2 meta-architecture.

    Converts detbin's batches (RGB ``FloatTensor[3, H, W]`` in 0..1, labels 1..K) to
    detectron2's inputs (``input_format`` channel order, 0..255, classes 0..K-1) and its
    outputs back to ``{boxes, labels, scores}`` with labels 1..K.
    """

    def __init__(self, model: nn.Module, config: DetectorConfig, family: DetectorFamily) -> None:
        self.model, self.config = model, config
        self.forward_module: nn.Module | None = None
        self.keep_real: tuple[str, ...] = family.keep_real
        self.resnet_body: str | None = None

    def _inputs(self, images: list[Tensor], targets: list[Target] | None = None) -> list[dict[str, Any]]:
        structures = _import("detectron2.structures")
        bgr = getattr(self.model, "input_format", "BGR") == "BGR"
        batch = []
        for i, image in enumerate(images):
            pixels = (image.flip(0) if bgr else image) * 255.0
            item: dict[str, Any] = {"image": pixels, "height": image.shape[-2], "width": image.shape[-1]}
            if targets is not None:
                instances = structures.Instances(tuple(image.shape[-2:]))
                instances.gt_boxes = structures.Boxes(targets[i]["boxes"])
                instances.gt_classes = targets[i]["labels"] - 1
                item["instances"] = instances
            batch.append(item)
        return batch

    def losses(self, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        """detectron2's training losses (model in training mode)."""
        if not self.model.training:
            raise RuntimeError("Detector.losses needs the model in training mode (call model.train())")
        forward = self.forward_module if self.forward_module is not None else self.model
        return forward(self._inputs(images, targets))

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = self.model(self._inputs(images))
        finally:
            self.model.train(was_training)
        return [{"boxes": o["instances"].pred_boxes.tensor, "scores": o["instances"].scores,
                 "labels": o["instances"].pred_classes.to(torch.int64) + 1} for o in outputs]

    def features(self, images: list[Tensor]) -> dict[str, Tensor]:
        return self.model.backbone(self.model.preprocess_image(self._inputs(images)).tensor)

    def dry_run(self) -> list[Detections]:
        return self.predict([torch.rand(3, 64, 64, device=next(self.model.parameters()).device)])

    def to(self, device: torch.device | str) -> Detectron2Detector:
        self.model.to(device)
        return self


register_family(DetectorFamily(
    "detectron2", tuple(_META), build_detectron2, adapter=Detectron2Detector,
    keep_real=("backbone.bottom_up.stem.conv1", "*.shortcut", "proposal_generator.rpn_head.objectness_logits",
               "proposal_generator.rpn_head.anchor_deltas", "roi_heads.box_predictor.*", "head.cls_score",
               "head.bbox_pred"),
    description="detectron2 GeneralizedRCNN / RetinaNet, options.config_file; detectron2 "
                + ("found" if importlib.util.find_spec("detectron2") else "not installed here")))
