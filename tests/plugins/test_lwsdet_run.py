"""lws-det through the CLI: both modes train and log every term; the student evaluates, profiles and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
ROOT = Path(__file__).resolve().parents[2]
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
    if mode == "joint":
        exported_matches_without_the_plugin(run / "weights" / "best.pt", tmp_path, cost["memory_bits"] // 8)


def exported_matches_without_the_plugin(best: Path, tmp_path: Path, accounted: int) -> None:
    """``detbin export`` packs the searched signs and |alpha|; a process that cannot import the plugin loads them."""
    exported = runner.invoke(app, ["export", str(best), "--name", "lws"])
    assert exported.exit_code == 0, exported.stdout + exported.stderr
    folder = tmp_path / "runs" / "export" / "lws"
    assert json.loads((folder / "export.json").read_text())["accounted_bytes"] == accounted  # = profile's memory
    student, _ = load_model(best)
    image = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.save(student.model.backbone(image), tmp_path / "expected.pt")
    torch.save(image, tmp_path / "image.pt")
    script = (
        "import sys, json, torch\n"
        "sys.modules['detbin_lwsdet'] = None  # importing the training plugin fails\n"
        "from detbin.deploy import load_packed\n"
        f"det, _ = load_packed({str(folder / 'model.packed.safetensors')!r})\n"
        f"expected, image = torch.load({str(tmp_path / 'expected.pt')!r}), torch.load({str(tmp_path / 'image.pt')!r})\n"
        "with torch.no_grad():\n"
        "    got = det.model.backbone(image)\n"
        "print(json.dumps({'same': all(torch.equal(got[k], expected[k]) for k in expected),\n"
        "                  'dbs': any(type(m).__name__ == 'DBSWeight' for m in det.model.modules())}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"same": True, "dbs": False}
