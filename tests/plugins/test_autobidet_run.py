"""autobidet through the CLI on the tiny SSD config: warm-up, a full GAN round, detector training with beta(x),
the logged terms, and SIGKILL inside the GAN half then --resume to bit-identical weights (G, D and student)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from detbin.config import recipes_dir
from detbin.models import checkpoint
from helpers import run_until, same_tensors
from bidet_helpers import teacher

# 6 detector steps of 2 images, LR decays after steps 2 and 4: warm-up 2, gan1, detector1 2, gan2, detector2 2.
# Each GAN phase ends at its cap (2 and 1 G steps; 2 D steps per G step: 6 and 3 calls); 15 calls in all.
SHORT = ["--set", "data.train.source=synthetic", "--set", "data.train.size=12", "--set", "data.test.source=synthetic",
         "--set", "data.test.size=4", "--set", "data.test.offset=1000", "--set", "train.batch_size=2",
         "--set", "train.max_iterations=6", "--set", "train.schedule.milestones=[0.34,0.67]",
         "--set", "train.schedule.warmup_iters=0", "--set", "train.log_every=1", "--set", "train.checkpoint_every=1",
         "--set", "params.gan_cap=2", "--set", "params.gan_cap_later=1", "--set", "params.ma_window=1",
         "--set", "params.ma_span=1", "--set", "params.ma_tolerance=1.0e-12"]
PHASES = ["warmup"] * 2 + ["gan1"] * 6 + ["detector1"] * 2 + ["gan2"] * 3 + ["detector2"] * 2


@pytest.fixture(scope="module")
def ssd_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "ssd.pt"
    real = teacher("ssd", classes=6)  # the synthetic set's 5 shapes + background
    torch.save({"format": "detbin", "format_version": 1, "kind": "teacher", "detector": real.config.to_dict(),
                "model": real.model.state_dict()}, path)
    return path


def binarize(path, project, name: str) -> list[str]:
    return [sys.executable, "-m", "detbin", "binarize", "--recipe", "autobidet", "--config",
            str(recipes_dir() / "autobidet" / "tiny_synthetic_ssd.yaml"), "--teacher", str(path),
            "--project", str(project), "--name", name, "--no-progress", *SHORT]


@pytest.mark.slow
def test_a_round_trains_logs_and_resumes_bit_identically_after_sigkill_in_the_gan_half(tmp_path, ssd_teacher):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(binarize(ssd_teacher, tmp_path, "full"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "binarize" / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "phase" in r]
    assert [r["phase"] for r in steps] == PHASES and [r["global_step"] for r in steps] == list(range(1, 16))
    for record in steps:
        assert all(v == v for v in record.values() if isinstance(v, float))  # no NaN in any term
        if record["phase"].startswith("gan"):
            assert ("autobidet/d_loss" in record) != ("autobidet/g_loss" in record), record  # one net per call
            assert "total" not in record
        else:
            assert any(k.startswith("task/") for k in record) and "autobidet/raw_reg" in record
    gan1 = [r for r in steps if r["phase"] == "gan1"]
    assert ["autobidet/g_loss" in r for r in gan1] == [False, False, True] * 2  # 2 D steps, then a G step
    for record in (r for r in steps if r["phase"].startswith("detector")):
        low, mean, high = (record[f"autobidet/beta_{k}"] for k in ("min", "mean", "max"))
        assert 10.0 <= low <= mean <= high <= 15.0  # the sine transform's range (§5.2)
    assert all("autobidet/beta_mean" not in r for r in steps if r["phase"] == "warmup")
    best = checkpoint.read(tmp_path / "binarize" / "full" / "weights" / "best.pt")
    assert "recipe_state" not in best and not any(k.startswith(("ces.", "generator", "discriminator"))
                                                   for k in best["model"])

    last = tmp_path / "binarize" / "killed" / "weights" / "last.pt"
    killed = run_until(binarize(ssd_teacher, tmp_path, "killed"), env, last,
                       lambda s: s["trainer"]["phase_index"] == 1 and s["trainer"]["phase_steps"] >= 4)
    assert killed is not None and killed["trainer"]["phase_index"] == 1 and killed["trainer"]["iteration"] == 2
    resumed = subprocess.run([sys.executable, "-m", "detbin", "binarize", "--no-progress", "--resume",
                              str(last.parent.parent)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    full = checkpoint.read(tmp_path / "binarize" / "full" / "weights" / "last.pt")
    again = checkpoint.read(last)
    assert again["trainer"]["global_step"] == 15
    assert same_tensors(full["model"], again["model"]) == []
    assert same_tensors(full["recipe_state"], again["recipe_state"]) == []  # G and D
    assert any(k.startswith("ces.generator") for k in full["recipe_state"])
    assert same_tensors(full["trainer"]["owned_optimizers"], again["trainer"]["owned_optimizers"]) == []
