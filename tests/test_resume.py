"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detbin.models import checkpoint
from detbin.config import recipes_dir
from detbin.models.detector import build_detector
from helpers import toy_config

SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")
ITERATIONS = 10


def binarize(*args: str) -> list[str]:
    return [sys.executable, "-m", "detbin", "binarize", "--no-progress", *args]


def run_args(project: Path, name: str, teacher: Path) -> list[str]:
    return binarize("--recipe", "reactnet", "--config", SMOKE, "--teacher", str(teacher), "--project", str(project),
                    "--name", name, "--set", f"train.max_iterations={ITERATIONS}", "--set", "train.checkpoint_every=1",
                    "--set", "train.batch_size=2", "--set", "data.train.size=8")


def saved_iteration(path: Path) -> int:
    try:
        return checkpoint.read(path)["trainer"]["iteration"]
    except Exception:  # not written yet
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in every process
    subprocess.run(run_args(tmp_path, "full", teacher), check=True, capture_output=True, env=env)

    victim = subprocess.Popen(run_args(tmp_path, "killed", teacher), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    last = tmp_path / "binarize" / "killed" / "weights" / "last.pt"
    deadline = time.monotonic() + 120
    while saved_iteration(last) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = saved_iteration(last)
    assert 3 <= killed_at < ITERATIONS, f"the kill must land mid-run (last.pt at iteration {killed_at})"

    resumed = subprocess.run(binarize("--resume", str(last.parent.parent)), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    full = checkpoint.read(tmp_path / "binarize" / "full" / "weights" / "last.pt")
    again = checkpoint.read(last)
    assert again["trainer"]["iteration"] == full["trainer"]["iteration"] == ITERATIONS
    assert full["model"].keys() == again["model"].keys()
    different = [k for k in full["model"] if not torch.equal(full["model"][k], again["model"][k])]
    assert different == [], f"resumed from iteration {killed_at}: {different[:5]}"
    assert torch.equal(full["trainer"]["rng"]["torch"], again["trainer"]["rng"]["torch"])
