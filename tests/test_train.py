"""The trainer: hook order, namespaced losses, frozen teacher, schedules, data order, abort paths."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from detbin.app.build import make_student
from detbin.data.datasets import TrainView, collate
from detbin.models.detector import build_detector
from detbin.core.errors import TrainingInterrupted
from detbin.training.hooks import CheckpointHook, lr_lambda
from detbin.models.layout import BinarizeSpec
from detbin.training.recipe import Recipe
from detbin.data.synthetic import SyntheticDetection
from detbin.training.hook import Hook
from detbin.training.sampler import EpochSampler
from detbin.training.trainer import NonFiniteLoss, Trainer
from helpers import toy_config


class Recording(Recipe):
    """A recipe that records what the trainer hands it."""

    name = "recording"

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[str] = []
        self.nan_at = nan_at

    def tap_names(self, student):
        return ["backbone.fpn"]

    def loss(self, step):
        self.calls.append(f"loss@{step.iteration}")
        assert set(step.student_taps) == {"backbone.fpn"} and step.teacher_taps["backbone.fpn"]
        value = self.scale * 0.0 + (float("nan") if step.iteration == self.nan_at else 0.5)
        return {"extra": value}

    def after_optimizer_step(self, step):
        self.calls.append(f"after@{step.iteration}")
        return {"logged": 1.0}


class Order(Hook):
    def __init__(self, log):
        self.log = log

    def before_train(self, t):
        self.log.append("before_train")

    def before_step(self, t):
        self.log.append(f"before_step@{t.iteration}")

    def after_step(self, t):
        self.log.append(f"after_step@{t.iteration}")

    def after_train(self, t):
        self.log.append("after_train")


def make_trainer(recipe, hooks=(), iterations=2):
    teacher = build_detector(toy_config(num_classes=6))
    student, _ = make_student(teacher, recipe, BinarizeSpec())
    data = TrainView(SyntheticDetection(8, seed=2), seed=0)
    loader = DataLoader(data, batch_size=2, sampler=EpochSampler(len(data)), collate_fn=collate, drop_last=True)
    params = [p for g in recipe.param_groups(student) for p in g["params"]]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    return Trainer(student, recipe, loader, optimizer, iterations, teacher=teacher, hooks=hooks, clip_grad=10.0)


def test_hooks_and_recipe_are_called_in_the_documented_order():
    log: list[str] = []
    recipe = Recording()
    trainer = make_trainer(recipe, [Order(log)])
    trainer.train()
    assert log == ["before_train", "before_step@0", "after_step@1", "before_step@1", "after_step@2", "after_train"]
    assert recipe.calls == ["loss@0", "after@0", "loss@1", "after@1"]


def test_losses_are_namespaced_and_summed():
    trainer = make_trainer(Recording())
    trainer.train()
    last = trainer.last
    assert set(last.losses) == {"task/loss_classifier", "task/loss_box_reg", "task/loss_objectness",
                                "task/loss_rpn_box_reg", "recording/extra"}
    assert last.total == pytest.approx(sum(last.losses.values()), rel=1e-6)
    assert last.extra == {"logged": 1.0}


def test_teacher_is_frozen_in_eval_mode_and_unchanged():
    trainer = make_trainer(Recording())
    before = {k: v.clone() for k, v in trainer.teacher.model.state_dict().items()}
    trainer.train()
    assert not trainer.teacher.model.training
    assert all(not p.requires_grad for p in trainer.teacher.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.model.state_dict().items())


def test_non_finite_loss_aborts_with_the_loss_dict():
    trainer = make_trainer(Recording(nan_at=1), iterations=3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at iteration 1: task/loss_classifier=.*recording/extra=nan"):
        trainer.train()


def test_ctrl_c_saves_last_and_stops_cleanly(tmp_path):
    class Interrupt(Hook):
        def after_step(self, t):
            if t.iteration == 2:
                raise KeyboardInterrupt

    saved = []
    checkpoint = CheckpointHook(tmp_path / "last.pt", every=100, make=lambda t: {"iteration": t.iteration})
    trainer = make_trainer(Recording(), [Interrupt(), checkpoint], iterations=5)
    original = checkpoint.save
    checkpoint.save = lambda t: (saved.append(t.iteration), original(t))
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 2"):
        trainer.train()
    assert saved == [2] and (tmp_path / "last.pt").is_file()


def test_lr_schedules_by_hand():
    warm = lr_lambda("cosine", 100, warmup_iters=10, warmup_factor=0.1, milestones=[], gamma=0.1)
    assert warm(0) == pytest.approx(0.1)  # warm-up starts at warmup_factor
    assert warm(5) == pytest.approx((0.1 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 5 / 100)))
    assert warm(50) == pytest.approx(0.5) and warm(100) == pytest.approx(0.0)
    step = lr_lambda("step", 100, 0, 1.0, milestones=[60, 90], gamma=0.1)
    assert [step(59), step(60), step(89), step(90)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert lr_lambda("linear", 100, 0, 1.0, [], 0.1)(25) == pytest.approx(0.75)


def test_epoch_sampler_shards_resumes_and_reshuffles():
    full = list(EpochSampler(10, seed=3))
    ranks = [list(EpochSampler(10, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(full) == list(range(10)) and ranks[0] == full[0::2] and ranks[1] == full[1::2]
    resumed = EpochSampler(10, seed=3)
    resumed.set_epoch(0, skip=4)
    assert list(resumed) == full[4:]
    resumed.set_epoch(1)
    assert sorted(resumed) == list(range(10)) and list(resumed) != full
    padded = list(EpochSampler(5, seed=0, rank=1, world_size=2))
    assert len(padded) == 3  # 5 samples over 2 ranks: 3 each, one repeated
