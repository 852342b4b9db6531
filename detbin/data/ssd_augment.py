"""SSD's training augmentation (ssd.pytorch ``utils/augmentations.py``, used by BiDet; methods.md §4.4).

Selected by ``data.augment: ssd`` (:func:`detbin.app.build.data.train_loader`); any SSD run may use it.
``SSDAugmentation`` = photometric distortion -> expand (zoom out onto a mean-filled canvas) -> IoU
random crop -> mirror -> resize to the SSD's input side. Here on ``FloatTensor[3, H, W]`` images in
0..1 (RGB) and xyxy absolute-pixel boxes; the mean subtraction stays in the detector's transform.
Every random draw comes from one ``torch.Generator`` seeded from ``(seed, epoch, index)``
(:class:`SSDTrainView`), so a resumed run replays the same augmentations.

Faithful to ssd.pytorch, including two of its quirks ([Q]):

* the crop's IoU test reads ``min(IoU) < lo and hi < max(IoU)``; with ``hi = inf`` it never
  rejects, so the IoU modes act like the free mode (``iou_check="enforced"`` applies the
  intended ``or``: every kept GT must have ``lo <= IoU <= hi``);
* ``random.uniform(W - w)`` is numpy's ``uniform(low=W - w, high=1)``: the crop's left/top
  offsets are drawn between ``W - w`` and 1, not between 0 and ``W - w``.

[D] Photometric values are clamped to [0, 1] once, at the end (ssd.pytorch never clamps; cv2's
HSV conversion of negative values is undefined, so they are clamped at 0 before it). [D] An
image without boxes skips the crop (ssd.pytorch raises on it). [D] The mirror's probability is
``data.flip`` (ssd.pytorch: 1/2, the default), so ``data.flip`` means the same with or without
the SSD pipeline.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["Draw", "MEAN_RGB", "SAMPLE_OPTIONS", "rgb_to_hsv", "hsv_to_rgb", "photometric_distort", "expand_with",
           "expand", "crop_with", "crop_rejected", "random_crop", "mirror", "resize", "SSDAugmentation", "SSDTrainView"]

MEAN_RGB = (123.0 / 255, 117.0 / 255, 104.0 / 255)  # ssd.pytorch MEANS (104, 117, 123) are BGR
# (min IoU, max IoU) of ssd.pytorch's RandomSampleCrop; None keeps the whole image
SAMPLE_OPTIONS: tuple[tuple[float | None, float | None] | None, ...] = (
    None, (0.1, None), (0.3, None), (0.7, None), (0.9, None), (None, None))
_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class Draw:
    """numpy-``random``-like draws from a ``torch.Generator`` (the only source of randomness)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """numpy's ``uniform(low, high)``: ``low + (high - low) * U`` (also when ``low > high``)."""
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def randint(self, n: int) -> int:
        """An integer in ``0..n-1`` (``random.randint(2)`` is a fair coin)."""
        return int(torch.randint(n, (), generator=self.generator))


