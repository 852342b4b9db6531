"""Recipe contract v2, each point exercised by a small recipe (tests/contract_recipes.py).

Input taps; a recipe-owned Adam resumed bit-identically after SIGKILL; a two-phase recipe
resumed inside its second phase; a term switched on at the first LR milestone. (DDP with a
parameter unused on some steps: tests/test_distributed.py; deploy forms: tests/test_quantizers.py.)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from detbin.app.build import make_student
from detbin.config import recipes_dir
from detbin.data.datasets import TrainView, collate
from detbin.data.synthetic import SyntheticDetection
from detbin.models import checkpoint
from detbin.models.detector import build_detector
from detbin.models.layout import BinarizeSpec
from detbin.training import plugins
from detbin.training.hook import Hook
from detbin.training.sampler import EpochSampler
from detbin.training.trainer import Trainer
from helpers import install_distribution, run_until, same_tensors, toy_config

RECIPES = {"taps-inputs": "TapsInputs", "owned-adam": "OwnedAdam", "two-phase": "TwoPhase", "late-term": "LateTerm",
           "sometimes-unused": "SometimesUnused"}
SMOKE = str(recipes_dir() / "smoke" / "tiny_synthetic.yaml")


@pytest.fixture
def contract(tmp_path, monkeypatch):
    """The contract recipes as an installed distribution; returns the env for subprocesses."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(Path(__file__).with_name("contract_recipes.py"), site)
    install_distribution(site, "detbin-contract", "0.1",
                         {plugins.GROUP: {name: f"contract_recipes:{cls}" for name, cls in RECIPES.items()}})
    monkeypatch.syspath_prepend(str(site))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "OMP_NUM_THREADS": "1"}


def trainer_for(name: str, iterations: int, milestones=(), hooks=()) -> Trainer:
    recipe = plugins.load(name)()
    teacher = build_detector(toy_config(num_classes=6))
    student, _ = make_student(teacher, recipe, BinarizeSpec())
    recipe.prepare(student, teacher)
    data = TrainView(SyntheticDetection(8, seed=2), seed=0)
    loader = DataLoader(data, batch_size=2, sampler=EpochSampler(len(data)), collate_fn=collate, drop_last=True)
    optimizer = torch.optim.SGD([p for g in recipe.param_groups(student) for p in g["params"]], lr=1e-3)
    return Trainer(student, recipe, loader, optimizer, iterations, teacher=teacher, hooks=hooks,
                   milestones=milestones, phases=recipe.phases(None))


def test_module_inputs_are_tapped_on_student_and_teacher(contract):
    trainer = trainer_for("taps-inputs", 1)
    trainer.train()
    for side in ("student", "teacher"):
        before, conv_input = trainer.recipe.seen[side]
        assert conv_input.shape[1] == trainer.student.model.backbone.body.layer1[0].conv1.in_channels
        assert torch.equal(conv_input, before)  # layer1.0.conv1's input is the max-pool's output


class _Log(Hook):
    def __init__(self):
        self.rows = []

    def after_step(self, t):
        self.rows.append((t.iteration, t.last.losses.get("late-term/stage"), t.last.losses.get("late-term/late")))


def test_a_term_switches_on_at_the_first_milestone(contract):
    log = _Log()
    trainer_for("late-term", 5, milestones=(3,), hooks=[log]).train()
    stages = [stage for _, stage, _ in log.rows]
    assert stages == [0.0, 0.0, 0.0, 1.0, 1.0]  # steps 0, 1, 2 before iteration 3, then stage 1
    assert [late for _, _, late in log.rows][:3] == [0.0, 0.0, 0.0]
    assert all(late > 0 for _, _, late in log.rows[3:])


def test_phases_count_steps_and_keep_the_student_still(contract):
    seen = []

    class Watch(Hook):
        def after_step(self, t):
            seen.append((t.phase.name, t.iteration, t.global_step, t.last.student,
                         t.student.model.backbone.fpn.layer_blocks[0][0].weight.detach().clone()))

    trainer = trainer_for("two-phase", 5, hooks=[Watch()])
    trainer.train()
    assert [(p, i, g, s) for p, i, g, s, _ in seen] == [
        ("warm", 1, 1, True), ("warm", 2, 2, True), ("warm", 3, 3, True),
        ("critic", 3, 4, False), ("critic", 3, 5, False), ("critic", 3, 6, False), ("critic", 3, 7, False),
        ("train", 4, 8, True), ("train", 5, 9, True)]
    critic_weights = [w for p, *_, w in seen if p == "critic"]
    assert all(torch.equal(w, seen[2][4]) for w in critic_weights), "the student trains in no critic step"
    assert trainer.recipe.entered == ["warm", "critic", "train"]
    owned = {id(p) for p in trainer.recipe.critic.parameters()}
    assert not owned & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


def binarize(recipe: str, project: Path, name: str, teacher: Path) -> list[str]:
    return [sys.executable, "-m", "detbin", "binarize", "--no-progress", "--recipe", recipe, "--config", SMOKE,
            "--teacher", str(teacher), "--project", str(project), "--name", name,
            "--set", "train.max_iterations=10", "--set", "train.checkpoint_every=1", "--set", "train.batch_size=2",
            "--set", "data.train.size=8"]


def killed_and_resumed(recipe: str, tmp_path: Path, env: dict, ready) -> tuple[dict, dict, dict]:
    """(uninterrupted last.pt, resumed last.pt, the state the kill landed on)."""
    import subprocess

    teacher = tmp_path / "teacher.pt"
    torch.save(build_detector(toy_config(num_classes=6)).model.state_dict(), teacher)
    subprocess.run(binarize(recipe, tmp_path, "full", teacher), check=True, capture_output=True, env=env)
    last = tmp_path / "binarize" / "killed" / "weights" / "last.pt"
    killed = run_until(binarize(recipe, tmp_path, "killed", teacher), env, last, ready)
    resumed = subprocess.run([sys.executable, "-m", "detbin", "binarize", "--no-progress", "--resume",
                              str(last.parent.parent)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    return checkpoint.read(tmp_path / "binarize" / "full" / "weights" / "last.pt"), checkpoint.read(last), killed


@pytest.mark.slow
def test_an_owned_adam_resumes_bit_identically_after_sigkill(contract, tmp_path):
    full, again, killed = killed_and_resumed("owned-adam", tmp_path, contract,
                                             lambda s: s["trainer"]["iteration"] >= 4)
    assert killed is not None and 4 <= killed["trainer"]["iteration"] < 10
    assert full["trainer"]["owned_optimizers"]["critic"]["state"], "the owned Adam has moments to restore"
    assert same_tensors(full["model"], again["model"]) == []
    assert same_tensors(full["recipe_state"], again["recipe_state"]) == []
    assert same_tensors(full["trainer"]["owned_optimizers"], again["trainer"]["owned_optimizers"]) == []


@pytest.mark.slow
def test_a_two_phase_recipe_resumes_inside_its_second_phase(contract, tmp_path):
    full, again, killed = killed_and_resumed(
        "two-phase", tmp_path, contract,
        lambda s: s["trainer"]["phase_index"] == 1 and 1 <= s["trainer"]["phase_steps"] <= 2)
    assert killed is not None and killed["trainer"]["phase_index"] == 1, "the kill must land in phase 2"
    assert again["trainer"]["global_step"] == full["trainer"]["global_step"] == 14  # 10 student + 4 critic steps
    assert same_tensors(full["model"], again["model"]) == []
    assert same_tensors(full["recipe_state"], again["recipe_state"]) == []
    assert torch.equal(full["trainer"]["rng"]["torch"], again["trainer"]["rng"]["torch"])
