"""Saved detections: COCO results JSON and VOC devkit result files, written and read back.

* **COCO results**: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
  (``w = x2 - x1``, no +1), what ``COCO.loadRes`` reads. Image and category ids are the data
  set's (a detbin-made set: category id = label).
* **VOC devkit**: a folder of ``comp4_det_<split>_<class>.txt``, one line per detection,
  ``stem score xmin ymin xmax ymax`` in the devkit's 1-based pixels ``(x1 + 1, y1 + 1, x2, y2)``,
  what the VOC devkit and py-faster-rcnn's ``voc_eval`` read.

Both read back to one :class:`~detbin.types.Detections` per image, in the data set's order.
Values are written with every digit (``repr``), so a file re-scores to the same numbers.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detbin.core.errors import DataError
from detbin.data.files import read_json, read_text
from detbin.core.types import Detections

__all__ = ["ImageIndex", "to_coco_results", "write_coco_results", "read_coco_results", "write_voc_results",
           "read_voc_results", "read_detections", "count_outside"]

log = logging.getLogger(__name__)
_VOC_FILE = re.compile(r"comp\d_det_(?P<split>[^_]+)_(?P<cls>.+)\.txt")


@dataclass(frozen=True)
class ImageIndex:
    """How saved detections name a data set's images and classes.

    Attributes:
        ids: COCO ``image_id`` of each image, in data set order.
        stems: VOC file stem of each image.
        classes: names of labels 1..K.
        category_ids: COCO ``category_id`` of labels 1..K.
        split: split name (VOC result file names carry it).
        source: the data set, for messages.
        sizes: ``(height, width)`` of each image where known (empty: unknown).
    """

    ids: tuple[int, ...]
    stems: tuple[str, ...]
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    split: str
    source: str
    sizes: tuple[tuple[int, int] | None, ...] = ()


def _empty() -> Detections:
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def _group(n: int, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[Detections]:
    """Per-image detections from flat rows (input order kept within an image)."""
    order = np.argsort(image, kind="stable")
    bounds = np.searchsorted(image[order], np.arange(n + 1))
    out = []
    for i in range(n):
        rows = order[bounds[i]:bounds[i + 1]]
        out.append({"boxes": torch.from_numpy(boxes[rows].reshape(-1, 4)), "scores": torch.from_numpy(scores[rows]),
                    "labels": torch.from_numpy(labels[rows])} if len(rows) else _empty())
    return out


def to_coco_results(detections: Sequence[Detections], index: ImageIndex) -> list[dict]:
    """COCO results entries of per-image detections (boxes xyxy -> xywh)."""
    results = []
    for image_id, det in zip(index.ids, detections):
        boxes = torch.as_tensor(det["boxes"]).double().reshape(-1, 4).numpy()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        scores = torch.as_tensor(det["scores"]).double().tolist()
        for box, score, label in zip(xywh, scores, torch.as_tensor(det["labels"]).tolist()):
            results.append({"image_id": image_id, "category_id": index.category_ids[label - 1], "bbox": box,
                            "score": score})
    return results


def write_coco_results(path: Path, detections: Sequence[Detections], index: ImageIndex) -> Path:
    """Write a COCO results JSON; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_coco_results(detections, index), separators=(",", ":")))
    return path


def _load_json_list(path: Path) -> list:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); it holds no detections, re-run the evaluation that wrote it")
    data = read_json(path, "COCO results file")
    if isinstance(data, dict) and "annotations" in data:
        raise DataError(f"{path}: is a COCO instances (ground-truth) file; --detections needs a results list "
                        "[{image_id, category_id, bbox, score}, ...]")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{image_id, category_id, bbox, score}}, "
                        f"got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: holds no detections (an empty list, which pycocotools cannot score either); "
                        "check that the file was written completely")
    return data


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(n: int, entry: object, path: Path) -> tuple[int, int, list[float], float]:
    ok = isinstance(entry, dict) and {"image_id", "category_id", "bbox", "score"} <= set(entry)
    if ok:
        box, score = entry["bbox"], entry["score"]  # type: ignore[index]
        ok = (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
              and isinstance(score, (int, float)) and _is_int(entry["image_id"])  # type: ignore[index]
              and _is_int(entry["category_id"]))  # type: ignore[index]
    if not ok:
        raise DataError(f"{path}: entry {n} is {str(entry)[:100]}; each needs image_id and category_id "
                        "(integers), bbox [x, y, w, h] and score (numbers)")
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"{path}: entry {n} has bbox {box} with a negative width or height (COCO boxes are x, y, w, h)")
    return entry["image_id"], entry["category_id"], box, float(score)  # type: ignore[index]


def read_coco_results(path: Path, index: ImageIndex) -> list[Detections]:
    """Read a COCO results JSON into per-image detections (xyxy, labels 1..K).

    Raises:
        DataError: empty or truncated file, a malformed entry, or an image or category id
            that is not in the data set (pycocotools would assert or silently drop it).
    """
    path = Path(path)
    rows = [_entry(n, entry, path) for n, entry in enumerate(_load_json_list(path))]
    image_pos = {image_id: i for i, image_id in enumerate(index.ids)}
    label_of = {cid: k + 1 for k, cid in enumerate(index.category_ids)}
    for image_id, category_id, _, _ in rows:
        if image_id not in image_pos:
            raise DataError(f"{path}: image_id {image_id} is not an image of {index.source} ({index.split}); "
                            "score the file against the data set it was made on")
        if category_id not in label_of:
            raise DataError(f"{path}: category_id {category_id} is not a category of {index.source} "
                            f"(ids {list(index.category_ids)[:10]}...); results must use the annotation file's ids")
    image = np.array([image_pos[r[0]] for r in rows], dtype=np.int64)
    xywh = np.array([r[2] for r in rows], dtype=np.float64)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return _group(len(index.ids), image, boxes, np.array([r[3] for r in rows], dtype=np.float64),
                  np.array([label_of[r[1]] for r in rows], dtype=np.int64))


