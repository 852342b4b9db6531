"""RoIAlign whose CPU backward runs on every core, bit for bit torchvision's.

torchvision's CPU ``roi_align`` backward is one single-threaded loop; training the tiny CPU
configs spends about 40% of a Faster R-CNN step in it. Each channel's gradient plane is written
only by that channel's outputs, in the same order whatever the other channels do, so running the
very same kernel on channel slices in parallel threads gives the identical gradient (the kernel
releases the GIL). The forward is torchvision's op unchanged. On CUDA, or with one thread,
torchvision's own autograd is used.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as _TorchvisionMultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["roi_align", "MultiScaleRoIAlign"]

_POOL: ThreadPoolExecutor | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers != workers:  # noqa: SLF001 - resize only when the thread count changes
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="detbin-roi-align")
    return _POOL


class _ParallelRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,  # type: ignore[override]
                sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (tuple(features.shape), output_size, spatial_scale, sampling_ratio, aligned)
        return torch.ops.torchvision.roi_align(features, rois, spatial_scale, output_size[0], output_size[1],
                                               sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (rois,) = ctx.saved_tensors
        (n, c, h, w), (ph, pw), scale, ratio, aligned = ctx.args
        workers = min(torch.get_num_threads(), c)
        bounds = [round(i * c / workers) for i in range(workers + 1)]

        def plane(lo: int, hi: int) -> Tensor:
            return torch.ops.torchvision._roi_align_backward(
                grad[:, lo:hi].contiguous(), rois, scale, ph, pw, n, hi - lo, h, w, ratio, aligned)

        parts = list(_pool(workers).map(plane, bounds[:-1], bounds[1:]))
        return torch.cat(parts, dim=1), None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` (``rois``: ``[K, 5]`` batch index + xyxy) with the parallel CPU backward.

    Returns:
        ``[K, C, output_size[0], output_size[1]]``.
    """
    if features.device.type != "cpu" or torch.get_num_threads() == 1 or not features.requires_grad:
        return torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _ParallelRoIAlign.apply(features, rois, tuple(output_size), float(spatial_scale), sampling_ratio, aligned)


class MultiScaleRoIAlign(_TorchvisionMultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same level mapping, same outputs) on :func:`roi_align`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = torch.zeros((len(rois), features[0].shape[1], *self.output_size), dtype=features[0].dtype,
                             device=features[0].device)
        for level, (level_features, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align(level_features, rois[index], self.output_size, scale,
                                      self.sampling_ratio).to(result.dtype)
        return result
