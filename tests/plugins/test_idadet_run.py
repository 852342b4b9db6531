"""ida-det through the CLI: trains, logs every term, rebuilds from its checkpoint; deeper teachers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from detbin.models import checkpoint
from detbin.cli import app
from detbin.config import recipes_dir
from detbin.models.detector import build_detector
from helpers import toy_config

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
runner = CliRunner()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    for arch in ("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn"):
        torch.save(build_detector(toy_config(arch, num_classes=6)).model.state_dict(), folder / f"{arch}.pt")
    return folder


@pytest.mark.parametrize("mode", ["repo", "box"])
def test_binarize_logs_each_term_and_rebuilds(tmp_path, teachers, mode):
    # a random toy teacher is never confident: lower the 0.85 threshold so pairs exist
    result = runner.invoke(app, ["binarize", "--recipe", "ida-det", "--config", SMOKE, "--teacher",
                                 str(teachers / "fasterrcnn_resnet18_fpn.pt"), "--project", str(tmp_path),
                                 "--name", mode, "--set", f"params.mask_mode={mode}",
                                 "--set", "params.score_threshold=0.3", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "binarize" / mode
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "total" in r]
    expected = {f"ida-det/kd_p{level}" for level in range(2, 7)} | {"task/loss_classifier", "pairs", "selected",
                                                                    "sigma"}
    assert expected <= set(steps[-1])
    assert steps[-1]["pairs"] > 0 and 0 < steps[-1]["selected"]
    evaluated = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--dataset", "synthetic",
                                    "--max-images", "4", "--json", "--project", str(tmp_path)])
    assert evaluated.exit_code == 0, evaluated.stderr
    profiled = runner.invoke(app, ["profile", str(run / "weights" / "best.pt"), "--json"])
    assert profiled.exit_code == 0 and json.loads(profiled.stdout)["bops"] > 0


def test_teacher_deeper_than_the_student(tmp_path, teachers):
    # the smoke file names a ResNet-18 FPN student; the teacher is a ResNet-34 FPN
    init = tmp_path / "r18.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), init)
    result = runner.invoke(app, ["binarize", "--recipe", "ida-det", "--config", SMOKE, "--teacher",
                                 str(teachers / "fasterrcnn_resnet34_fpn.pt"), "--project", str(tmp_path),
                                 "--name", "deep", "--set", f"student.init={init}", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    saved = checkpoint.read(tmp_path / "binarize" / "deep" / "weights" / "best.pt")
    assert saved["detector"]["arch"] == "fasterrcnn_resnet18_fpn"
    assert "backbone.body.layer3.5.conv1.weight" not in saved["model"]  # no ResNet-34 stage in the student


def test_multi_scale_training_feeds_the_teacher_the_students_batch(tmp_path, teachers):
    # the student draws 112, 80 or 96 px per batch while the teacher (eval mode) would resize to
    # 96: the teacher must run on the student's transformed tensor, or the FPN maps disagree
    result = runner.invoke(app, ["binarize", "--recipe", "ida-det", "--config", SMOKE, "--teacher",
                                 str(teachers / "fasterrcnn_resnet18_fpn.pt"), "--project", str(tmp_path),
                                 "--set", "detector.min_size=[112,80,96]", "--set", "detector.max_size=112",
                                 "--set", "train.max_iterations=4", "--set", "params.score_threshold=0.3",
                                 "--no-progress"])
    assert result.exit_code == 0, result.stderr
