"""A run killed with SIGKILL, or stopped with Ctrl-C (SIGINT), and resumed ends with the same weights
as an uninterrupted run."""

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
from helpers import same_tensors, toy_config

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


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The uninterrupted run both interruptions are compared with: (project, teacher, env)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    teacher = tmp_path / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in every process
    subprocess.run(run_args(tmp_path, "full", teacher), check=True, capture_output=True, env=env)
    return tmp_path, teacher, env


def assert_same_end(project: Path, name: str, interrupted_at: int) -> None:
    full = checkpoint.read(project / "binarize" / "full" / "weights" / "last.pt")
    again = checkpoint.read(project / "binarize" / name / "weights" / "last.pt")
    assert again["trainer"]["iteration"] == full["trainer"]["iteration"] == ITERATIONS
    assert full["model"].keys() == again["model"].keys()
    different = [k for k in full["model"] if not torch.equal(full["model"][k], again["model"][k])]
    assert different == [], f"resumed from iteration {interrupted_at}: {different[:5]}"
    assert same_tensors(full["trainer"]["optimizer"], again["trainer"]["optimizer"]) == []
    assert torch.equal(full["trainer"]["rng"]["torch"], again["trainer"]["rng"]["torch"])


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(full):
    tmp_path, teacher, env = full
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
    assert_same_end(tmp_path, "killed", killed_at)


@pytest.mark.slow
def test_sigint_then_resume_is_bit_identical(full):
    """Ctrl-C lands during a step (the process is polled, not synchronised with); the step finishes,
    last.pt holds the state after it, the process exits 130, and --resume ends bit-identical."""
    tmp_path, teacher, env = full
    # a shell's background job inherits SIGINT ignored; Ctrl-C at a terminal finds the default action
    victim = subprocess.Popen(run_args(tmp_path, "interrupted", teacher), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "binarize" / "interrupted" / "weights" / "last.pt"
    deadline = time.monotonic() + 120
    while saved_iteration(last) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGINT)
    _, stderr = victim.communicate(timeout=120)
    state = checkpoint.read(last)
    stopped_at = state["trainer"]["iteration"]
    assert victim.returncode == 130, stderr
    assert f"interrupted: interrupted at iteration {stopped_at}; last.pt holds the state" in stderr
    assert "Traceback" not in stderr
    assert 3 <= stopped_at < ITERATIONS, f"the interrupt must land mid-run (last.pt at iteration {stopped_at})"
    # 8 images, batch 2: 4 batches an epoch; the data position must count exactly the steps trained
    # (the bug: one more, so the resumed run skipped a batch)
    assert state["trainer"]["epoch"] * 4 + state["trainer"]["epoch_position"] == stopped_at

    resumed = subprocess.run(binarize("--resume", str(last.parent.parent)), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_end(tmp_path, "interrupted", stopped_at)
