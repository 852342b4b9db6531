"""A ``data.val`` split: periodic evaluations score it, best.pt is the best checkpoint on it and says so
(``val/<metric>``, ``val/iteration``), and the test split scores the final model once."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from detbin.cli import app
from detbin.config import recipes_dir
from detbin.models import checkpoint
from detbin.models.detector import build_detector
from helpers import toy_config

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")


def test_best_pt_is_the_best_on_val_and_the_test_split_scores_the_final_model(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    result = CliRunner().invoke(app, [
        "binarize", "--recipe", "reactnet", "--config", SMOKE, "--teacher", str(teacher), "--project", str(tmp_path),
        "--name", "val", "--no-progress", "--set", "train.max_iterations=6", "--set", "eval.every=2",
        "--set", "data.val={source: synthetic, size: 4, seed: 0, offset: 2000}"])
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "binarize" / "val"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "seconds_per_iter" not in r]  # the evaluation records (the CSV rows repeat them)
    val = [r for r in records if "val/voc07/mAP50" in r]
    test = [r for r in records if "voc07/mAP50" in r]
    assert [r["iteration"] for r in val] == [2, 4, 6]  # every 2 iterations and at the end, on val only
    assert [r["iteration"] for r in test] == [6]  # the test split once, the final model
    best = checkpoint.read(run / "weights" / "best.pt")["metrics"]
    chosen = max(val, key=lambda r: r["val/voc07/mAP50"])  # the first of equals: a later tie is not "better"
    assert best["val/iteration"] == chosen["iteration"] and best["val/voc07/mAP50"] == chosen["val/voc07/mAP50"]
    assert "voc07/mAP50" not in best  # best.pt never saw the test split
    assert f"{test[0]['voc07/mAP50']:.4f}" in result.stdout  # the run's summary reports the test score
