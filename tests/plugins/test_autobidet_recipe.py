"""The autobidet recipe on BiDet's students: f and the GAN reals, the phases, beta(x), the isolation of G/D."""

from __future__ import annotations

import pytest
import torch
from bidet_helpers import batch, run_step, student
from detbin_bidet import AutoBiDet
from detbin_bidet.autobidet import AutoBiDetParams
from detbin_bidet.ces import output_size, real_images
from detbin_bidet.features import extract, probe

from detbin import ConfigError, Phase, Plan
from detbin.config import load, recipes_dir

FILES = sorted((recipes_dir() / "autobidet").glob("*.yaml"))
TINY = dict(output_scale=0.25, g_channels=2, d_channels=2, d_blocks=2, ma_window=1, ma_span=1, gan_cap=2)


def prepared(family: str, **params) -> tuple[AutoBiDet, object]:
    recipe = AutoBiDet(AutoBiDetParams(**{**TINY, **params}))
    teacher, detector = student(recipe, family)
    recipe.prepare(detector, teacher)
    return recipe, detector


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipe_files_validate(path):
    config, _ = load(path)
    assert config.recipe == "autobidet" and AutoBiDetParams.model_validate(config.params).prior_mode == "csop"
    assert config.detector.arch in ("bidetssd300_vgg16", "fasterrcnnc4_resnet18_bidet")


def test_tiny_ssd_file_runs_two_rounds_at_bidet_s_steps():
    auto, _ = load(recipes_dir() / "autobidet" / "tiny_synthetic_ssd.yaml")
    bidet, _ = load(recipes_dir() / "bidet" / "tiny_synthetic_ssd.yaml")
    assert auto.train == bidet.train and auto.data == bidet.data and auto.detector == bidet.detector  # equal steps
    recipe = AutoBiDet(AutoBiDetParams.model_validate(auto.params))
    per_epoch = 2000 // auto.train.batch_size  # the benchmark's 2000 training images
    plan = Plan(per_epoch, auto.train.max_iterations, tuple(round(m * per_epoch) for m in auto.train.schedule.milestones))
    assert recipe.phases(plan) == [Phase("warmup", 250), Phase("gan1", None, False), Phase("detector1", 150),
                                   Phase("gan2", None, False), Phase("detector2", 100)]


@pytest.mark.parametrize(("family", "feature", "f_shape", "reals"), [
    ("ssd", "backbone.vgg.layers.24", (2, 64, 19, 19), (2, 3, 75, 75)),  # fc7 of the SC student at 1/16 width
    ("frcnn", "backbone", (2, 32, 8, 8), (2, 3, 32, 32)),  # the C4 base: 256 / 8 channels at stride 16
])
def test_f_and_reals_of_the_students(family, feature, f_shape, reals):
    recipe, detector = prepared(family)
    assert recipe._feature == feature
    model = detector.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [torch.rand(3, *size) for size in ((300, 300), (240, 280))] if family == "ssd" else \
        [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    f, tensors, mean, std = extract(model, images, feature)
    assert tuple(f.shape) == f_shape and not f.requires_grad
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # frozen
    size = output_size((tensors.shape[-2], tensors.shape[-1]), 0.25)
    made = real_images(tensors, mean, std, size)
    assert tuple(made.shape) == reals and made.min() >= -1 and made.max() <= 1
    assert tuple(recipe.ces.generator(f, size).shape) == reals
    assert probe(model, feature, detector.config.input_size) == (f_shape[1], 16)


def test_g_and_d_are_owned_not_the_student_s():
    recipe, detector = prepared("ssd")
    owned = {id(p) for p in recipe.ces.parameters()}
    groups = recipe.param_groups(detector)
    assert owned and not owned & {id(p) for g in groups for p in g["params"]}
    assert {id(p) for opt in recipe.owned_optimizers().values() for g in opt.param_groups for p in g["params"]} == owned
    assert "ces.generator.input.weight" in recipe.state_dict()  # saved with the run (last.pt), not the student
    assert AutoBiDet().owned_optimizers() == {}  # a recipe that rebuilds a student for eval owns nothing


def test_warmup_is_bidet_and_rounds_weight_each_image_by_beta():
    recipe, detector = prepared("ssd")
    data = batch("ssd")
    _, warm, _ = run_step(recipe, detector, data, lr_stage=0, phase="warmup")
    assert float(warm["reg"]) == 0.0 and float(warm["prior"]) == 0.0  # BiDet's weights before the first decay
    detector.model.zero_grad()
    recipe.on_phase("detector1", None)
    _, extra, step = run_step(recipe, detector, data, lr_stage=1, phase="detector1")
    beta, d = recipe.beta_of(step)
    assert not beta.requires_grad and torch.allclose(beta, 10 + 5 * torch.sin(torch.pi * d / 2))
    per_image = recipe.terms(step).per_image["reg"]
    assert torch.isclose(extra["reg"], (0.1 * 10 / beta * per_image).mean())  # w T(0) / beta(x), batch mean
    assert torch.isclose(extra["prior"], 0.2 * recipe.terms(step).batch["prior"])  # C-SOP: not weighted by beta
    logged = recipe.after_optimizer_step(step)
    assert logged["autobidet/beta_min"] <= logged["autobidet/beta_mean"] <= logged["autobidet/beta_max"] <= 15
    assert all(p.grad is None for p in recipe.ces.parameters())  # the detector loss reaches neither G nor D


def test_literal_mode_scales_each_image_s_detection_loss():
    recipe, detector = prepared("ssd", weighting="literal")
    recipe.on_phase("detector1", None)
    task, extra, step = run_step(recipe, detector, batch("ssd"), lr_stage=1, phase="detector1")
    beta, _ = recipe.beta_of(step)
    per_image = recipe.task_per_image(step)
    assert torch.isclose(extra["task_beta"], ((beta - 1) * per_image).sum(), rtol=1e-5)
    assert torch.isclose(sum(task.values()) + extra["task_beta"], (beta * per_image).sum(), rtol=1e-5)
    with pytest.raises(ConfigError, match="SSD student only"):
        prepared("frcnn", weighting="literal")


def test_frcnn_rounds_weight_both_compression_terms():
    recipe, detector = prepared("frcnn")
    recipe.on_phase("detector1", None)
    _, extra, step = run_step(recipe, detector, batch("frcnn"), lr_stage=1, phase="detector1")
    beta, _ = recipe.beta_of(step)
    terms = recipe.terms(step).per_image
    assert torch.isclose(extra["rpn_reg"], (0.5 * 10 / beta * terms["rpn_reg"]).mean())
    assert torch.isclose(extra["head_reg"], (0.02 * 10 / beta * terms["head_reg"]).mean())


def test_a_gan_call_updates_only_g_or_d_and_the_phase_ends_at_its_cap():
    recipe, detector = prepared("ssd")
    recipe.on_phase("gan1", None)
    images, targets = batch("ssd")
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    from detbin import Step

    logs = []
    while not recipe.phase_done("gan1", None):
        step = Step(images, targets, {}, {}, {}, 0, 10, detector, None, phase="gan1")
        logs.append(recipe.phase_step(step))
    assert [("d_loss" in r, "g_loss" in r) for r in logs] == [(True, False), (True, False), (False, True)] * 2
    assert logs[-1]["g_steps"] == 2.0 and logs[-1]["converged"] == 1.0  # the cap (2 G steps)
    assert all(torch.equal(before[k], v) for k, v in detector.model.state_dict().items())  # the detector: frozen
    assert all(p.grad is None for p in detector.model.parameters())
