"""lws-det through the CLI: both modes train and log every term; the student evaluates and profiles."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import toy_config
from typer.testing import CliRunner

from detbin.app.build import load_model
from detbin.binary.layers import is_binary
from detbin.cli import app
from detbin.config import recipes_dir
from detbin.models.detector import build_detector

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
runner = CliRunner()
TERMS = {f"{t}_{w}" for t in ("ang", "amp", "w") for w in ("sum", "first", "mid", "last")}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "r18.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), path)  # the smoke data: 5 classes
    return str(path)


@pytest.mark.parametrize("mode", ["joint", "search_then_train"])
def test_binarize_logs_every_term_and_the_student_evaluates_and_profiles(tmp_path, teacher, mode):
    result = runner.invoke(app, ["binarize", "--recipe", "lws-det", "--config", SMOKE, "--teacher", teacher,
                                 "--project", str(tmp_path), "--name", mode, "--set", f"params.lws_mode={mode}",
                                 "--set", "params.search_iterations=1", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "binarize" / mode
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "total" in r]
    assert len(steps) == 2
    train_terms = {"lws-det/ang", "lws-det/amp", "lws-det/w", "lws-det/lim", "task/loss_classifier"}
    assert train_terms | TERMS <= set(steps[-1])
    if mode == "search_then_train":  # step 1 searches (layer terms only), step 2 trains on everything
        assert [r["phase"] for r in steps] == ["search", "train"] and "lws-det/lim" not in steps[0]
    evaluated = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--dataset", "synthetic",
                                    "--max-images", "4", "--json", "--project", str(tmp_path)])
    assert evaluated.exit_code == 0, evaluated.stderr
    profiled = runner.invoke(app, ["profile", str(run / "weights" / "best.pt"), "--json"])
    assert profiled.exit_code == 0, profiled.stderr
    cost = json.loads(profiled.stdout)
    student, _ = load_model(run / "weights" / "best.pt")
    signs = sum(m.weight.numel() for m in student.model.modules() if is_binary(m))
    everything = sum(p.numel() for p in student.model.parameters())
    # each binary weight has a latent weight and two logits: only its sign counts, 1 bit; alpha counts as real
    assert (cost["params_binary"], cost["params_real"]) == (signs, everything - 3 * signs)
    assert cost["bops"] > 0
