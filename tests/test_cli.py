"""The command line through typer's CliRunner: real runs on the smoke recipe, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from detbin.models import checkpoint
from detbin import config
from detbin.cli import app
from detbin.config import recipes_dir
from detbin.models.detector import build_detector
from detbin.core.errors import DetbinError
from helpers import toy_config

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
runner = CliRunner()


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A real-valued toy teacher saved as a plain torchvision-style state dict (5 classes)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, teacher_file) -> Path:
    project = tmp_path_factory.mktemp("runs")
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(teacher_file),
                    "--project", str(project), "--name", "smoke", "--set", "train.max_iterations=3")
    assert result.exit_code == 0, result.stdout + result.stderr
    return project / "binarize" / "smoke"


def test_recipes_lists_built_ins_with_package_and_version():
    result = invoke("recipes", "--json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    for name in ("xnor", "bireal", "reactnet"):
        assert listed[name]["package"] == "detbin" and listed[name]["version"]


def test_recipes_show_prints_reference_and_yaml():
    result = invoke("recipes", "show", "reactnet")
    assert result.exit_code == 0 and "arXiv:2003.03488" in result.stdout and "recipe: reactnet" in result.stdout


def test_binarize_writes_a_complete_run_folder(smoke_run):
    for name in ("args.yaml", "recipe.yaml", "env.json", "metrics.jsonl", "results.csv", "weights/last.pt",
                 "weights/best.pt", "plots/results.png"):
        assert (smoke_run / name).is_file(), name
    assert "max_iterations: 3" in (smoke_run / "recipe.yaml").read_text()  # --set took effect and was saved
    assert config.read_yaml(smoke_run / "args.yaml")["set"] == ["train.max_iterations=3"]  # and is recorded as given
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert any("teacher/voc07/mAP50" in r for r in records), "the teacher is scored once at the start"
    best = checkpoint.read(smoke_run / "weights" / "best.pt")
    assert best["kind"] == "student" and best["recipe"] == "reactnet"
    assert not {"trainer", "recipe_state", "teacher", "optimizer"} & set(best), "best.pt holds the student only"
    last = checkpoint.read(smoke_run / "weights" / "last.pt")
    assert last["trainer"]["iteration"] == 3


def test_eval_and_profile_rebuild_the_student_from_the_file_alone(smoke_run, tmp_path):
    result = invoke("eval", str(smoke_run / "weights" / "best.pt"), "--dataset", "synthetic", "--max-images", "8",
                    "--json", "--project", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["protocol"] == "voc07" and 0 <= report["mAP"] <= 1 and set(report["per_class"]) >= {"circle"}
    result = invoke("profile", str(smoke_run / "weights" / "best.pt"), "--json")
    assert result.exit_code == 0, result.stderr
    cost = json.loads(result.stdout)
    assert cost["bops"] > 0 and cost["ops"] == pytest.approx(cost["flops"] + cost["bops"] / 64)


def test_train_a_teacher_from_scratch(tmp_path):
    result = invoke("train", "--config", SMOKE, "--set", "recipe=null", "--project", str(tmp_path), "--name", "t",
                    "--no-progress")
    assert result.exit_code == 0, result.stderr
    saved = checkpoint.read(tmp_path / "train" / "t" / "weights" / "best.pt")
    assert saved["kind"] == "teacher" and saved["binarize"] is None and saved["detector"]["num_classes"] == 6


def test_missing_teacher_file(tmp_path):
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(tmp_path / "nope.pt"),
                    "--project", str(tmp_path))
    assert_one_line_error(result, "nope.pt: no such checkpoint file")


def test_corrupt_teacher_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint")
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(path),
                    "--project", str(tmp_path))
    assert_one_line_error(result, "corrupt.pt: is not a PyTorch checkpoint")


def test_state_dict_of_no_known_architecture(tmp_path):
    path = tmp_path / "classifier.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(path),
                    "--project", str(tmp_path))
    assert_one_line_error(result, "matches no known detector", "--arch")


def test_unknown_recipe_lists_close_names():
    assert_one_line_error(invoke("binarize", "--recipe", "reactnt"), "unknown recipe 'reactnt'",
                          "did you mean: reactnet?")


def test_data_folder_that_is_not_voc_layout(tmp_path, teacher_file):
    (tmp_path / "photos").mkdir()
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(teacher_file),
                    "--data", str(tmp_path / "photos"), "--project", str(tmp_path))
    assert_one_line_error(result, "not a VOC layout folder", "detbin data synthetic")


def test_debug_env_shows_the_exception():
    result = invoke("binarize", "--recipe", "reactnt", env={"DETBIN_DEBUG": "1"})
    assert isinstance(result.exception, DetbinError)


def test_profile_bad_image_size():
    assert_one_line_error(invoke("profile", "fasterrcnn_resnet18_fpn", "--image-size", "0", "600"),
                          "both sides must be positive")


def test_data_synthetic_command(tmp_path):
    result = invoke("data", "synthetic", "--out", str(tmp_path / "syn"), "--train", "4", "--test", "2")
    assert result.exit_code == 0 and (tmp_path / "syn" / "ImageSets" / "Main" / "test.txt").is_file()


def test_help_is_fast_and_lists_every_verb():
    result = invoke("--help")
    for verb in ("binarize", "train", "eval", "profile", "recipes", "data", "demo"):
        assert verb in result.stdout
    assert os.environ.get("DETBIN_DEBUG") is None


def test_set_epochs_takes_effect_and_is_saved(tmp_path, teacher_file):
    # smoke data: 16 images, batch 2 -> 8 iterations per epoch; 2 epochs -> 16 iterations
    result = invoke("binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(teacher_file),
                    "--project", str(tmp_path), "--name", "epochs", "--set", "train.epochs=2",
                    "--set", "train.max_iterations=null", "--set", "eval.max_images=2")
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "binarize" / "epochs"
    assert "epochs: 2.0" in (run / "recipe.yaml").read_text()
    assert checkpoint.read(run / "weights" / "last.pt")["trainer"]["iteration"] == 16