def rgb_to_hsv(image: Tensor) -> Tensor:
    """``[3, H, W]`` RGB (values >= 0) -> H in [0, 360), S, V (cv2's float convention)."""
    r, g, b = image
    maxc, minc = image.max(0).values, image.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue * 60.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv` (S may exceed 1, as after ssd.pytorch's saturation jitter)."""
    h, s, v = hsv
    c = v * s
    hp = (h / 60.0) % 6
    x = c * (1 - (hp % 2 - 1).abs())
    zero = torch.zeros_like(c)
    sector = hp.floor().clamp(0, 5)
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = torch.zeros_like(hsv)
    for k, channels in enumerate(table):
        rgb = torch.where(sector == k, torch.stack(channels), rgb)
    return rgb + (v - c)


def _contrast(image: Tensor, draw: Draw) -> Tensor:
    return image * draw.uniform(0.5, 1.5) if draw.randint(2) else image


def _hsv_jitter(image: Tensor, draw: Draw) -> Tensor:
    hsv = rgb_to_hsv(image.clamp(min=0.0))
    if draw.randint(2):  # RandomSaturation
        hsv[1] = hsv[1] * draw.uniform(0.5, 1.5)
    if draw.randint(2):  # RandomHue, +-18 degrees, wrapped
        hue = hsv[0] + draw.uniform(-18.0, 18.0)
        hsv[0] = torch.where(hue > 360.0, hue - 360.0, torch.where(hue < 0.0, hue + 360.0, hue))
    return hsv_to_rgb(hsv)


def photometric_distort(image: Tensor, draw: Draw) -> Tensor:
    """Brightness (+-32/255), then contrast (x0.5..1.5) before or after the HSV jitter, then a channel swap."""
    out = image.clone()
    if draw.randint(2):
        out = out + draw.uniform(-32.0, 32.0) / 255.0
    if draw.randint(2):
        out = _hsv_jitter(_contrast(out, draw), draw)
    else:
        out = _contrast(_hsv_jitter(out, draw), draw)
    if draw.randint(2):
        out = out[list(_PERMUTATIONS[draw.randint(len(_PERMUTATIONS))])]
    return out.clamp(0.0, 1.0)


def expand_with(image: Tensor, boxes: Tensor, ratio: float, left: float, top: float,
                mean: tuple[float, float, float] = MEAN_RGB) -> tuple[Tensor, Tensor]:
    """Place ``image`` at ``(int(left), int(top))`` on an ``int(H r) x int(W r)`` canvas filled with ``mean``."""
    _, h, w = image.shape
    canvas = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1).repeat(1, int(h * ratio), int(w * ratio))
    x0, y0 = int(left), int(top)
    canvas[:, y0:y0 + h, x0:x0 + w] = image
    return canvas, boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)


def expand(image: Tensor, boxes: Tensor, draw: Draw, mean: tuple[float, float, float] = MEAN_RGB
           ) -> tuple[Tensor, Tensor]:
    """ssd.pytorch ``Expand``: with probability 1/2, ratio ~ U(1, 4), offsets ~ U(0, (r - 1) side)."""
    if draw.randint(2):
        return image, boxes
    _, h, w = image.shape
    ratio = draw.uniform(1.0, 4.0)
    left = draw.uniform(0.0, w * ratio - w)
    top = draw.uniform(0.0, h * ratio - h)
    return expand_with(image, boxes, ratio, left, top, mean)


def _iou(boxes: Tensor, rect: Tensor) -> Tensor:
    lt, rb = torch.maximum(boxes[:, :2], rect[:2]), torch.minimum(boxes[:, 2:], rect[2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (area + (rect[2:] - rect[:2]).prod() - inter)


def crop_with(image: Tensor, boxes: Tensor, rect: tuple[int, int, int, int]) -> tuple[Tensor, Tensor, Tensor] | None:
    """Cut ``rect = (x1, y1, x2, y2)``; keep the boxes whose centre is strictly inside, clipped and shifted.

    Returns:
        ``(image, boxes, kept index)``, or None when no box centre lies inside (ssd.pytorch retries).
    """
    r = torch.tensor(rect, dtype=boxes.dtype)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (r[0] < centres[:, 0]) & (r[1] < centres[:, 1]) & (r[2] > centres[:, 0]) & (r[3] > centres[:, 1])
    if not bool(inside.any()):
        return None
    kept = torch.where(inside)[0]
    out = boxes[kept].clone()
    out[:, :2] = torch.maximum(out[:, :2], r[:2]) - r[:2]
    out[:, 2:] = torch.minimum(out[:, 2:], r[2:]) - r[:2]
    return image[:, rect[1]:rect[3], rect[0]:rect[2]], out, kept


def crop_rejected(iou: Tensor, lo: float, hi: float, iou_check: Literal["ssd.pytorch", "enforced"]) -> bool:
    """ssd.pytorch's test ``min < lo and hi < max`` (never true for ``hi = inf``), or the intended ``or``."""
    low, high = bool(iou.min() < lo), bool(hi < iou.max())
    return (low and high) if iou_check == "ssd.pytorch" else (low or high)


def random_crop(image: Tensor, boxes: Tensor, draw: Draw, iou_check: Literal["ssd.pytorch", "enforced"] = "ssd.pytorch",
                max_rounds: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """ssd.pytorch ``RandomSampleCrop`` (see the module docstring for its quirks); returns the kept index too."""
    everything = torch.arange(boxes.shape[0])
    if boxes.shape[0] == 0:
        return image, boxes, everything
    _, height, width = image.shape
    for _ in range(max_rounds):  # ssd.pytorch loops forever; the None mode (p = 1/6 per round) ends it
        mode = SAMPLE_OPTIONS[draw.randint(len(SAMPLE_OPTIONS))]
        if mode is None:
            return image, boxes, everything
        lo = float("-inf") if mode[0] is None else mode[0]
        hi = float("inf") if mode[1] is None else mode[1]
        for _ in range(50):
            w, h = draw.uniform(0.3 * width, width), draw.uniform(0.3 * height, height)
            if h / w < 0.5 or h / w > 2:
                continue
            left, top = draw.uniform(width - w), draw.uniform(height - h)  # numpy: uniform(low=W - w, high=1)
            rect = (int(left), int(top), int(left + w), int(top + h))
            iou = _iou(boxes, torch.tensor(rect, dtype=boxes.dtype))
            if crop_rejected(iou, lo, hi, iou_check):
                continue
            cropped = crop_with(image, boxes, rect)
            if cropped is not None:
                return cropped
    return image, boxes, everything


def mirror(image: Tensor, boxes: Tensor, draw: Draw, p: float = 0.5) -> tuple[Tensor, Tensor]:
    """Left-right flip with probability ``p``: ``x1' = W - x2``, ``x2' = W - x1``."""
    if draw.uniform() >= p:
        return image, boxes
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.flip(-1), flipped


def resize(image: Tensor, boxes: Tensor, size: int = 300) -> tuple[Tensor, Tensor]:
    """Bilinear resize to ``size x size`` (cv2 INTER_LINEAR: half-pixel centres, no antialias)."""
    _, h, w = image.shape
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    scale = torch.tensor([size / w, size / h, size / w, size / h], dtype=boxes.dtype)
    return out, boxes * scale


class SSDAugmentation:
    """The whole training transform: ``(image, target, generator) -> (image, target)``.

    Per-box fields of ``target`` (``labels``, ``difficult``) follow the boxes the crop keeps.
    """

    def __init__(self, size: int = 300, mean: tuple[float, float, float] = MEAN_RGB, photometric: bool = True,
                 iou_check: Literal["ssd.pytorch", "enforced"] = "ssd.pytorch", flip: float = 0.5) -> None:
        self.size, self.mean, self.photometric, self.iou_check = size, mean, photometric, iou_check
        self.flip = flip

    def __call__(self, image: Tensor, target: dict[str, Any], generator: torch.Generator
                 ) -> tuple[Tensor, dict[str, Any]]:
        draw = Draw(generator)
        boxes = target["boxes"].float()
        if self.photometric:
            image = photometric_distort(image, draw)
        image, boxes = expand(image, boxes, draw, self.mean)
        image, boxes, kept = random_crop(image, boxes, draw, self.iou_check)
        image, boxes = mirror(image, boxes, draw, self.flip)
        image, boxes = resize(image, boxes, self.size)
        out = {k: (v[kept] if isinstance(v, Tensor) and v.shape[:1] == target["boxes"].shape[:1] and k != "boxes"
                   else v) for k, v in target.items()}
        return image, {**out, "boxes": boxes}


class SSDTrainView(Dataset):
    """A source seen through :class:`SSDAugmentation`, difficult objects dropped (detbin's ``TrainView`` rule).

    The generator of item ``i`` is seeded from ``(seed, epoch, i)`` only; the trainer sets ``epoch``.
    """

    def __init__(self, source: Dataset, augment: SSDAugmentation | None = None, seed: int = 0) -> None:
        self.source, self.augment, self.seed, self.epoch = source, augment or SSDAugmentation(), seed, 0

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.source[i]
        if "difficult" in target:
            keep = ~target["difficult"]
            target = {k: (v[keep] if isinstance(v, Tensor) and v.shape[:1] == keep.shape else v)
                      for k, v in target.items()}
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i)
        return self.augment(image, target, generator)
