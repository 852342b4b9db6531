"""The embedded synthetic benchmark: deterministic, varied, written in the VOC layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detbin.data import voc
from detbin.data.datasets import VocDetection
from detbin.core.errors import DataError
from detbin.data.synthetic import CLASSES, SyntheticDetection, render, write_dataset


def test_render_is_a_pure_function_of_seed_and_index():
    a, b = render(7, seed=3), render(7, seed=3)
    assert np.array_equal(a.pixels, b.pixels) and a.objects == b.objects
    assert not np.array_equal(render(7, seed=4).pixels, a.pixels)


def test_sets_are_varied():
    images = [render(i) for i in range(300)]
    objects = [o for im in images for o in im.objects]
    assert any(len(im.objects) == 0 for im in images), "some images hold no object"
    assert {o.label for o in objects} == set(range(len(CLASSES)))
    assert 0.02 < np.mean([o.difficult for o in objects]) < 0.3
    widths = [o.box[2] - o.box[0] for o in objects]
    assert min(widths) < 12 and max(widths) > 45, "sizes span small to large"
    assert len({im.pixels.shape for im in images}) > 10, "image sizes vary"
    for im in images:
        h, w = im.pixels.shape[:2]
        for o in im.objects:
            assert 0 <= o.box[0] < o.box[2] <= w and 0 <= o.box[1] < o.box[3] <= h


def test_in_memory_dataset_format():
    image, target = SyntheticDetection(4, seed=0)[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].shape[1] == 4 and target["labels"].min() >= 1
    assert target["difficult"].dtype == torch.bool


def test_written_set_round_trips_through_voc_and_coco(tmp_path):
    root = write_dataset(tmp_path / "syn", train=20, test=6, seed=1)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "annotations"):
        assert (root / sub).is_dir()
    assert len(voc.read_split(root, "trainval")) == 20 and len(voc.read_split(root, "test")) == 6
    assert len(voc.read_split(root, "train")) + len(voc.read_split(root, "val")) == 20
    dataset = VocDetection(root, "test")
    assert dataset.classes == CLASSES
    image, target = dataset[2]
    rendered = render(20 + 2, seed=1)
    assert image.shape[1:] == rendered.pixels.shape[:2]
    expected = torch.tensor([o.box for o in rendered.objects]).reshape(-1, 4)
    assert torch.equal(target["boxes"], expected)  # integer pixel boxes survive the devkit's 1-based XML
    instances = json.loads((root / "annotations" / "instances_test.json").read_text())
    assert len(instances["images"]) == 6
    assert len(instances["annotations"]) == sum(len(render(20 + i, seed=1).objects) for i in range(6))
    assert [c["name"] for c in instances["categories"]] == list(CLASSES)


def test_rewrite_is_cached_and_foreign_folders_are_protected(tmp_path):
    root = write_dataset(tmp_path / "syn", train=4, test=2)
    stamp = (root / "Annotations" / "000001.xml").stat().st_mtime_ns
    write_dataset(root, train=4, test=2)
    assert (root / "Annotations" / "000001.xml").stat().st_mtime_ns == stamp
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="exists and is not this synthetic set.*--overwrite"):
        write_dataset(tmp_path / "mine", train=4, test=2)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
