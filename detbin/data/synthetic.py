"""The embedded benchmark: a deterministic synthetic detection data set.

Five shape classes drawn in random colours on textured backgrounds, with varied size,
aspect, rotation, overlap (later objects occlude earlier ones) and truncation at the border.
Objects that are tiny, heavily occluded or mostly cut off are marked ``difficult``, as VOC
annotators do; a few images hold no object. Colour is independent of class, so a detector
must learn shape.

Image ``i`` of a set with seed ``s`` depends on ``(s, i)`` only (``numpy`` generator seeded
with both), so any subset renders identically, in any order, in any process. The same
renderer serves tests in memory (:class:`SyntheticDetection`) and ``detbin data synthetic``,
which writes it in the VOC layout (see :mod:`detbin.voc`).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

from detbin.data import coco
from detbin.data import voc
from detbin.core.errors import DataError

__all__ = [
    "BENCHMARK_TRAIN", "BENCHMARK_TEST", "CLASSES", "GENERATOR_VERSION", "SyntheticObject", "SyntheticImage", "render",
    "to_target", "SyntheticDetection", "write_dataset",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
GENERATOR_VERSION = 1
# The benchmark's split sizes (``detbin demo``, the bench scripts, ``eval --dataset synthetic``).
BENCHMARK_TRAIN, BENCHMARK_TEST = 2000, 500
_MIN_SIDE, _MAX_SIDE = 96, 160
_EMPTY_FRACTION = 0.05
_MAX_OBJECTS = 5
_DIFFICULT_SIZE = 12  # px: smaller objects are marked difficult
_DIFFICULT_VISIBLE = 0.5  # fraction of an object's pixels still visible


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: class index into :data:`CLASSES`, box ``xyxy`` continuous pixels."""

    label: int
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class SyntheticImage:
    """A rendered image (``uint8 [H, W, 3]``) and its objects."""

    pixels: np.ndarray
    objects: tuple[SyntheticObject, ...]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
        field = ramp[..., None] * rng.uniform(-60, 60, size=3)
    elif kind == 1:  # stripes
        period, angle = rng.uniform(6, 24), rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        field = wave[..., None] * rng.uniform(5, 30, size=3)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(6, 20))
        board = ((xx // cell + yy // cell) % 2) * 2 - 1
        field = board[..., None] * rng.uniform(5, 25, size=3)
    else:  # smooth blotches
        coarse = rng.normal(0, 1, size=(max(2, h // 16), max(2, w // 16), 3))
        up = np.asarray(Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8))
                        .resize((w, h), Image.BILINEAR), dtype=np.float32) / 255 - 0.5
        field = up * rng.uniform(20, 70)
    return np.clip(base + field, 0, 255)


def _polygon(label: int, cx: float, cy: float, rx: float, ry: float, angle: float) -> list[tuple[float, float]]:
    if label == 1:  # square / rectangle
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif label == 2:  # triangle
        pts = [(0, -1), (0.95, 0.8), (-0.95, 0.8)]
    else:  # cross
        t = 0.34
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + rx * x * c - ry * y * s, cy + rx * x * s + ry * y * c) for x, y in pts]


def _shape_mask(label: int, h: int, w: int, cx: float, cy: float, rx: float, ry: float, angle: float) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if label in (0, 4):  # circle / ring: axis-aligned ellipses
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        if label == 4:
            draw.ellipse([cx - 0.55 * rx, cy - 0.55 * ry, cx + 0.55 * rx, cy + 0.55 * ry], fill=0)
    else:
        draw.polygon(_polygon(label, cx, cy, rx, ry, angle), fill=255)
    return np.asarray(mask) > 127


def _colour_far_from(rng: np.random.Generator, reference: np.ndarray) -> np.ndarray:
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - reference).sum() > 150:
            return colour
    return 255 - reference


def render(index: int, seed: int = 0) -> SyntheticImage:
    """Render image ``index`` of the set with ``seed`` (pure function of both)."""
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    h, w = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    canvas = _background(rng, h, w)
    n = 0 if rng.random() < _EMPTY_FRACTION else int(rng.integers(1, _MAX_OBJECTS + 1))
    masks: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(n):
        label = int(rng.integers(len(CLASSES)))
        size = rng.uniform(8, 52)
        aspect = rng.uniform(0.75, 1.33)
        rx, ry = size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)
        cx, cy = rng.uniform(0.02 * w, 0.98 * w), rng.uniform(0.02 * h, 0.98 * h)
        angle = rng.uniform(-0.4, 0.4)
        mask = _shape_mask(label, h, w, cx, cy, rx, ry, angle)
        if mask.sum() < 16 or any((mask & m).sum() > 0.5 * min(mask.sum(), m.sum()) for m in masks):
            continue
        colour = _colour_far_from(rng, canvas[mask].mean(axis=0))
        canvas[mask] = colour
        masks.append(mask)
        labels.append(label)
    visible = [m.copy() for m in masks]
    for i in range(len(masks)):  # later objects occlude earlier ones
        for later in masks[i + 1:]:
            visible[i] &= ~later
    objects = []
    for label, mask, vis, params in zip(labels, masks, visible, range(len(masks))):
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        truncated = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
        small = min(box[2] - box[0], box[3] - box[1]) < _DIFFICULT_SIZE
        hidden = vis.sum() < _DIFFICULT_VISIBLE * mask.sum()
        objects.append(SyntheticObject(label, box, bool(small or hidden), bool(truncated)))
    noisy = canvas + rng.normal(0, 6, size=canvas.shape)
    pixels = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
    return SyntheticImage(np.asarray(pixels), tuple(objects))