def write_voc_results(folder: Path, detections: Sequence[Detections], index: ImageIndex) -> list[Path]:
    """Write ``comp4_det_<split>_<class>.txt`` for every class (empty files included, as py-faster-rcnn)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in index.classes]
    for stem, det in zip(index.stems, detections):
        boxes = torch.as_tensor(det["boxes"]).double().reshape(-1, 4).numpy().copy()
        boxes[:, :2] += 1.0  # continuous -> devkit 1-based pixels
        for box, score, label in zip(boxes.tolist(), torch.as_tensor(det["scores"]).double().tolist(),
                                     torch.as_tensor(det["labels"]).tolist()):
            lines[label - 1].append(f"{stem} {score!r} {box[0]!r} {box[1]!r} {box[2]!r} {box[3]!r}\n")
    paths = []
    for name, rows in zip(index.classes, lines):
        paths.append(folder / f"comp4_det_{index.split}_{name}.txt")
        paths[-1].write_text("".join(rows))
    return paths


def _voc_files(folder: Path, index: ImageIndex) -> dict[str, Path]:
    files = {}
    others = set()
    for path in sorted(folder.glob("comp*_det_*.txt")):
        match = _VOC_FILE.fullmatch(path.name)
        if match is None or match["split"] != index.split:
            others.add(match["split"] if match else path.name)
            continue
        if match["cls"] not in index.classes:
            raise DataError(f"{path}: class {match['cls']!r} is not a class of {index.source} "
                            f"({', '.join(index.classes)})")
        files[match["cls"]] = path
    if not files:
        found = f" (found splits: {', '.join(sorted(others))}; pass --split)" if others else ""
        raise DataError(f"{folder}: no comp4_det_{index.split}_<class>.txt files{found}; write one per class, "
                        "lines 'stem score xmin ymin xmax ymax'")
    return files


def read_voc_results(folder: Path, index: ImageIndex) -> list[Detections]:
    """Read a folder of VOC devkit result files into per-image detections (continuous xyxy).

    Raises:
        DataError: no file for the split, an unknown class, a malformed line, an unknown image
            stem, or no detection at all.
    """
    folder = Path(folder)
    stem_pos = {stem: i for i, stem in enumerate(index.stems)}
    image, rows, labels = [], [], []
    files = _voc_files(folder, index)
    for name, path in files.items():
        label = index.classes.index(name) + 1
        for n, line in enumerate(read_text(path, "VOC results file").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError:
                values = []
            if len(values) != 5 or not all(math.isfinite(v) for v in values):
                raise DataError(f"{path}:{n}: {line[:80]!r} is not 'stem score xmin ymin xmax ymax' (finite numbers)")
            if parts[0] not in stem_pos:
                raise DataError(f"{path}:{n}: image {parts[0]!r} is not in split {index.split!r} of {index.source}")
            image.append(stem_pos[parts[0]])
            rows.append(values)
            labels.append(label)
    if not rows:
        raise DataError(f"{folder}: the comp4_det_{index.split}_*.txt files hold no detections (voc_eval cannot "
                        "score empty results either); check that they were written completely")
    values = np.array(rows, dtype=np.float64)
    boxes = values[:, 1:].copy()
    boxes[:, :2] -= 1.0  # devkit 1-based pixels -> continuous
    return _group(len(index.ids), np.array(image, dtype=np.int64), boxes, values[:, 0], np.array(labels, np.int64))


def read_detections(path: Path, index: ImageIndex) -> list[Detections]:
    """A COCO results JSON file or a folder of VOC devkit files, per image.

    Raises:
        DataError: no such file or folder, or any problem listed by the two readers.
    """
    path = Path(path)
    if path.is_dir():
        detections = read_voc_results(path, index)
    elif path.is_file():
        detections = read_coco_results(path, index)
    else:
        raise DataError(f"{path}: no such detections file; pass a COCO results JSON or a folder of "
                        "comp4_det_<split>_<class>.txt files")
    outside = count_outside(detections, index.sizes)
    if outside:
        log.warning("%s: %d detections reach more than 1 px outside their image (boxes in a resized frame?); "
                    "scored as given, as the reference tools do", path, outside)
    return detections


def count_outside(detections: Sequence[Detections], sizes: Sequence[tuple[int, int] | None],
                  tolerance: float = 1.0) -> int:
    """How many boxes reach more than ``tolerance`` px outside their image (sizes ``(H, W)``)."""
    count = 0
    for det, size in zip(detections, sizes):
        if size is None or not len(det["boxes"]):
            continue
        boxes = torch.as_tensor(det["boxes"]).double()
        height, width = size
        bad = (boxes[:, :2] < -tolerance).any(1) | (boxes[:, 2] > width + tolerance) | (boxes[:, 3] > height + tolerance)
        count += int(bad.sum())
    return count
