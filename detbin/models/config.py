"""The architecture of a detector as plain values: what every checkpoint stores to rebuild it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from detbin.core.errors import ConfigError, reject_unknown_keys
from detbin.models.families import family_of

__all__ = ["DetectorConfig", "tiny_config"]

_FPN_ARCH = re.compile(r"^(fasterrcnn|retinanet|fcos)_resnet(18|34|50|101)_fpn$")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector's architecture (saved in every checkpoint).

    Attributes:
        arch: an architecture of a registered family (:func:`~detbin.models.families.all_archs`).
        num_classes: classes including background (21 for VOC).
        width_mult: channel multiplier of the backbone (1.0 = the paper-size network).
        fpn_channels: FPN width (256 in torchvision); also the RPN/dense-head width.
        representation_size: width of the two FCs of the R-CNN box head (1024).
        min_size, max_size: resize bounds of the input transform; ``None`` keeps torchvision's
            family default (800/1333 for FPN families; the papers' VOC setting is 600/1000).
            SSD families use ``min_size`` as their fixed square input size (300, 320). A list of
            ``min_size`` values trains multi-scale (one drawn per batch, torchvision's rule) and
            tests at the last one.
        anchor_sizes: smallest anchor per FPN level; ``None`` keeps the family default.
        rpn_*, box_*: Faster R-CNN proposal and sampling settings (torchvision names).
        score_thresh, nms_thresh, detections_per_img: test-time post-processing; ``None`` keeps
            the family default (Faster R-CNN: 0.05, 0.5, 100).
        options: family-specific settings (plain values), validated by the family's builder.
    """

    arch: str = "fasterrcnn_resnet18_fpn"
    num_classes: int = 21
    width_mult: float = 1.0
    fpn_channels: int = 256
    representation_size: int = 1024
    min_size: int | tuple[int, ...] | None = None
    max_size: int | None = None
    anchor_sizes: tuple[int, ...] | None = None
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    score_thresh: float | None = None
    nms_thresh: float | None = None
    detections_per_img: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family_of(self.arch)  # unknown families and architectures fail here, with the valid names
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must count background too (>= 2), got {self.num_classes}")
        if self.anchor_sizes is not None:
            object.__setattr__(self, "anchor_sizes", tuple(int(a) for a in self.anchor_sizes))
        if isinstance(self.min_size, (list, tuple)):
            object.__setattr__(self, "min_size", tuple(int(a) for a in self.min_size))

    @property
    def family(self) -> str:
        """The family name: the architecture's prefix (``fasterrcnn``, ``ssd300`` ...)."""
        return self.arch.split("_")[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """Test-time ``(min_size, max_size)`` with family defaults filled in."""
        default = family_of(self.arch).default_size
        smallest = self.min_size[-1] if isinstance(self.min_size, tuple) else self.min_size
        return (smallest or default[0], self.max_size or default[1])

    @property
    def train_sizes(self) -> int | tuple[int, ...]:
        """``min_size`` as torchvision's transform takes it (a tuple trains multi-scale)."""
        return self.min_size if isinstance(self.min_size, tuple) else self.input_size[0]

    @property
    def depth(self) -> int | None:
        """ResNet depth of FPN families, else None."""
        match = _FPN_ARCH.match(self.arch)
        return int(match.group(2)) if match else None

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so the config survives ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        out["anchor_sizes"] = list(self.anchor_sizes) if self.anchor_sizes else None
        out["min_size"] = list(self.min_size) if isinstance(self.min_size, tuple) else self.min_size
        out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        reject_unknown_keys("detector", values, (f.name for f in dataclasses.fields(cls)))
        return cls(**values)


def tiny_config(arch: str = "fasterrcnn_resnet18_fpn", num_classes: int = 6, **overrides: Any) -> DetectorConfig:
    """The CPU-sized variant of ``arch``: quarter-width backbone, 64-channel FPN, 128-px images.

    Every code path of the full-size model is kept; only widths, image size and proposal
    counts shrink (a training step takes ~0.2 s on two CPU cores for Faster R-CNN R18).
    """
    values: dict[str, Any] = dict(arch=arch, num_classes=num_classes, width_mult=0.25, fpn_channels=64,
                                  representation_size=256, min_size=128, max_size=128,
                                  anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=600,
                                  rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                                  rpn_post_nms_top_n_test=150, box_batch_size_per_image=128)
    values.update(family_of(arch).tiny)
    values.update(overrides)
    return DetectorConfig(**values)
