"""The bad-input corpus: every input a careless or hostile user can hand detbin ends in exactly one
line on stderr that names the offending file, with exit code 1 and no traceback (issue 11, item 5).

One table, one test: each case writes its tiny input (a toy detector, a 4 + 3 image VOC-layout
folder from ``write_dataset``) and gives the command line and the file name the message must
contain. Everything runs in-process through typer's CliRunner; the cases that need a real
process or a special file system are in ``test_hardening.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detbin.app.build import layout_spec, make_student
from detbin.app.run_files import student_payload
from detbin.cli import app
from detbin.config import recipes_dir
from detbin.data.synthetic import CLASSES, write_dataset
from detbin.models.detector import build_detector
from detbin.training import plugins
from helpers import toy_config

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
runner = CliRunner()


@dataclass(frozen=True)
class Inputs:
    """Valid inputs shared by the cases; a case copies what it breaks."""

    root: Path
    voc: Path       # VOC layout: trainval 000001-000004, test 000005-000007, annotations/instances_*.json
    teacher: Path   # plain state dict of the toy Faster R-CNN R18 (width 0.25, 5 classes)
    student: Path   # a reactnet student checkpoint of that teacher, as best.pt is written


def write_student(path: Path, **changes) -> Path:
    """A reactnet student checkpoint of the toy teacher (``changes`` replace top-level fields)."""
    recipe_cls = plugins.load("reactnet")
    recipe = recipe_cls()
    spec = layout_spec(recipe_cls)
    student, _ = make_student(build_detector(toy_config(num_classes=6)), recipe, spec)
    payload = student_payload("student", student, spec, recipe, CLASSES, {}, {})
    torch.save({**payload, **changes}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("corpus")
    voc = write_dataset(root / "voc", train=4, test=3)
    teacher = root / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    return Inputs(root, voc, teacher, write_student(root / "student.pt"))


def voc_copy(fx: Inputs, tmp: Path) -> Path:
    return Path(shutil.copytree(fx.voc, tmp / "voc"))


def edit_student(fx: Inputs, path: Path, detector: dict) -> Path:
    data = torch.load(fx.student, weights_only=True)
    data["detector"] = {**data["detector"], **detector}
    torch.save(data, path)
    return path


def binarize(fx: Inputs, tmp: Path, *extra: str, config: str = SMOKE, teacher: Path | None = None,
             project: Path | None = None) -> list[str]:
    return ["binarize", "--recipe", "reactnet", "--config", str(config), "--teacher", str(teacher or fx.teacher),
            "--project", str(project or tmp / "runs"), "--no-progress", *extra]


def eval_coco(fx: Inputs, tmp: Path, instances: object, raw: bytes | None = None) -> list[str]:
    path = tmp / "instances_bad.json"
    path.write_bytes(raw if raw is not None else json.dumps(instances).encode())
    return ["eval", str(fx.student), "--dataset", "coco", "--data", str(fx.voc), "--split", "test",
            "--annotations", str(path), "--project", str(tmp / "runs")]


def coco_with(fx: Inputs, **changes) -> dict:
    data = json.loads((fx.voc / "annotations" / "instances_test.json").read_text())
    return {**data, **changes}


def first_image(fx: Inputs, **changes) -> dict:
    data = coco_with(fx)
    data["images"][0] = {**data["images"][0], **changes}
    return data


def eval_saved(fx: Inputs, tmp: Path, detections: Path, dataset: str = "coco") -> list[str]:
    return ["eval", "--detections", str(detections), "--dataset", dataset, "--data", str(fx.voc), "--split", "test",
            "--project", str(tmp / "runs")]


def bad_xml(fx: Inputs, tmp: Path, tag: str, value: str) -> list[str]:
    root = voc_copy(fx, tmp)
    xml = root / "Annotations" / "000005.xml"  # the first test image
    text = xml.read_text()
    start, end = text.index(f"<{tag}>") + len(tag) + 2, text.index(f"</{tag}>")
    xml.write_text(text[:start] + value + text[end:])
    return ["eval", str(fx.student), "--dataset", "synthetic", "--data", str(root), "--split", "test",
            "--project", str(tmp / "runs")]


def with_split(fx: Inputs, tmp: Path, text: bytes, *extra: str) -> list[str]:
    root = voc_copy(fx, tmp)
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(text)
    return binarize(fx, tmp, "--data", str(root), *extra)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def a_file(path: Path) -> Path:
    return write(path, b"I am a file, not a folder\n")


LATIN1 = "caf\xe9".encode("latin-1")  # b"caf\xe9": not UTF-8
RECIPE = Path(SMOKE).read_text()

# (id, make(inputs, tmp) -> (command line, the file name the one line must contain))
CASES: list[tuple[str, Callable[[Inputs, Path], tuple[list[str], str]]]] = [
    # checkpoints
    ("student detector.arch does not fit its weights", lambda fx, tmp: (
        ["profile", str(edit_student(fx, tmp / "arch.pt", {"arch": "fasterrcnn_resnet34_fpn"}))], "arch.pt")),
    ("student detector width does not fit its weights", lambda fx, tmp: (
        ["profile", str(edit_student(fx, tmp / "wide.pt", {"width_mult": 0.5}))], "wide.pt")),
    ("student.init of another width", lambda fx, tmp: (
        binarize(fx, tmp, "--set", "detector.width_mult=0.5", "--set", f"student.init={fx.teacher}"), "teacher.pt")),
    ("random bytes as a checkpoint", lambda fx, tmp: (
        ["profile", str(write(tmp / "random.pt", bytes(range(7, 256)) * 8))], "random.pt")),
    ("checkpoint naming a module as its recipe", lambda fx, tmp: (
        ["profile", str(write_student(tmp / "module.pt", recipe="json:JSONDecoder"))], "module.pt")),
    ("checkpoint naming this:s as its recipe", lambda fx, tmp: (
        ["profile", str(write_student(tmp / "zen.pt", recipe="this:s"))], "zen.pt")),
    ("checkpoint without its detector field", lambda fx, tmp: (
        ["profile", str(write_student(tmp / "nodetector.pt", detector=5))], "nodetector.pt")),
    # recipe files
    ("recipe file not UTF-8", lambda fx, tmp: (
        binarize(fx, tmp, config=write(tmp / "latin1.yaml", b"# " + LATIN1 + b"\n" + RECIPE.encode())),
        "latin1.yaml")),
    ("recipe file with a duplicate key", lambda fx, tmp: (
        binarize(fx, tmp, config=write(tmp / "twice.yaml", (RECIPE + "train: {batch_size: 4}\n").encode())),
        "twice.yaml")),
    # COCO instances
    ("COCO annotations not UTF-8", lambda fx, tmp: (
        eval_coco(fx, tmp, None, b'{"images": [], "info": "' + LATIN1 + b'"}'), "instances_bad.json")),
    ("COCO annotation that is a list", lambda fx, tmp: (
        eval_coco(fx, tmp, coco_with(fx, annotations=[[1, 2, 3, 4]])), "instances_bad.json")),
    ("COCO images: 5", lambda fx, tmp: (eval_coco(fx, tmp, coco_with(fx, images=5)), "instances_bad.json")),
    ("COCO top-level number", lambda fx, tmp: (eval_coco(fx, tmp, 5), "instances_bad.json")),
    ("COCO annotation with a list image_id", lambda fx, tmp: (
        eval_coco(fx, tmp, coco_with(fx, annotations=[{"id": 1, "image_id": [1], "category_id": 1,
                                                        "bbox": [1, 2, 3, 4]}])), "instances_bad.json")),
    ("COCO file_name ../../etc/passwd", lambda fx, tmp: (
        eval_coco(fx, tmp, first_image(fx, file_name="../../etc/passwd")), "instances_bad.json")),
    ("COCO absolute file_name outside --data", lambda fx, tmp: (
        eval_coco(fx, tmp, first_image(fx, file_name=str(fx.teacher))), "instances_bad.json")),
    # saved detections
    ("COCO results with an unhashable image_id", lambda fx, tmp: (
        eval_saved(fx, tmp, write(tmp / "dets.json", json.dumps(
            [{"image_id": [5], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]).encode())), "dets.json")),
    ("COCO results not UTF-8", lambda fx, tmp: (
        eval_saved(fx, tmp, write(tmp / "dets.json", b'[{"image_id": "' + LATIN1 + b'"}]')), "dets.json")),
    ("VOC results not UTF-8", lambda fx, tmp: (
        eval_saved(fx, tmp, write(tmp / "dets" / f"comp4_det_test_{CLASSES[0]}.txt", b"000005 " + LATIN1 + b"\n")
                   .parent, "synthetic"), f"comp4_det_test_{CLASSES[0]}.txt")),
    # VOC annotations and split files
    ("VOC <width>nan</width>", lambda fx, tmp: (bad_xml(fx, tmp, "width", "nan"), "000005.xml")),
    ("VOC <xmax>1e999</xmax>", lambda fx, tmp: (bad_xml(fx, tmp, "xmax", "1e999"), "000005.xml")),
    ("VOC <height>1e999</height>", lambda fx, tmp: (bad_xml(fx, tmp, "height", "1e999"), "000005.xml")),
    ("VOC split file not UTF-8", lambda fx, tmp: (with_split(fx, tmp, LATIN1 + b"\n"), "trainval.txt")),
    ("VOC split entry ../../etc/passwd", lambda fx, tmp: (with_split(fx, tmp, b"../../etc/passwd\n"),
                                                          "trainval.txt")),
    ("empty training split", lambda fx, tmp: (with_split(fx, tmp, b""), "trainval.txt")),
    ("training split smaller than one batch", lambda fx, tmp: (
        with_split(fx, tmp, b"000001\n000002\n000003\n", "--set", "train.batch_size=4"), "trainval.txt")),
    # output folders
    ("binarize --project is a regular file", lambda fx, tmp: (
        binarize(fx, tmp, project=a_file(tmp / "occupied")), "occupied")),
    ("eval --project is a regular file", lambda fx, tmp: (
        ["eval", str(fx.student), "--dataset", "synthetic", "--max-images", "1", "--project",
         str(a_file(tmp / "occupied"))], "occupied")),
    # paths that look like rich markup
    ("teacher path with [/old]", lambda fx, tmp: (
        binarize(fx, tmp, teacher=tmp / "[" / "old]" / "t.pt"), "[/old]/t.pt")),
    ("model path with [red]", lambda fx, tmp: (["profile", str(tmp / "[red]" / "m.pt")], "[red]/m.pt")),
]


@pytest.mark.parametrize("make", [make for _, make in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_naming_the_file(inputs, tmp_path, make):
    args, name = make(inputs, tmp_path)
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exception, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert name in lines[0], lines[0]
    assert "Beautiful is better than ugly" not in result.stdout + result.stderr  # this:s was never imported
