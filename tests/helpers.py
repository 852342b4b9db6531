"""Helpers shared by tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from detbin.models.config import tiny_config


def toy_config(arch: str = "fasterrcnn_resnet18_fpn", **overrides):
    """Smaller still than the tiny config: 32-channel FPN, 96-px images, few proposals."""
    values = dict(fpn_channels=32, representation_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=64,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32)
    if arch.startswith(("fasterrcnn", "retinanet", "fcos")):  # SSD families keep their fixed input size
        values.update(min_size=96, max_size=96)
    if arch.startswith("fcos"):  # GroupNorm(32, C) on a 1x1 P7 map needs 2+ channels per group
        values.update(fpn_channels=64)
    return tiny_config(arch, **{**values, **overrides})
