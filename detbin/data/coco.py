"""COCO-format JSON: building it from detbin targets and reading it back.

COCO boxes are ``[x, y, width, height]`` in continuous pixels, which is detbin's xyxy with
``width = x2 - x1``: no +1 anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from detbin.core.errors import DataError
from detbin.data.files import read_json

__all__ = ["build_instances", "load_instances", "xyxy_to_xywh"]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``(x1, y1, x2, y2)`` -> ``[x1, y1, x2 - x1, y2 - y1]``."""
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def build_instances(
    images: Iterable[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """A COCO ``instances`` dict.

    Args:
        images: one dict per image with ``id``, ``file_name``, ``width``, ``height`` and
            ``objects``: ``(label 1..K, xyxy box, difficult)`` tuples.
        classes: names of labels 1..K (category id = label).
    """
    out_images, annotations = [], []
    for image in images:
        out_images.append({k: image[k] for k in ("id", "file_name", "width", "height")})
        for label, box, difficult in image["objects"]:
            xywh = xyxy_to_xywh(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": int(label), "bbox": xywh,
                "area": xywh[2] * xywh[3], "iscrowd": 0, "difficult": int(bool(difficult)),
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]
    return {"info": {"description": "detbin"}, "images": out_images, "annotations": annotations,
            "categories": categories}


def load_instances(path: Path) -> dict[str, Any]:
    """Read a COCO instances file and check its shape: a mapping whose ``images``, ``annotations``
    and ``categories`` are lists of mappings.

    Raises:
        DataError: missing file, not UTF-8, invalid JSON (e.g. truncated), missing top-level keys,
            or a value of the wrong type (the first one is named with its index).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such COCO annotation file")
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a JSON {_json_type(data)}, not a COCO instances object "
                        '{"images": [...], "annotations": [...], "categories": [...]}')
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"{path}: not a COCO instances file (missing {', '.join(missing)})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' is a JSON {_json_type(data[key])}, not a list of objects")
        for n, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DataError(f"{path}: {key}[{n}] is a JSON {_json_type(entry)} ({str(entry)[:60]}), not an object")
    return data


def _json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
