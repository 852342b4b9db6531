"""The Detector protocol (what recipes may call on student and teacher) and torchvision's adapter.

Every detector speaks torchvision's two-mode contract: in training mode ``model(images,
targets)`` returns a dict of named losses; in eval mode ``model(images)`` returns one
``{"boxes", "labels", "scores"}`` dict per image, boxes ``xyxy`` in input-image pixels.
:func:`build_detector` builds any registered family's architecture (:mod:`detbin.models.families`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from detbin.core.types import Detections, Target
from detbin.models.config import DetectorConfig
from detbin.models.families import DetectorFamily, family_of

__all__ = ["Detector", "TorchvisionDetector", "build_detector"]


@runtime_checkable
class Detector(Protocol):
    """What detbin and recipes use of a detector, student or teacher.

    Attributes:
        model: the ``nn.Module`` (its qualified module names are what taps and layouts match).
        config: the :class:`DetectorConfig` that rebuilds it.
        keep_real: module-name globs kept real by default when binarizing.
        resnet_body: module name of a ResNet body a layout rewrites block by block, or None.
        forward_module: the DDP wrapper of ``model`` while training distributed, else None.
    """

    model: nn.Module
    config: DetectorConfig
    keep_real: tuple[str, ...]
    resnet_body: str | None
    forward_module: nn.Module | None

    def losses(self, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        """Training losses (model in training mode); images ``FloatTensor[3, H, W]`` in 0..1."""
        ...

    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections per image (eval mode, no grad; the previous mode is restored)."""
        ...

    def features(self, images: list[Tensor]) -> dict[str, Tensor]:
        """Backbone (+ neck) feature maps of the transformed batch."""
        ...

    def dry_run(self) -> list[Detections]:
        """One forward pass on a small random image (how a layout records the call order)."""
        ...

    def to(self, device: torch.device | str) -> Detector:
        ...


class TorchvisionDetector:
    """The :class:`Detector` of torchvision's families (``FasterRCNN``, ``RetinaNet``, ``FCOS``, ``SSD``).

    Args:
        model: the torchvision module.
        config: the :class:`DetectorConfig` that rebuilds it.
        family: its family (default: the one serving ``config.arch``).
    """

    def __init__(self, model: nn.Module, config: DetectorConfig, family: DetectorFamily | None = None) -> None:
        family = family or family_of(config.arch)
        self.model = model
        self.config = config
        self.forward_module: nn.Module | None = None  # a DDP wrapper of ``model`` when distributed
        self.keep_real: tuple[str, ...] = family.keep_real
        self.resnet_body: str | None = family.resnet_body

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
        if self.resnet_body is not None:
            transform.min_size, transform.max_size = (64,), 64
        try:
            return self.predict([torch.rand(3, 64, 64, device=next(self.model.parameters()).device)])
        finally:
            transform.min_size, transform.max_size = sizes

    def to(self, device: torch.device | str) -> TorchvisionDetector:
        self.model.to(device)
        return self


def build_detector(config: DetectorConfig) -> Detector:
    """A randomly initialised detector of ``config.arch`` (detbin never downloads weights)."""
    family = family_of(config.arch)
    adapter = family.adapter or TorchvisionDetector
    return adapter(family.build(config), config, family)
