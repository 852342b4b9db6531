"""``detbin eval`` through typer's CliRunner: run folders, saved detections against the reference
tools, and every bad input of the acceptance list as one line on stderr with exit code 1."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from detbin.data import voc
from detbin.cli import app
from detbin.data.datasets import VocDetection
from detbin.models.detector import build_detector
from detbin.data.synthetic import CLASSES, write_dataset
from helpers import toy_config
from test_cli import assert_one_line_error
from test_evaluate import reference_voc_eval

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def as_json(result) -> dict:
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "syn", train=2, test=16)


@pytest.fixture
def syn_copy(syn, tmp_path):
    """A private copy for tests that break it."""
    return shutil.copytree(syn, tmp_path / "syn")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two real-valued toy detectors (5 classes + background) as plain state dicts."""
    folder = tmp_path_factory.mktemp("models")
    for seed, name in ((0, "student.pt"), (1, "teacher.pt")):
        torch.manual_seed(seed)
        torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), folder / name)
    return folder / "student.pt", folder / "teacher.pt"


def jittered(syn, seed=0):
    """Detections made from the test ground truth: jittered copies (some with a wrong class), and
    one false positive per image; continuous xyxy, per image of ``VocDetection(syn, "test")``."""
    rng = np.random.default_rng(seed)
    dataset = VocDetection(syn, "test")
    targets, dets = [dataset.target(i) for i in range(len(dataset))], []
    for i, target in enumerate(targets):
        n, size = len(target["labels"]), dataset.annotation(i)
        boxes = target["boxes"].double().numpy() + rng.normal(0, 1.5, (n, 4))
        boxes = np.clip(boxes, 0, [size.width, size.height] * 2)  # as a detector clips them
        boxes = np.concatenate([boxes, [[5.0, 5.0, 30.0, 30.0]]])
        labels = np.concatenate([np.where(rng.random(n) < 0.8, target["labels"].numpy(), rng.integers(1, 6, n)), [1]])
        dets.append({"boxes": torch.tensor(boxes.round(3)), "scores": torch.tensor(rng.random(n + 1).round(4)),
                     "labels": torch.tensor(labels)})
    return dataset, targets, dets


def write_results(path, dataset, dets):
    """A COCO results list, written the way any tool would (no detbin code)."""
    rows = [{"image_id": dataset.image_id(i), "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            for i, d in enumerate(dets)
            for (x1, y1, x2, y2), s, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())]
    path.write_text(json.dumps(rows))
    return rows


def write_devkit(folder, dataset, dets):
    """comp4_det_test_<class>.txt in devkit pixels (x1 + 1, y1 + 1, x2, y2), as py-faster-rcnn writes them."""
    folder.mkdir()
    for k, name in enumerate(CLASSES, start=1):
        lines = [f"{dataset.stems[i]} {s} {x1 + 1} {y1 + 1} {x2} {y2}\n" for i, d in enumerate(dets)
                 for (x1, y1, x2, y2), s, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
                 if label == k]
        (folder / f"comp4_det_test_{name}.txt").write_text("".join(lines))
    return folder


