"""bidet through the CLI on both tiny configs: trains from a real teacher, logs every term by place, the student
evaluates and profiles like any other, and a run killed with SIGKILL resumes to bit-identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from detbin.cli import app
from detbin.config import recipes_dir
from detbin.models import checkpoint
from helpers import run_until, same_tensors
from bidet_helpers import teacher

runner = CliRunner()
FILES = {"ssd": "tiny_synthetic_ssd.yaml", "frcnn": "tiny_synthetic_frcnn.yaml"}
TERMS = {"ssd": ("reg", "prior"), "frcnn": ("rpn_reg", "head_reg", "rpn_prior", "head_prior")}
# in-memory synthetic data, 6 steps of 2 images, the first LR decay after step 2 (terms on from step 3)
SHORT = ["--set", "data.train.source=synthetic", "--set", "data.train.size=12", "--set", "data.test.source=synthetic",
         "--set", "data.test.size=4", "--set", "data.test.offset=1000", "--set", "train.batch_size=2",
         "--set", "train.max_iterations=6", "--set", "train.schedule.milestones=[0.34,0.67]",
         "--set", "train.schedule.warmup_iters=0", "--set", "train.log_every=1", "--set", "train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    for family in FILES:
        real = teacher(family, classes=6)  # the synthetic set's 5 shapes + background
        torch.save({"format": "detbin", "format_version": 1, "kind": "teacher", "detector": real.config.to_dict(),
                    "model": real.model.state_dict()}, folder / f"{family}.pt")
    return folder


def binarize(family: str, teachers, project, name: str) -> list[str]:
    return ["binarize", "--recipe", "bidet", "--config", str(recipes_dir() / "bidet" / FILES[family]),
            "--teacher", str(teachers / f"{family}.pt"), "--project", str(project), "--name", name, "--no-progress",
            *SHORT]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ssd", "frcnn"])
def test_binarize_logs_every_term_and_the_student_is_like_any_other(tmp_path, teachers, family):
    result = runner.invoke(app, binarize(family, teachers, tmp_path, family))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "binarize" / family
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "total" in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for record in steps:
        assert all(v == v for v in record.values() if isinstance(v, float))  # no NaN anywhere
        assert any(k.startswith("task/") for k in record)
        assert {f"bidet/{t}" for t in TERMS[family]} | {f"bidet/raw_{t}" for t in TERMS[family]} <= set(record)
    assert [r[f"bidet/w_{TERMS[family][0]}"] > 0 for r in steps] == [False, False, True, True, True, True]
    saved = checkpoint.read(run / "weights" / "best.pt")
    assert saved["detector"]["arch"] in ("bidetssd300_vgg16", "fasterrcnnc4_resnet18_bidet")
    assert "recipe_state" not in saved and saved["recipe"] == "bidet"
    evaluated = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--dataset", "synthetic",
                                    "--max-images", "4", "--json", "--project", str(tmp_path)])
    assert evaluated.exit_code == 0, evaluated.stderr
    profiled = runner.invoke(app, ["profile", str(run / "weights" / "best.pt"), "--json"])
    assert profiled.exit_code == 0, profiled.stderr
    cost = json.loads(profiled.stdout)
    assert cost["bops"] > 0 and cost["unreached"] == []


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, teachers):
    """Faster R-CNN: the location sampling draws noise every step (sample_sigma 0.001), and the terms switch on
    between the kill and the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "detbin"]
    subprocess.run(cli + binarize("frcnn", teachers, tmp_path, "full"), check=True, capture_output=True, env=env)
    last = tmp_path / "binarize" / "killed" / "weights" / "last.pt"
    killed = run_until(cli + binarize("frcnn", teachers, tmp_path, "killed"), env, last,
                       lambda s: s["trainer"]["iteration"] >= 2)
    assert killed is not None and 2 <= killed["trainer"]["iteration"] < 6
    resumed = subprocess.run(cli + ["binarize", "--no-progress", "--resume", str(last.parent.parent)],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    full = checkpoint.read(tmp_path / "binarize" / "full" / "weights" / "last.pt")
    again = checkpoint.read(last)
    assert again["trainer"]["iteration"] == 6
    assert same_tensors(full["model"], again["model"]) == []
    assert same_tensors(full["trainer"]["optimizer"], again["trainer"]["optimizer"]) == []
    evaluated = runner.invoke(app, ["eval", str(last.parent / "best.pt"), "--dataset", "synthetic", "--max-images",
                                    "2", "--json", "--project", str(tmp_path)])
    assert evaluated.exit_code == 0, evaluated.stderr
