"""A COCO instances JSON and its image folder as a detection data set (local disk only).

Where things are looked for, given ``root`` and ``split``:

* the annotations: ``annotations`` if given (absolute, or relative to the working folder or
  to ``root``), else ``root/annotations/instances_<split>.json`` (COCO's own layout and the
  one ``detbin data synthetic`` writes);
* the images: the first of ``root/<split>/`` (COCO: ``val2017/``), ``root/images/<split>/``,
  ``root/JPEGImages/`` (VOC layout, the synthetic set), ``root/images/``, ``root/`` that holds
  one of the first 20 listed ``file_name`` (which may contain sub-folders).

Categories become contiguous labels ``1..K`` in increasing id order (COCO's ids 1..90 have
gaps); :attr:`CocoDetection.category_ids` maps back when results are written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detbin.data import coco
from detbin.data.datasets import load_image
from detbin.data.files import inside_root
from detbin.core.errors import DataError
from detbin.core.types import Target

__all__ = ["CocoDetection", "annotation_path", "EXPECTED_IMAGES"]

log = logging.getLogger(__name__)

# Images per official split, to tell a user when a copy is incomplete.
EXPECTED_IMAGES = {"train2017": 118287, "val2017": 5000, "train2014": 82783, "val2014": 40504}


def annotation_path(root: Path, split: str, annotations: str | Path | None = None) -> Path:
    """The instances JSON of a split (see the module docstring for the rule).

    Raises:
        DataError: no such file; the message lists the ``instances_*.json`` that exist.
    """
    root = Path(root)
    if annotations is not None:
        path = Path(annotations)
        if not path.is_absolute() and not path.is_file() and (root / path).is_file():
            path = root / path
    else:
        path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        hint = f"available: {', '.join(found)}" if found else "pass the JSON's path with --annotations"
        raise DataError(f"{path}: no such COCO annotation file ({hint})")
    return path


def _image_folder(root: Path, split: str, names: Sequence[str], json_path: Path) -> Path:
    candidates = [root / split, root / "images" / split, root / "JPEGImages", root / "images", root]
    existing = [c for c in candidates if c.is_dir()]
    if not names:
        return existing[0] if existing else root
    for folder in existing:
        if any((folder / name).is_file() for name in names):
            return folder
    tried = ", ".join(str(c) for c in candidates[:3])
    raise DataError(f"{json_path}: image {names[0]!r} is in none of {tried} ...; put the images in "
                    f"{root / split} (COCO layout) or {root / 'JPEGImages'}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_entries(data: dict[str, Any], path: Path, allow_outside: bool) -> None:
    """Every image and category has an integer id, every image a file name inside the root and
    positive sizes, every annotation integer image and category ids (all before any image is read)."""
    for n, entry in enumerate(data["images"]):
        if not (_is_int(entry.get("id")) and isinstance(entry.get("file_name"), str)):
            raise DataError(f"{path}: images[{n}] needs an integer 'id' and a 'file_name' (a string) "
                            f"(got {str(entry)[:80]})")
        inside_root(entry["file_name"], f"{path}: images[{n}].file_name", allow_outside)
        for key in ("width", "height"):
            if key in entry and not (_is_number(entry[key]) and entry[key] > 0):
                raise DataError(f"{path}: images[{n}].{key} is {entry[key]!r}; it must be a positive number of pixels")
    for n, entry in enumerate(data["categories"]):
        if not _is_int(entry.get("id")):
            raise DataError(f"{path}: categories[{n}] needs an integer 'id' (got {str(entry)[:80]})")
    for n, ann in enumerate(data["annotations"]):
        for key in ("image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise DataError(f"{path}: annotations[{n}].{key} is {str(ann.get(key))[:40]}; COCO ids are integers")
        if "area" in ann and not _is_number(ann["area"]):
            raise DataError(f"{path}: annotations[{n}].area is {str(ann['area'])[:40]}; it must be a number")


def _bbox(ann: dict[str, Any], path: Path) -> list[float]:
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(f"{path}: annotation {ann.get('id')} has bbox {box!r}; COCO boxes are [x, y, width, height]")
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"{path}: annotation {ann.get('id')} has a negative width or height in bbox {box}")
    return [float(v) for v in box]


class CocoDetection(Dataset):
    """COCO-format detection data: item ``i`` is ``(FloatTensor[3, H, W] in 0..1, Target)``.

    Targets hold ``boxes`` (xyxy, ``x2 = x + w``), ``labels`` 1..K, ``iscrowd``, ``area``
    (the file's, else ``w * h``), ``difficult`` and ``image_id`` (the file's id). ``difficult``
    is True for crowd regions, empty boxes and objects the file marks difficult, so that
    :class:`~detbin.data.TrainView` never trains on them; COCO scoring still sees crowd
    regions as ignored ground truth (``iscrowd``). Images are ordered by id, as COCOeval does.

    Args:
        root: data root (see the module docstring).
        split: split name, e.g. ``val2017`` or ``test``.
        annotations: the instances JSON, if not ``root/annotations/instances_<split>.json``.
        allow_outside_root: open ``file_name`` values that lead outside the root (absolute
            paths, ``..``); refused by default (:func:`~detbin.data.files.inside_root`).

    Raises:
        DataError: missing or invalid JSON, an entry of the wrong type, an annotation of an
            unknown image or category, a malformed box, a file name outside the root, or images
            listed but missing from the folder.
    """

    def __init__(self, root: Path, split: str, annotations: str | Path | None = None,
                 allow_outside_root: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.path = annotation_path(self.root, split, annotations)
        data = coco.load_instances(self.path)
        _check_entries(data, self.path, allow_outside_root)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: tuple[int, ...] = tuple(c["id"] for c in categories)
        self.classes: tuple[str, ...] = tuple(str(c.get("name", c["id"])) for c in categories)
        self._label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        self.images = sorted(data["images"], key=lambda image: image["id"])
        self._objects = self._group(data["annotations"])
        self.folder = _image_folder(self.root, split, [image["file_name"] for image in self.images[:20]], self.path)
        self.stems = [Path(image["file_name"]).stem for image in self.images]
        self._check_images()

    def _group(self, annotations: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        known_images = {image["id"] for image in self.images}
        known_categories = set(self.category_ids)
        grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in annotations:
            if ann.get("image_id") not in known_images:
                raise DataError(f"{self.path}: annotation {ann.get('id')} refers to image {ann.get('image_id')}, "
                                "which is not in 'images'")
            if ann.get("category_id") not in known_categories:
                raise DataError(f"{self.path}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                                f"not one of the file's categories {list(self.category_ids)}")
            grouped[ann["image_id"]].append({**ann, "bbox": _bbox(ann, self.path)})
        return grouped

    def _check_images(self) -> None:
        missing = [image["file_name"] for image in self.images if not (self.folder / image["file_name"]).is_file()]
        if missing:
            raise DataError(f"{self.folder}: {len(missing)} of the {len(self.images)} images listed in {self.path} "
                            f"are missing (first: {missing[0]}); the copy is incomplete, restore them")
        expected = EXPECTED_IMAGES.get(self.split)
        if expected is not None and len(self.images) != expected and self.path.name == f"instances_{self.split}.json":
            log.warning("%s lists %d images; the official %s has %d: the copy may be incomplete",
                        self.path, len(self.images), self.split, expected)
        outside = sum(1 for image in self.images for ann in self._objects.get(image["id"], [])
                      if _outside(ann["bbox"], image))
        if outside:
            log.warning("%s: %d boxes reach more than 1 px outside their image; scored as given, as pycocotools "
                        "does", self.path, outside)

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, i: int) -> int:
        """The file's id of image ``i``."""
        return int(self.images[i]["id"])

    def image_size(self, i: int) -> tuple[int, int] | None:
        """``(height, width)`` from the JSON, if it says."""
        image = self.images[i]
        return (int(image["height"]), int(image["width"])) if "height" in image and "width" in image else None

    def target(self, i: int, dtype: torch.dtype = torch.float64) -> Target:
        """Ground truth of image ``i`` without decoding it (float64: the file's values exactly)."""
        objects = self._objects.get(self.images[i]["id"], [])
        xywh = np.array([ann["bbox"] for ann in objects], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        crowd = torch.tensor([bool(ann.get("iscrowd", 0)) for ann in objects], dtype=torch.bool)
        empty = torch.from_numpy((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
        marked = torch.tensor([bool(ann.get("difficult", 0)) for ann in objects], dtype=torch.bool)
        return {
            "boxes": torch.from_numpy(boxes).to(dtype),
            "labels": torch.tensor([self._label[ann["category_id"]] for ann in objects], dtype=torch.int64),
            "iscrowd": crowd,
            "area": torch.tensor([float(ann.get("area", b[2] * b[3])) for ann, b in zip(objects, xywh)],
                                 dtype=torch.float64),
            "difficult": crowd | empty | marked,
            "image_id": self.image_id(i),
        }

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        path = self.folder / self.images[i]["file_name"]
        image = load_image(path)
        size = self.image_size(i)
        if size is not None and tuple(image.shape[1:]) != size:
            raise DataError(f"{path} is {image.shape[2]}x{image.shape[1]} but {self.path} says {size[1]}x{size[0]}")
        # the model and its losses work in float32; scoring reads target(i) in float64
        return image, self.target(i, torch.float32)


def _outside(box: Sequence[float], image: dict[str, Any], tolerance: float = 1.0) -> bool:
    if "width" not in image or "height" not in image:
        return False
    x, y, w, h = box
    return x < -tolerance or y < -tolerance or x + w > image["width"] + tolerance or y + h > image["height"] + tolerance