def pycocotools_stats(instances, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(instances))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture(scope="module")
def model_run(syn, models, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    student, teacher = models
    report = as_json(invoke(student, "--compare", teacher, "--dataset", "synthetic", "--data", syn, "--max-images", 4,
                            "--batch-size", 4, "--project", project, "--json"))
    return report, project / "eval" / "exp"


def test_model_and_compare_write_a_complete_run_folder(model_run):
    report, folder = model_run
    assert report["dataset"] == "synthetic" and report["protocol"] == "voc07" and report["num_images"] == 4
    assert "11-point" in report["protocol_description"] and 0 <= report["mAP"] <= 1
    assert set(report["per_class"]) == set(CLASSES) and report["compare"]["label"] == "teacher.pt"
    assert report["run_dir"] == str(folder)
    for name in ("metrics.json", "per_class.csv", "detections.json", "detections_compare.json", "pr_curve.png",
                 *(f"pr_{c}.png" for c in CLASSES)):
        assert (folder / name).is_file(), name
    header = (folder / "per_class.csv").read_text().splitlines()[0]
    assert header == "class,npos,ap[student.pt],ndet[student.pt],ap[teacher.pt],ndet[teacher.pt]"
    assert json.loads((folder / "metrics.json").read_text())["per_class"] == report["per_class"]


def test_saved_detections_rescore_to_the_same_numbers(model_run, syn, tmp_path):
    report, folder = model_run
    for name, expected in (("detections.json", report), ("detections_compare.json", report["compare"])):
        again = as_json(invoke("--detections", folder / name, "--dataset", "synthetic", "--data", syn, "--max-images",
                               4, "--project", tmp_path, "--json"))
        assert again["mAP"] == expected["mAP"] and again["per_class"] == expected["per_class"]


def test_model_on_coco_data_rescores_to_the_same_stats(syn, models, tmp_path):
    report = as_json(invoke(models[0], "--dataset", "coco", "--data", syn, "--max-images", 3, "--project", tmp_path,
                            "--name", "m", "--json"))
    assert report["protocol"] == "coco" and list(report["stats"])[:3] == ["AP", "AP50", "AP75"]
    again = as_json(invoke("--detections", tmp_path / "eval" / "m" / "detections.json", "--dataset", "coco", "--data",
                           syn, "--max-images", 3, "--project", tmp_path, "--json"))
    assert again["stats"] == report["stats"] and again["per_class"] == report["per_class"]


def test_coco_path_equals_pycocotools_on_the_instances_file(syn, tmp_path):
    dataset, _, dets = jittered(syn)
    results = write_results(tmp_path / "results.json", dataset, dets)
    report = as_json(invoke("--detections", tmp_path / "results.json", "--dataset", "coco", "--data", syn,
                            "--project", tmp_path, "--json"))
    expected = pycocotools_stats(syn / "annotations" / "instances_test.json", results)
    np.testing.assert_allclose(list(report["stats"].values()), expected, rtol=0, atol=1e-9)
    assert report["mAP"] == report["stats"]["AP"] and 0.1 < report["mAP"] < 0.9
    assert report["backend"] == "faster-coco-eval"


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_devkit_files_and_coco_json_equal_the_straightforward_voc_eval(syn, tmp_path, metric):
    dataset, targets, dets = jittered(syn)
    write_results(tmp_path / "results.json", dataset, dets)
    devkit = write_devkit(tmp_path / "devkit", dataset, dets)
    by_json = as_json(invoke("--detections", tmp_path / "results.json", "--dataset", metric, "--data", syn,
                             "--project", tmp_path, "--json"))
    by_devkit = as_json(invoke("--detections", devkit, "--dataset", metric, "--data", syn, "--project", tmp_path,
                               "--json"))
    for k, name in enumerate(CLASSES, start=1):
        expected = reference_voc_eval(targets, dets, k, metric == "voc07")
        assert by_json["per_class"][name]["ap"] == pytest.approx(expected, abs=1e-12)
        assert by_devkit["per_class"][name]["ap"] == pytest.approx(expected, abs=1e-12)
    assert 0.1 < by_json["mAP"] < 0.95


def cut(targets, keep):
    """Each ground-truth box cut to its left ``keep(W)`` pixels (IoU = keep(W) / W), score 1."""
    out = []
    for target in targets:
        boxes = target["boxes"].clone()
        width = boxes[:, 2] - boxes[:, 0]
        boxes[:, 2] = boxes[:, 0] + keep(width)
        out.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"]})
    return out


@pytest.mark.parametrize("keep, expected", [
    (lambda w: w, 1.0),  # the ground truth itself
    (lambda w: torch.floor(w / 2) + 1, 1.0),  # IoU (floor(W/2) + 1) / W > 0.5: every object found
    (lambda w: torch.floor(w / 2), 0.0),  # IoU <= 0.5: none (a match needs IoU > 0.5)
])
def test_devkit_files_at_the_iou_boundary(syn, tmp_path, keep, expected):
    # one pixel off in reading the devkit's 1-based coordinates moves every IoU across 0.5
    dataset = VocDetection(syn, "test")
    detections = cut([dataset.target(i) for i in range(len(dataset))], keep)
    report = as_json(invoke("--detections", write_devkit(tmp_path / "devkit", dataset, detections), "--dataset",
                            "voc07", "--data", syn, "--project", tmp_path, "--json"))
    assert report["mAP"] == pytest.approx(expected, abs=1e-12)


def test_table_states_the_protocol_and_run_folders_increment(syn, tmp_path):
    dataset, _, dets = jittered(syn)
    write_results(tmp_path / "results.json", dataset, dets)
    for expected in ("exp", "exp2"):
        result = invoke("--detections", tmp_path / "results.json", "--dataset", "voc07", "--data", syn,
                        "--project", tmp_path)
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / "eval" / expected / "metrics.json").is_file()
    text = " ".join(result.stdout.split())
    for fact in ("11-point interpolated AP", "IoU > 0.5", "difficult objects neither TP nor FP", "+1 pixel",
                 "mAP over the classes", "circle", "exp2"):
        assert fact in text, fact


def test_box_outside_the_image_in_coco_ground_truth_warns_and_scores_as_pycocotools(syn_copy, tmp_path):
    path = syn_copy / "annotations" / "instances_test.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"][2] += 500  # far past the right border
    path.write_text(json.dumps(data))
    dataset, _, dets = jittered(syn_copy)
    results = write_results(tmp_path / "results.json", dataset, dets)
    result = invoke("--detections", tmp_path / "results.json", "--dataset", "coco", "--data", syn_copy,
                    "--project", tmp_path, "--json")
    assert "1 boxes reach more than 1 px outside their image" in result.stderr
    np.testing.assert_allclose(list(as_json(result)["stats"].values()), pycocotools_stats(path, results), atol=1e-9)


