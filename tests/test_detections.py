"""Saved detections: COCO results and VOC devkit files written, read back, and rejected when bad."""

from __future__ import annotations

import json

import pytest
import torch

from detbin.evaluation.detections import (ImageIndex, count_outside, read_coco_results, read_detections, read_voc_results,
                               write_coco_results, write_voc_results)
from detbin.core.errors import DataError

INDEX = ImageIndex(ids=(7, 8, 9), stems=("000007", "000008", "000009"), classes=("cat", "dog"), category_ids=(3, 7),
                   split="test", source="data/syn", sizes=((50, 60), (50, 60), (50, 60)))


def dets():
    return [
        {"boxes": torch.tensor([[0.5, 1.25, 10.0, 20.0], [3.0, 4.0, 5.0, 6.0]]), "scores": torch.tensor([0.9, 0.3]),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[10.1, 20.2, 30.3, 40.4]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([2])},
    ]


def same(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["boxes"].double(), y["boxes"].double()), (x, y)
        assert torch.equal(x["scores"].double(), y["scores"].double()) and torch.equal(x["labels"], y["labels"])


def test_coco_results_round_trip_exactly(tmp_path):
    path = write_coco_results(tmp_path / "d.json", dets(), INDEX)
    entries = json.loads(path.read_text())
    assert entries[0]["image_id"] == 7 and entries[0]["category_id"] == 3 and entries[1]["category_id"] == 7
    assert entries[0]["bbox"] == [0.5, 1.25, 9.5, 18.75], "xywh with w = x2 - x1, no +1"
    same(read_coco_results(path, INDEX), dets())


def test_voc_results_round_trip_in_devkit_pixels(tmp_path):
    paths = write_voc_results(tmp_path, dets(), INDEX)
    assert [p.name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    line = paths[0].read_text().splitlines()[0].split()
    assert line[0] == "000007" and [float(v) for v in line[2:]] == [1.5, 2.25, 10.0, 20.0], "(x1 + 1, y1 + 1, x2, y2)"
    back = read_voc_results(tmp_path, INDEX)
    # rows come back grouped by class file; float32 values survive the +1 / -1 exactly
    key = lambda d: sorted(zip(d["labels"].tolist(), d["scores"].double().tolist(), d["boxes"].double().tolist()))
    assert [key(x) for x in back] == [key(y) for y in dets()]


def test_devkit_line_read_by_hand(tmp_path):
    (tmp_path / "comp4_det_test_dog.txt").write_text("000009 0.5 1 1 10 20\n\n")
    detections = read_detections(tmp_path, INDEX)
    assert [len(d["labels"]) for d in detections] == [0, 0, 1]
    assert detections[2]["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0]] and detections[2]["labels"].tolist() == [2]


def test_outside_boxes_are_counted():
    assert count_outside(dets(), INDEX.sizes) == 0
    far = [{"boxes": torch.tensor([[0.0, 0.0, 62.0, 10.0], [-0.5, 0, 61, 51]]), "labels": torch.tensor([1, 1])}]
    assert count_outside(far, INDEX.sizes) == 1  # 1 px of slack, as for ground truth


@pytest.mark.parametrize("text, message", [
    ("", r"empty file \(0 bytes\)"),
    ("[]", r"holds no detections \(an empty list, which pycocotools cannot score either\)"),
    ('[{"image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id": 7', "truncated"),
    ('{"images": [], "annotations": [], "categories": []}', "is a COCO instances \\(ground-truth\\) file"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"image_id": 7, "category_id": 3, "bbox": [1, 2, 3], "score": 0.5}]', "entry 0 is .* each needs image_id"),
    ('[{"image_id": 7, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 0.5}]', "negative width or height"),
    ('[{"image_id": 6, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}]', r"image_id 6 is not an image of data/syn"),
    ('[{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]',
     r"category_id 1 is not a category of data/syn \(ids \[3, 7\]"),
])
def test_bad_coco_results(tmp_path, text, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_detections(path, INDEX)


@pytest.mark.parametrize("files, message", [
    ({}, r"no comp4_det_test_<class>\.txt files;"),
    ({"comp4_det_val_cat.txt": "000007 0.5 1 1 2 2\n"}, r"found splits: val; pass --split"),
    ({"comp4_det_test_cow.txt": "000007 0.5 1 1 2 2\n"}, r"class 'cow' is not a class of data/syn \(cat, dog\)"),
    ({"comp4_det_test_cat.txt": "000007 0.5 1 1 2\n"}, r"comp4_det_test_cat\.txt:1: .* is not 'stem score xmin"),
    ({"comp4_det_test_cat.txt": "000007 high 1 1 2 2\n"}, r":1: .* is not 'stem score"),
    ({"comp4_det_test_cat.txt": "000001 0.5 1 1 2 2\n"}, r":1: image '000001' is not in split 'test'"),
    ({"comp4_det_test_cat.txt": "", "comp4_det_test_dog.txt": "\n"}, "hold no detections"),
])
def test_bad_voc_results(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_detections(tmp_path, INDEX)


def test_missing_detections_path(tmp_path):
    with pytest.raises(DataError, match="no such detections file"):
        read_detections(tmp_path / "nope.json", INDEX)
