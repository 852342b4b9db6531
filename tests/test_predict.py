"""``detbin predict`` through typer's CliRunner: drawings a person can read, a detections JSON that
``detbin eval --detections`` scores exactly as the model, packed files and OpenVINO exports as models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detbin.app.drawing import PALETTE
from detbin.app.predicting import image_ids
from detbin.cli import app
from detbin.core.errors import DataError
from detbin.data.synthetic import CLASSES, write_dataset
from detbin.models.detector import build_detector
from export_support import save_student, tiny_config
from test_cli import assert_one_line_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 4 + 4 image synthetic set on disk and an untrained reactnet student of its 5 classes."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    data = write_dataset(root / "data", 4, 4, 0, False)
    save_student(root / "student.pt", "reactnet", tiny_config(num_classes=len(CLASSES) + 1), CLASSES)
    test = [data / "JPEGImages" / f"{s}.jpg" for s in (data / "ImageSets/Main/test.txt").read_text().split()]
    return root, data, test


def run_predict(*args):
    result = invoke("predict", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def test_drawings_and_a_json_that_eval_scores_as_the_model(files, tmp_path):
    root, data, test = files
    run_predict(root / "student.pt", *test, "--conf", "0", "--name", "rt")
    folder = tmp_path / "runs/predict/rt"
    summary = json.loads((folder / "predictions.json").read_text())
    assert [i["image_id"] for i in summary["images"]] == [int(p.stem) for p in test]  # 000005.jpg -> 5, as eval
    first = summary["images"][0]
    assert first["detections"] and first["detections"][0]["class"] in CLASSES
    drawing = np.asarray(Image.open(folder / first["drawing"]).convert("RGB"))
    factor = -(-512 // max(first["height"], first["width"]))  # ~128 px enlarged 4x so that labels are legible
    assert factor == 4 and drawing.shape == (first["height"] * factor, first["width"] * factor, 3)
    plain = np.asarray(Image.open(test[0]).convert("RGB").resize(drawing.shape[1::-1], Image.NEAREST))
    changed = (drawing != plain).any(axis=2)
    label = first["detections"][0]["label"]
    assert changed.mean() > 0.01 and (drawing == PALETTE[label - 1]).all(axis=2).sum() > 100  # boxes, label bands
    scored = invoke("eval", "--detections", folder / "detections.json", "--dataset", "synthetic", "--data", data,
                    "--name", "from_json", "--json")
    direct = invoke("eval", root / "student.pt", "--dataset", "synthetic", "--data", data, "--batch-size", "1",
                    "--name", "direct", "--json")
    a, b = json.loads(scored.stdout), json.loads(direct.stdout)
    assert a["num_images"] == b["num_images"] == 4
    assert a["mAP"] == b["mAP"] and {k: v["ndet"] for k, v in a["per_class"].items()} == {
        k: v["ndet"] for k, v in b["per_class"].items()}
    # the very same COCO results as the ones eval writes for the model
    assert json.loads((folder / "detections.json").read_text()) == json.loads(
        (tmp_path / "runs/eval/direct/detections.json").read_text())


def test_a_packed_file_predicts_the_same_and_conf_filters(files, tmp_path):
    root, data, test = files
    assert invoke("export", root / "student.pt", "--name", "p").exit_code == 0
    run_predict(root / "student.pt", test[0], "--conf", "0.1", "--name", "ckpt")
    run_predict(tmp_path / "runs/export/p/model.packed.safetensors", test[0], "--conf", "0.1", "--name", "packed")
    run_predict(tmp_path / "runs/export/p", test[0], "--conf", "0.1", "--name", "folder")
    jsons = [json.loads((tmp_path / f"runs/predict/{n}/detections.json").read_text())
             for n in ("ckpt", "packed", "folder")]
    assert jsons[0] == jsons[1] == jsons[2] and jsons[0] and min(d["score"] for d in jsons[0]) >= 0.1


def test_a_teacher_without_class_names(files, tmp_path):
    root, data, test = files
    teacher = build_detector(tiny_config(num_classes=3))
    torch.save(teacher.model.state_dict(), tmp_path / "teacher.pt")
    run_predict(tmp_path / "teacher.pt", test[0], "--conf", "0", "--name", "t")
    summary = json.loads((tmp_path / "runs/predict/t/predictions.json").read_text())
    assert summary["classes"] == ["class 1", "class 2"] and summary["engine"] == "torch (real)"


def test_image_ids_follow_the_data_sets():
    assert image_ids([Path("a/000123.jpg"), Path("b/x.png"), Path("000000397133.jpg")]) == [123, 1, 397133]
    with pytest.raises(DataError, match="b/7.jpg: image id 7 is also the id of a/0007.jpg"):
        image_ids([Path("a/0007.jpg"), Path("b/7.jpg")])


def test_bad_inputs_are_one_line_errors(files, tmp_path, monkeypatch):
    root, data, test = files
    assert_one_line_error(invoke("predict", root / "student.pt", tmp_path / "nope.jpg"), "nope.jpg: no such image")
    assert_one_line_error(invoke("predict", root / "student.pt", test[0], "--engine", "tensorrt"),
                          "--engine 'tensorrt': choose torch or openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert_one_line_error(invoke("predict", root / "student.pt", test[0], "--engine", "openvino"),
                          "pip install 'detbin[openvino]'")
    assert not (tmp_path / "runs/predict").exists()


def test_openvino_engine_on_an_export_folder(files, tmp_path):
    pytest.importorskip("openvino", reason="the OpenVINO engine needs openvino: pip install -e '.[test,openvino]'")
    root, data, test = files
    exported = invoke("export", root / "student.pt", "--format", "openvino", "--name", "ov")
    assert exported.exit_code == 0, exported.stdout + exported.stderr
    assert "29 BinaryConvolution layers for 25 binary convs" in exported.stdout
    run_predict(tmp_path / "runs/export/ov", *test, "--engine", "openvino", "--conf", "0", "--threads", "1",
                "--name", "ov")
    run_predict(root / "student.pt", *test, "--conf", "0", "--name", "torch")
    ov, sim = (json.loads((tmp_path / f"runs/predict/{n}/predictions.json").read_text()) for n in ("ov", "torch"))
    assert ov["engine"].startswith("openvino binary")
    for a, b in zip(ov["images"], sim["images"]):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        boxes = [np.abs(np.subtract(d["box_xyxy"], e["box_xyxy"])).max() for d, e in zip(a["detections"],
                                                                                       b["detections"])]
        assert max(boxes) < 1e-3  # pixels: float rounding of the popcount against the float sum
