"""COCO-format data: the synthetic set's JSON, real-COCO layouts, crowd regions, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from detbin.data.coco_dataset import CocoDetection
from detbin.data.datasets import TrainView, VocDetection
from detbin.core.errors import DataError
from detbin.data.synthetic import CLASSES, write_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn") / "syn", train=2, test=6)


def test_synthetic_json_gives_the_voc_targets(synthetic):
    coco, voc = CocoDetection(synthetic, "test"), VocDetection(synthetic, "test")
    assert coco.classes == CLASSES and coco.category_ids == (1, 2, 3, 4, 5) and len(coco) == len(voc) == 6
    assert coco.folder == synthetic / "JPEGImages"
    for i in range(len(coco)):
        a, b = coco.target(i), voc.target(i)
        assert a["image_id"] == b["image_id"]
        assert torch.equal(a["boxes"], b["boxes"].double()) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["difficult"], b["difficult"]) and not a["iscrowd"].any()
        assert torch.equal(a["area"], (a["boxes"][:, 2] - a["boxes"][:, 0]) * (a["boxes"][:, 3] - a["boxes"][:, 1]))
    image, target = coco[0]
    assert image.shape == voc[0][0].shape and image.dtype == torch.float32 and target["boxes"].dtype == torch.float32


def write_coco(root, split="val2017", categories=((3, "cat"), (7, "dog")), annotations=None, images=2):
    """A COCO 2017 layout: root/val2017/*.jpg and root/annotations/instances_val2017.json."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(images):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(root / split / f"{i + 1:012d}.jpg")
    data = {"images": [{"id": 100 - i, "file_name": f"{i + 1:012d}.jpg", "width": 40, "height": 30}
                       for i in range(images)],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 100, "category_id": 7, "bbox": [1.5, 2.0, 10.25, 8.0], "area": 70.5, "iscrowd": 0},
                {"id": 2, "image_id": 100, "category_id": 3, "bbox": [20.0, 5.0, 15.0, 20.0], "area": 250.0, "iscrowd": 1},
                {"id": 3, "image_id": 99, "category_id": 3, "bbox": [0.0, 0.0, 40.0, 30.0], "area": 1100.0, "iscrowd": 0}],
            "categories": [{"id": cid, "name": name} for cid, name in categories]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_coco_layout_ids_labels_and_crowd(tmp_path):
    dataset = CocoDetection(write_coco(tmp_path), "val2017")
    assert dataset.classes == ("cat", "dog") and dataset.category_ids == (3, 7)
    assert dataset.folder == tmp_path / "val2017"
    assert [dataset.image_id(i) for i in range(2)] == [99, 100], "ordered by id, as COCOeval does"
    target = dataset.target(1)
    assert target["boxes"].tolist() == [[1.5, 2.0, 11.75, 10.0], [20.0, 5.0, 35.0, 25.0]]
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [False, True]
    assert target["area"].tolist() == [70.5, 250.0], "the file's (segment) area, not w * h"
    assert target["difficult"].tolist() == [False, True], "crowd regions are never training targets"
    _, trained = TrainView(dataset, flip=0.0)[1]
    assert trained["labels"].tolist() == [2]


def test_annotations_option_relative_to_root(tmp_path):
    root = write_coco(tmp_path)
    shutil.move(root / "annotations" / "instances_val2017.json", root / "mine.json")
    assert len(CocoDetection(root, "val2017", annotations="mine.json")) == 2


def test_missing_annotation_file_lists_the_splits(tmp_path):
    with pytest.raises(DataError, match=r"instances_test\.json: no such COCO annotation file \(available: "
                                        r"instances_val2017\.json\)"):
        CocoDetection(write_coco(tmp_path), "test")


def test_missing_image(tmp_path):
    root = write_coco(tmp_path)
    (root / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(DataError, match=r"val2017: 1 of the 2 images listed in .*instances_val2017\.json are "
                                        r"missing \(first: 000000000002\.jpg\)"):
        CocoDetection(root, "val2017")


def test_no_image_folder(tmp_path):
    root = write_coco(tmp_path)
    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match=r"image '0+[12]\.jpg' is in none of .*put the images in"):
        CocoDetection(root, "val2017")


def test_truncated_json(tmp_path):
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(DataError, match="not valid JSON .* the file may be truncated"):
        CocoDetection(root, "val2017")


@pytest.mark.parametrize("annotation, message", [
    ({"id": 9, "image_id": 100, "category_id": 5, "bbox": [0, 0, 1, 1]}, r"annotation 9 has category_id 5, not one "
                                                                         r"of the file's categories \[3, 7\]"),
    ({"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}, "annotation 9 refers to image 1"),
    ({"id": 9, "image_id": 100, "category_id": 3, "bbox": [0, 0, 1]}, r"annotation 9 has bbox \[0, 0, 1\]"),
    ({"id": 9, "image_id": 100, "category_id": 3, "bbox": [0, 0, -1, 4]}, "negative width or height"),
])
def test_bad_annotation(tmp_path, annotation, message):
    with pytest.raises(DataError, match=message):
        CocoDetection(write_coco(tmp_path, annotations=[annotation]), "val2017")


def test_box_outside_the_image_is_kept_with_a_warning(tmp_path, caplog):
    # pycocotools scores such boxes as given, so detbin does too, and says so
    annotation = {"id": 1, "image_id": 100, "category_id": 3, "bbox": [30.0, 0.0, 20.0, 10.0]}
    dataset = CocoDetection(write_coco(tmp_path, annotations=[annotation]), "val2017")
    assert dataset.target(1)["boxes"].tolist() == [[30.0, 0.0, 50.0, 10.0]]
    assert "1 boxes reach more than 1 px outside their image" in caplog.text


def test_image_entry_without_file_name(tmp_path):
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    del data["images"][1]["file_name"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[1\] needs an integer 'id' and a 'file_name'"):
        CocoDetection(root, "val2017")
