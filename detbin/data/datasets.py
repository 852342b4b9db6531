"""Data sources yielding ``(image, Target)``, the training transform, collate and loaders.

Sources read local disk only (detbin never downloads a data set): a VOC-layout folder
(PASCAL VOC or the synthetic set written by ``detbin data synthetic``) and the in-memory
synthetic renderer. Images are ``FloatTensor[3, H, W]`` in 0..1; boxes continuous xyxy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from PIL import Image, UnidentifiedImageError

from detbin.data import voc
from detbin.core.errors import DataError
from detbin.core.types import Target

__all__ = ["VocDetection", "ConcatDetection", "HorizontalFlip", "TrainView", "collate", "load_image",
           "check_annotations"]

log = logging.getLogger(__name__)


def load_image(path: Path) -> Tensor:
    """Decode an image file to ``FloatTensor[3, H, W]`` in 0..1."""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing (listed in the split but not on disk)")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)


class VocDetection(Dataset):
    """A VOC-layout split: PASCAL VOC 2007/2012 or any folder in that layout.

    Args:
        root: folder with ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/`` (or its
            ``VOCdevkit`` parent, with ``year``).
        split: image set name (``train``, ``val``, ``trainval``, ``test``).
        year: ``VOC2007``/``VOC2012`` to pick a sub-folder of a ``VOCdevkit``.
        classes: class names; default ``labels.txt`` of the root, else VOC's 20.
        allow_outside_root: accept split entries that lead outside the root (``../x``); refused
            by default (:func:`~detbin.data.files.inside_root`).

    Item ``i`` is ``(image, target)`` with ``target["difficult"]`` kept: metrics need it;
    :class:`TrainView` drops difficult objects for training. Annotations are parsed on first
    use; :func:`check_annotations` parses them all up front.
    """

    def __init__(self, root: Path, split: str, year: str | None = None, classes: Sequence[str] | None = None,
                 allow_outside_root: bool = False) -> None:
        self.root = voc.find_root(Path(root), year)
        self.split = split
        self.classes = tuple(classes) if classes else voc.read_classes(self.root)
        self.stems = voc.read_split(self.root, split, allow_outside_root)
        self._index = {name: i + 1 for i, name in enumerate(self.classes)}
        self._annotations: dict[int, voc.VocAnnotation] = {}
        expected = voc.EXPECTED_SPLIT_SIZES.get((self.root.name, split))
        if expected is not None and len(self.stems) != expected:
            log.warning("%s %s lists %d images; the official split has %d: the copy may be incomplete",
                        self.root.name, split, len(self.stems), expected)

    def __len__(self) -> int:
        return len(self.stems)

    def image_id(self, i: int) -> int:
        """Numeric id of image ``i``: the stem if it is a number (VOC07, synthetic), else ``i``."""
        stem = self.stems[i]
        return int(stem) if stem.isdigit() else i

    def annotation(self, i: int) -> voc.VocAnnotation:
        """The parsed XML of image ``i`` (cached)."""
        if i not in self._annotations:
            path = self.root / "Annotations" / f"{self.stems[i]}.xml"
            if not path.is_file():
                raise DataError(f"{path}: annotation missing for image {self.stems[i]!r} of split {self.split!r}")
            self._annotations[i] = voc.parse_annotation(path)
        return self._annotations[i]

    def target(self, i: int) -> Target:
        """Ground truth of image ``i`` without decoding the image."""
        ann = self.annotation(i)
        unknown = sorted({o.name for o in ann.objects} - set(self._index))
        if unknown:
            raise DataError(f"{self.root}/Annotations/{self.stems[i]}.xml: class(es) {unknown} not in the class "
                            f"list ({', '.join(self.classes)}); add them to labels.txt")
        boxes = torch.tensor([voc.to_continuous(o.box) for o in ann.objects], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": boxes,
            "labels": torch.tensor([self._index[o.name] for o in ann.objects], dtype=torch.int64),
            "difficult": torch.tensor([o.difficult for o in ann.objects], dtype=torch.bool),
            "image_id": self.image_id(i),
        }

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        image = load_image(self.root / "JPEGImages" / f"{self.stems[i]}.jpg")
        target = self.target(i)
        ann = self.annotation(i)
        if tuple(image.shape[1:]) != (ann.height, ann.width):
            raise DataError(f"{self.root}/JPEGImages/{self.stems[i]}.jpg is {image.shape[2]}x{image.shape[1]} but its "
                            f"annotation says {ann.width}x{ann.height}")
        return image, target


def check_annotations(dataset: Dataset, count: int | None = None) -> None:
    """Parse the annotations of the first ``count`` items (all by default) and check that their images
    exist, so a malformed file fails before any training or inference, not after image 300.

    Sources that parse everything when opened (COCO JSON, the in-memory synthetic set) pass as they are.

    Raises:
        DataError: the first malformed or missing annotation, unknown class or missing image.
    """
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            check_annotations(part)
        return
    if not isinstance(dataset, VocDetection):
        return
    for i in range(len(dataset) if count is None else min(count, len(dataset))):
        dataset.target(i)
        image = dataset.root / "JPEGImages" / f"{dataset.stems[i]}.jpg"
        if not image.is_file():
            raise DataError(f"{image}: image file is missing (listed in split {dataset.split!r} of {dataset.root}); "
                            "restore it or remove it from the split file")


class ConcatDetection(ConcatDataset):
    """Several splits with the same classes as one (VOC07+12 trainval)."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        super().__init__(parts)
        self.classes = tuple(getattr(parts[0], "classes"))
        for part in parts[1:]:
            if tuple(getattr(part, "classes")) != self.classes:
                raise DataError("concatenated splits have different class lists")


class HorizontalFlip:
    """Flip an image and its boxes left-right with probability ``p`` (xyxy: ``x' = W - x``)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator) -> tuple[Tensor, Target]:
        if torch.rand((), generator=generator).item() >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes}


class TrainView(Dataset):
    """A training view of a source: difficult objects dropped, optional flip.

    Dropping difficult ground truth is py-faster-rcnn's default (``use_diff=False``); the
    flip's randomness comes from ``(seed, epoch, index)``, so a resumed run flips the same
    images the same way.
    """

    def __init__(self, source: Dataset, flip: float = 0.5, seed: int = 0) -> None:
        self.source, self.flip, self.seed, self.epoch = source, HorizontalFlip(flip), seed, 0

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        image, target = self.source[i]
        keep = ~target["difficult"]
        target = {**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep],
                  "difficult": target["difficult"][keep]}
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i)
        return self.flip(image, target, generator)


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Keep images as a list (sizes differ); the detector's transform batches them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
