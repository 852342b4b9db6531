"""VOC layout reading: defusedxml parsing and one-line errors naming file and field."""

from __future__ import annotations

import pytest

from detbin.data import voc
from detbin.data.datasets import VocDetection
from detbin.core.errors import DataError
from detbin.data.synthetic import write_dataset


@pytest.fixture
def voc_root(tmp_path):
    return write_dataset(tmp_path / "syn", train=6, test=2)


def test_not_a_voc_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"not a VOC layout folder \(missing JPEGImages/, Annotations/, "
                                        r"ImageSets/Main/\).*detbin data synthetic"):
        VocDetection(tmp_path, "test")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        VocDetection(tmp_path / "nope", "test")


def test_unknown_split_lists_available(voc_root):
    with pytest.raises(DataError, match="no such split; available: test, train, trainval, val"):
        VocDetection(voc_root, "minival")


def test_missing_image(voc_root):
    dataset = VocDetection(voc_root, "test")
    (voc_root / "JPEGImages" / f"{dataset.stems[0]}.jpg").unlink()
    with pytest.raises(DataError, match=r"000007\.jpg: image file is missing"):
        dataset[0]


def test_xml_without_size(voc_root):
    path = voc_root / "Annotations" / "000007.xml"
    text = path.read_text()
    start, end = text.index("<size>"), text.index("</size>") + len("</size>")
    path.write_text(text[:start] + text[end:])
    with pytest.raises(DataError, match=r"000007\.xml: <size> is missing"):
        VocDetection(voc_root, "test").target(0)


def test_box_outside_the_image(voc_root):
    path = voc_root / "Annotations" / "000008.xml"
    annotation = voc.parse_annotation(path)
    bad = voc.VocAnnotation(annotation.filename, annotation.width, annotation.height,
                            (voc.VocObject("circle", (1, 1, annotation.width + 50, 10)),))
    voc.write_annotation(path, bad)
    with pytest.raises(DataError, match=r"000008\.xml: box .* outside the .* image"):
        voc.parse_annotation(path)


def test_entity_expansion_is_refused(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">]><annotation>&x;</annotation>')
    with pytest.raises(DataError, match="cannot parse annotation XML"):
        voc.parse_annotation(path)


def test_devkit_conversion_is_exact():
    assert voc.to_continuous((1, 1, 10, 20)) == (0, 0, 10, 20)
    assert voc.to_devkit((0, 0, 10, 20)) == (1, 1, 10, 20)
