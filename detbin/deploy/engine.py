"""Detections with backbone + FPN + RPN head on OpenVINO and the rest in torchvision.

:class:`OpenVINOEngine` runs the exported part (batch 1, one compiled model per padded input
size, compiled on first use); :func:`detect` is torchvision's ``GeneralizedRCNN`` eval path with
that engine in place of ``backbone`` and ``rpn.head``: anchors, proposal decoding and NMS,
RoIAlign, the box head and the post-processing stay in torch (real-valued, as in the student).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.rpn import concat_box_prediction_layers

from detbin.core.types import Detections
from detbin.deploy.forms import ExportError
from detbin.deploy.openvino_export import compile_model, exported_part, require_openvino, to_openvino
from detbin.models.detector import Detector

__all__ = ["OpenVINOEngine", "detect"]


class OpenVINOEngine:
    """The exported part of a Faster R-CNN (backbone, FPN, RPN head) on the OpenVINO CPU plugin.

    Args:
        model: an ``ov.Model`` from :func:`~detbin.deploy.openvino_export.to_openvino` (any static size).
        levels: the FPN level names, in output order.
        rpn: whether the model also returns the RPN head outputs.
        threads: inference threads (None: OpenVINO's default).
    """

    def __init__(self, model: Any, levels: Sequence[str], rpn: bool = True, threads: int | None = 1) -> None:
        self.model, self.levels, self.rpn, self.threads = model, list(levels), rpn, threads
        self._compiled: dict[tuple[int, int], Any] = {}

    @classmethod
    def from_detector(cls, detector: Detector, size: Sequence[int], threads: int | None = 1,
                      binarize: bool = True) -> OpenVINOEngine:
        """Convert ``detector``'s part (static ``size`` = padded H, W) and wrap it; ``binarize`` False: fp32."""
        part, _ = exported_part(detector, rpn=True, marked=binarize)
        return cls(to_openvino(part, size, binarize=binarize), part.levels, rpn=True, threads=threads)

    @classmethod
    def from_file(cls, path: Path, levels: Sequence[str], threads: int | None = 1) -> OpenVINOEngine:
        """An IR written by ``detbin export --format openvino`` (``model.xml`` next to its ``.bin``)."""
        ov = require_openvino()
        if not Path(path).is_file():
            raise ExportError(f"{path}: no such OpenVINO IR file; run detbin export --format openvino")
        return cls(ov.Core().read_model(str(path)), levels, rpn=True, threads=threads)

    def compiled(self, size: tuple[int, int]) -> Any:
        """The compiled model for input ``[1, 3, *size]`` (compiled once per size)."""
        if size not in self._compiled:
            model = self.model.clone()
            model.reshape([1, 3, *size])
            self._compiled[size] = compile_model(model, self.threads)
        return self._compiled[size]

    def __call__(self, batch: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` -> the part's outputs, each ``[N, ...]`` (images run one at a time)."""
        compiled = self.compiled((int(batch.shape[-2]), int(batch.shape[-1])))
        request = compiled.create_infer_request()
        per_image = []
        for image in batch:
            request.infer({0: image[None].contiguous().numpy()})
            per_image.append([torch.from_numpy(request.get_output_tensor(i).data.copy())
                              for i in range(len(compiled.outputs))])
        return [torch.cat(outs) for outs in zip(*per_image)]


@torch.no_grad()
def detect(detector: Detector, engine: OpenVINOEngine, images: list[Tensor]) -> list[Detections]:
    """Faster R-CNN inference with ``engine`` for backbone + FPN + RPN head: ``{boxes, labels, scores}`` per image.

    Boxes are ``xyxy`` in input-image pixels, as :meth:`Detector.predict` returns them; the
    detector supplies the transform, anchors, proposal filtering, RoI heads and post-processing.
    """
    model = detector.model.eval()
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, _ = model.transform(images)
    outputs = engine(image_list.tensors)
    n = len(engine.levels)
    features = OrderedDict(zip(engine.levels, outputs[:n]))
    maps = list(features.values())
    rpn = model.rpn
    objectness, deltas = (outputs[n:2 * n], outputs[2 * n:3 * n]) if engine.rpn else rpn.head(maps)
    anchors = rpn.anchor_generator(image_list, maps)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
    detections, _ = model.roi_heads(features, boxes, image_list.image_sizes)
    return model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