def to_target(image: SyntheticImage, image_id: int) -> dict[str, Tensor | int]:
    """The torchvision-style target of a rendered image (labels 1..K, 0 is background)."""
    boxes = torch.tensor([o.box for o in image.objects], dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": boxes,
        "labels": torch.tensor([o.label + 1 for o in image.objects], dtype=torch.int64),
        "difficult": torch.tensor([o.difficult for o in image.objects], dtype=torch.bool),
        "image_id": image_id,
    }


class SyntheticDetection(torch.utils.data.Dataset):
    """In-memory synthetic set: item ``i`` is ``(FloatTensor[3, H, W] in 0..1, Target)``.

    Args:
        size: number of images.
        seed: set seed; ``offset`` shifts the image indices (a test split uses another range).
    """

    classes = CLASSES

    def __init__(self, size: int, seed: int = 0, offset: int = 0) -> None:
        self.size, self.seed, self.offset = size, seed, offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        image = render(self.offset + i, self.seed)
        pixels = torch.from_numpy(image.pixels.copy()).permute(2, 0, 1).float() / 255
        return pixels, to_target(image, self.offset + i)


def _class_lists(stems: list[str], images: list[SyntheticImage]) -> dict[str, list[str]]:
    """VOC per-class image sets: 1 if the class is present, 0 if only difficult, else -1."""
    lines: dict[str, list[str]] = {name: [] for name in CLASSES}
    for stem, image in zip(stems, images):
        for label, name in enumerate(CLASSES):
            objs = [o for o in image.objects if o.label == label]
            flag = -1 if not objs else (0 if all(o.difficult for o in objs) else 1)
            lines[name].append(f"{stem} {flag:2d}")
    return lines


def write_dataset(out: Path, train: int = BENCHMARK_TRAIN, test: int = BENCHMARK_TEST, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the synthetic set to ``out`` in the VOC layout with COCO JSON beside it.

    Layout: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/{train,val,trainval,test}.txt``
    (+ per-class lists), ``labels.txt``, ``annotations/instances_<split>.json`` and a manifest
    ``detbin_synthetic.json``. ``trainval`` holds images ``0..train-1`` (90% train, 10% val),
    ``test`` the next ``test`` images. An existing set with the same manifest is reused.

    Raises:
        DataError: ``out`` exists and is not this very set (pass ``overwrite=True`` to replace).
    """
    out = Path(out)
    manifest = {"generator": "detbin.synthetic", "version": GENERATOR_VERSION, "seed": seed,
                "train": train, "test": test, "classes": list(CLASSES)}
    manifest_path = out / "detbin_synthetic.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: exists and is not this synthetic set; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stems = [f"{i + 1:06d}" for i in range(train + test)]
    images = []
    for i, stem in enumerate(stems):
        image = render(i, seed)
        images.append(image)
        h, w = image.pixels.shape[:2]
        Image.fromarray(image.pixels).save(out / "JPEGImages" / f"{stem}.jpg", quality=95)
        objects = tuple(voc.VocObject(CLASSES[o.label], voc.to_devkit(o.box), o.difficult, o.truncated)
                        for o in image.objects)
        voc.write_annotation(out / "Annotations" / f"{stem}.xml", voc.VocAnnotation(f"{stem}.jpg", w, h, objects))
    n_val = max(1, train // 10) if train > 1 else 0
    splits = {"train": list(range(train - n_val)), "val": list(range(train - n_val, train)),
              "trainval": list(range(train)), "test": list(range(train, train + test))}
    for split, indices in splits.items():
        (out / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{stems[i]}\n" for i in indices))
        for name, lines in _class_lists([stems[i] for i in indices], [images[i] for i in indices]).items():
            (out / "ImageSets/Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
        records = [{"id": i + 1, "file_name": f"{stems[i]}.jpg", "width": images[i].pixels.shape[1],
                    "height": images[i].pixels.shape[0],
                    "objects": [(o.label + 1, o.box, o.difficult) for o in images[i].objects]} for i in indices]
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco.build_instances(records, CLASSES)))
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out
