"""lws-det's two optimisation structures (§3.4) as logic: phase plans, loss terms, what each phase trains."""

from __future__ import annotations

import pytest
from lwsdet_helpers import teacher_and_student
from torch import nn

from detbin import ConfigError, Phase
from detbin_lwsdet.dbs import dbs_convs
from detbin_lwsdet.phases import (SEARCH, TRAIN, LossTerms, loss_terms, phase_plan, search_parameters, set_trainable,
                              trainable_parameters)


def test_phase_plans():
    assert phase_plan("joint", 0) == [Phase("train", None)]
    assert phase_plan("search_then_train", 250) == [Phase("search", 250), Phase("train", None)]
    with pytest.raises(ConfigError, match="search_iterations"):
        phase_plan("search_then_train", 0)
    with pytest.raises(ConfigError, match="valid: joint, search_then_train"):
        phase_plan("alternate", 10)


def test_loss_terms_per_phase():
    assert loss_terms(SEARCH) == LossTerms(task_weight=0.0, imitation=False)  # layer losses only
    assert loss_terms(TRAIN) == LossTerms(task_weight=1.0, imitation=True)  # the full loss of §3.3
    with pytest.raises(ConfigError, match="phases"):
        loss_terms("warmup")


def test_search_phase_trains_exactly_the_logits_and_scales():
    _, student, names = teacher_and_student()
    chosen = trainable_parameters(student.model, None, SEARCH)
    expect = {f"{n}.weight_quantizer.{p}" for n in names for p in ("alpha", "beta_plus", "beta_minus")}
    assert set(chosen) == expect and len(chosen) == 3 * 25
    assert dict(search_parameters(student.model)).keys() == expect


def test_train_phase_trains_everything_but_the_unused_latent_weights():
    _, student, names = teacher_and_student()
    recipe_like = nn.ModuleList([nn.Conv2d(32, 32, 3)])  # e.g. the L_Lim adaptation convs
    chosen = trainable_parameters(student.model, recipe_like, TRAIN)
    latent = {f"{n}.weight" for n in names}
    assert set(chosen) == {n for n, _ in student.model.named_parameters()} - latent | {"recipe.0.weight",
                                                                                       "recipe.0.bias"}
    assert "backbone.body.layer1.0.bn_in1.weight" in chosen and "backbone.fpn.inner_blocks.0.1.weight" in chosen


def test_set_trainable_switches_requires_grad_between_phases():
    _, student, _ = teacher_and_student()
    recipe_like = nn.Linear(2, 2)
    set_trainable(student.model, recipe_like, SEARCH)
    on = {n for n, p in student.model.named_parameters() if p.requires_grad}
    assert on == set(dict(search_parameters(student.model))) and not recipe_like.weight.requires_grad
    set_trainable(student.model, recipe_like, TRAIN)
    assert recipe_like.weight.requires_grad and student.model.backbone.body.bn1.weight.requires_grad
    assert not any(conv.weight.requires_grad for _, conv in dbs_convs(student.model))
