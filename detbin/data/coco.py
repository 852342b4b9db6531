"""COCO-format JSON: building it from detbin targets and reading it back.

COCO boxes are ``[x, y, width, height]`` in continuous pixels, which is detbin's xyxy with
``width = x2 - x1``: no +1 anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from detbin.core.errors import DataError

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
    """Read and minimally validate a COCO instances file.

    Raises:
        DataError: missing file, invalid JSON (e.g. truncated), or missing top-level keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such COCO annotation file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file may be truncated") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"{path}: not a COCO instances file (missing {', '.join(missing)})")
    return data