def test_detection_outside_the_image_warns_and_scores_as_given(syn, tmp_path):
    dataset, _, dets = jittered(syn)
    dets[0]["boxes"][-1] = torch.tensor([-40.0, 5.0, 30.0, 30.0])
    results = write_results(tmp_path / "results.json", dataset, dets)
    result = invoke("--detections", tmp_path / "results.json", "--dataset", "coco", "--data", syn, "--project",
                    tmp_path, "--json")
    assert "1 detections reach more than 1 px outside their image" in result.stderr
    np.testing.assert_allclose(list(as_json(result)["stats"].values()),
                               pycocotools_stats(syn / "annotations" / "instances_test.json", results), atol=1e-9)


# --- bad input: one line on stderr, exit code 1 ------------------------------------------------


def test_missing_image_voc(syn_copy, models, tmp_path):
    (syn_copy / "JPEGImages" / "000005.jpg").unlink()
    assert_one_line_error(invoke(models[0], "--dataset", "voc07", "--data", syn_copy, "--project", tmp_path),
                          "000005.jpg: image file is missing (1 of the 16 images", "restore them")


def test_missing_image_coco(syn_copy, models, tmp_path):
    (syn_copy / "JPEGImages" / "000005.jpg").unlink()
    assert_one_line_error(invoke(models[0], "--dataset", "coco", "--data", syn_copy, "--project", tmp_path),
                          "1 of the 16 images listed in", "(first: 000005.jpg)")


def test_xml_without_size(syn_copy, tmp_path):
    path = syn_copy / "Annotations" / "000004.xml"
    text = path.read_text()
    path.write_text(text[:text.index("<size>")] + text[text.index("</size>") + len("</size>"):])
    (tmp_path / "d.json").write_text('[{"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]')
    assert_one_line_error(invoke("--detections", tmp_path / "d.json", "--dataset", "voc07", "--data", syn_copy,
                                 "--project", tmp_path), "000004.xml: <size> is missing")


def test_box_outside_the_image_voc(syn_copy, models, tmp_path):
    path = syn_copy / "Annotations" / "000003.xml"
    ann = voc.parse_annotation(path)
    voc.write_annotation(path, voc.VocAnnotation(ann.filename, ann.width, ann.height,
                                                 (voc.VocObject("circle", (1, 1, ann.width + 30, 10)),)))
    assert_one_line_error(invoke(models[0], "--dataset", "synthetic", "--data", syn_copy, "--project", tmp_path),
                          "000003.xml: box", "outside the")


@pytest.mark.parametrize("text, fragment", [
    ('[{"image_id": 3, "category_id": 99, "bbox": [1, 2, 3, 4], "score": 0.5}]', "category_id 99 is not a category"),
    ("", "empty file (0 bytes)"),
    ("[]", "holds no detections"),
    ('[{"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id"', "may be truncated"),
])
@pytest.mark.parametrize("dataset", ["coco", "voc07"])
def test_bad_detections_file(syn, tmp_path, text, fragment, dataset):
    (tmp_path / "d.json").write_text(text)
    assert_one_line_error(invoke("--detections", tmp_path / "d.json", "--dataset", dataset, "--data", syn,
                                 "--project", tmp_path), "d.json: ", fragment)


def test_empty_devkit_folder(syn, tmp_path):
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "comp4_det_test_circle.txt").write_text("")
    assert_one_line_error(invoke("--detections", tmp_path / "dets", "--dataset", "voc07", "--data", syn,
                                 "--project", tmp_path), "hold no detections")


def test_truncated_instances_json(syn_copy, tmp_path):
    path = syn_copy / "annotations" / "instances_test.json"
    path.write_text(path.read_text()[:-100])
    (tmp_path / "d.json").write_text('[{"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]')
    assert_one_line_error(invoke("--detections", tmp_path / "d.json", "--dataset", "coco", "--data", syn_copy,
                                 "--project", tmp_path), "instances_test.json: not valid JSON", "truncated")


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "voc07"], "eval needs a MODEL file or --detections"),
    (["m.pt", "--detections", "d.json"], "not both"),
    (["--detections", "d.json", "--compare", "t.pt"], "--compare OTHER.pt needs a MODEL"),
    (["--detections", "d.json", "--dataset", "voc2007"], "choose one of voc07, voc12, coco, synthetic"),
    (["--detections", "d.json", "--dataset", "coco"], "--dataset coco needs --data PATH"),
])
def test_usage_errors(args, fragment):
    assert_one_line_error(invoke(*args), fragment)


def test_model_with_other_classes(syn, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(build_detector(toy_config(num_classes=3)).model.state_dict(), path)
    assert_one_line_error(invoke(path, "--dataset", "synthetic", "--data", syn, "--project", tmp_path),
                          "predicts 2 classes but the data set has 5")
