"""The one inference loop: in-training evaluation and ``detbin eval`` both score through here.

Several detectors can run on the same batches (each image decoded once: ``eval --compare``).
Scoring uses the data set's exact ground truth (``dataset.target(i)``: float64 for COCO JSON,
the file's values) whenever the loader walks the data set in order, else the loader's targets;
so the same model on the same data gives the same numbers to the last digit, wherever it is
scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, SequentialSampler, Subset

from detbin.core.types import Detections, Target
from detbin.evaluation.metrics import EvalResult

__all__ = ["predict_loader", "exact_targets", "run_evaluation"]


def predict_loader(detectors: Sequence[Any], loader: DataLoader, max_images: int | None = None,
                   progress: Callable[[int], None] | None = None
                   ) -> tuple[list[Target], list[list[Detections]]]:
    """Run every detector (eval mode, no grad) over ``loader``'s batches.

    Args:
        detectors: :class:`~detbin.models.detector.Detector` objects; each runs on its own device.
        loader: yields ``(images, targets)``.
        max_images: stop after this many images.
        progress: called with the number of images done after each batch.

    Returns:
        The loader's targets, and per detector one ``{boxes, scores, labels}`` (CPU) per image.
    """
    outputs: list[list[Detections]] = [[] for _ in detectors]
    targets: list[Target] = []
    devices = [next(d.model.parameters()).device for d in detectors]
    with torch.inference_mode():
        for images, batch_targets in loader:
            if max_images is not None and len(targets) >= max_images:
                break
            if max_images is not None:
                images, batch_targets = images[: max_images - len(targets)], batch_targets[: max_images - len(targets)]
            targets += batch_targets
            for detector, device, out in zip(detectors, devices, outputs):
                out += [{k: v.cpu() for k, v in d.items()} for d in detector.predict([i.to(device) for i in images])]
            if progress is not None:
                progress(len(targets))
    return targets, outputs


def exact_targets(loader: DataLoader, count: int) -> list[Target] | None:
    """``dataset.target(i)`` of the first ``count`` images when the loader reads them in order, else None."""
    if not isinstance(getattr(loader, "sampler", None), SequentialSampler):
        return None
    dataset, indices = loader.dataset, range(count)
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, [dataset.indices[i] for i in range(count)]
    if not hasattr(dataset, "target"):
        return None
    return [dataset.target(int(i)) for i in indices]


def run_evaluation(detector: Any, loader: DataLoader, evaluator: Any, progress: Callable[[int], None] | None = None,
                   max_images: int | None = None) -> EvalResult:
    """Predict every batch of ``loader`` and score it with ``evaluator`` (``reset/process/summarize``)."""
    targets, (detections,) = predict_loader([detector], loader, max_images, progress)
    evaluator.reset()
    evaluator.process(exact_targets(loader, len(targets)) or targets, detections)
    return evaluator.summarize()
