"""The bidet recipe: its students, the weight schedule, every term through a real step, no NaN, the files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torchvision.ops.misc import FrozenBatchNorm2d

from detbin import ConfigError, LocationSampler, build_detector, tiny_config
from detbin.app.build import layout_spec
from detbin.config import load, recipes_dir
from detbin_bidet import BiDet
from detbin_bidet.recipe import BiDetParams, term_weights
from bidet_helpers import EMPTY, batch, run_step, student

FILES = sorted((recipes_dir() / "bidet").glob("*.yaml"))


def test_release_weights_switch_on_at_the_first_decay():
    p = BiDetParams()
    assert term_weights(p, "ssd", 0) == {"reg": 0.0, "prior": 0.0}
    assert term_weights(p, "ssd", 1) == term_weights(p, "ssd", 3) == {"reg": 0.1, "prior": 0.2}
    assert set(term_weights(p, "frcnn", 0).values()) == {0.0}
    assert term_weights(p, "frcnn", 1) == {"rpn_reg": 0.5, "head_reg": 0.02, "rpn_prior": 0.01, "head_prior": 0.05}


def test_paper_weights_from_the_start():
    p = BiDetParams(schedule="paper")
    assert term_weights(p, "ssd", 0) == {"reg": 1 / 10, "prior": 0.2}
    assert term_weights(p, "frcnn", 0) == {"rpn_reg": 0.1, "head_reg": 0.1, "rpn_prior": 0.2, "head_prior": 0.2}


def test_params_are_strict():
    with pytest.raises(ValidationError):
        BiDetParams(prior_weight=0.2)  # a typo of ssd_prior_weight
    with pytest.raises(ValidationError):
        BiDetParams(prior_mode="cspo")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipe_files_validate(path: Path):
    config, _ = load(path)
    assert config.recipe == "bidet" and BiDetParams.model_validate(config.params)
    assert config.train.optimizer.name == "adam" and config.train.optimizer.lr == 1e-3  # §4.5: Adam 1e-3
    assert config.detector.arch in ("bidetssd300_vgg16", "fasterrcnnc4_resnet18_bidet")
    assert (config.data.augment == "ssd") == config.detector.arch.startswith("bidetssd300")
    if "voc" in path.name:  # the paper's VOC schedule (§4.5 [D]): batch 32, 80 epochs, /10 at 40 and 60
        assert (config.train.epochs, config.train.batch_size, config.train.schedule.milestones) == (80, 32, [40, 60])


def test_tiny_files_switch_the_terms_on_mid_run():
    for name in ("tiny_synthetic_ssd.yaml", "tiny_synthetic_frcnn.yaml"):
        train = load(recipes_dir() / "bidet" / name)[0].train
        per_epoch = 2000 // train.batch_size  # the synthetic benchmark's 2000 training images
        first = round(train.schedule.milestones[0] * per_epoch)
        assert first == train.max_iterations // 2


def test_the_student_is_the_family_s_and_starts_from_the_teacher():
    recipe = BiDet(BiDetParams(sample_sigma=0.25))
    real, detector = student(recipe, "frcnn")
    model = detector.model
    assert detector.config.arch == "fasterrcnnc4_resnet18_bidet" and detector.config.width_mult == 0.125
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, real.model.backbone.body.layer3[1].conv2.weight)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d) and not model.backbone.body.conv1.weight.requires_grad
    assert {m.sample_sigma for m in model.modules() if isinstance(m, LocationSampler)} == {0.25}
    assert model.rpn._post_nms_top_n == {"training": 100, "testing": 50}  # the teacher's settings carry over


def test_binarize_refuses_other_architectures_and_layouts():
    recipe = BiDet()
    with pytest.raises(ConfigError, match="bidetssd300_vgg16"):
        recipe.binarize(build_detector(tiny_config("ssd300_vgg16")), layout_spec(BiDet))
    with pytest.raises(ConfigError, match="binarize: section"):
        import dataclasses
        detector = build_detector(tiny_config("bidetssd300_vgg16"))
        recipe.binarize(detector, dataclasses.replace(layout_spec(BiDet), form="reactnet"))


def test_reseed_hook_makes_the_noise_a_function_of_the_iteration():
    recipe = BiDet(BiDetParams(sample_seed=4))
    model = torch.nn.Sequential(LocationSampler(0.5), LocationSampler(0.5))
    trainer = SimpleNamespace(student=SimpleNamespace(model=model), iteration=9)
    (hook,) = recipe.hooks()
    raw = torch.randn(3, 8)
    hook.before_step(trainer)
    first = [m(raw) for m in model]
    hook.before_step(trainer)
    assert all(torch.equal(a, m(raw)) for a, m in zip(first, model))
    trainer.iteration = 10
    hook.before_step(trainer)
    assert not torch.equal(first[0], model[0](raw))


def test_ssd_terms_weighted_by_stage():
    recipe = BiDet()
    _, detector = student(recipe, "ssd")
    assert detector.model.backbone.form == "sc"
    data = batch("ssd")
    _, off, _ = run_step(recipe, detector, data, lr_stage=0)
    logged = recipe.after_optimizer_step(None)
    assert float(off["reg"]) == 0.0 and float(off["prior"]) == 0.0 and logged["bidet/raw_reg"] > 0
    detector.model.zero_grad()
    _, on, step = run_step(recipe, detector, data, lr_stage=1)
    logged = recipe.after_optimizer_step(None)
    assert torch.isclose(on["reg"], torch.tensor(0.1 * logged["bidet/raw_reg"]))
    assert torch.isclose(on["prior"], torch.tensor(0.2 * logged["bidet/raw_prior"]))
    assert logged["bidet/w_reg"] == 0.1 and on["prior"].requires_grad
    terms = recipe.terms(step)  # per image: the batch values are their means (reg) / pair sums (prior)
    assert torch.isclose(terms.per_image["reg"].mean(), terms.batch["reg"])
    assert set(recipe.reg_terms(step)) == {"reg"} and recipe.prior_terms(step)["prior"][1] == 0.2


def test_ssd_per_image_task_losses_sum_to_torchvision_s():
    recipe = BiDet()
    _, detector = student(recipe, "ssd")
    task, _, step = run_step(recipe, detector, batch("ssd"), lr_stage=1)
    per_image = recipe.task_per_image(step)
    assert per_image.shape == (2,) and per_image.requires_grad
    assert torch.isclose(per_image.sum(), sum(task.values()), rtol=1e-5)
    assert float(per_image[1]) == 0.0 < float(per_image[0])  # no positive: 3 x 0 hard negatives (torchvision)


def test_frcnn_terms_are_logged_by_place():
    recipe = BiDet()
    _, detector = student(recipe, "frcnn")
    _, extra, step = run_step(recipe, detector, batch("frcnn"), lr_stage=1)
    assert set(extra) == {"rpn_reg", "head_reg", "rpn_prior", "head_prior"}
    logged = recipe.after_optimizer_step(step)
    assert {f"bidet/raw_{k}" for k in extra} | {f"bidet/w_{k}" for k in extra} == set(logged)
    assert float(extra["rpn_reg"]) == pytest.approx(0.5 * logged["bidet/raw_rpn_reg"], rel=1e-5)
    assert not extra["rpn_prior"].requires_grad  # as released: computed on detached probabilities
    with pytest.raises(ConfigError, match="SSD student only"):
        recipe.task_per_image(step)


# -- no NaN: a class with no object, no detection past the threshold, batches without objects -------------

@pytest.mark.parametrize("params", [BiDetParams(ssd_score_thresh=1.0),  # p > 1 is impossible: nothing passes
                                    BiDetParams(schedule="paper", prior_mode="sop", prior_classes="all",
                                                ssd_score_thresh=1.0)])
def test_ssd_nothing_past_the_threshold(params):
    recipe = BiDet(params)
    _, detector = student(recipe, "ssd")
    _, extra, _ = run_step(recipe, detector, batch("ssd"), lr_stage=1)
    assert float(extra["prior"]) == 0.0 and float(extra["reg"]) > 0.0


@pytest.mark.parametrize("params", [BiDetParams(head_score_thresh=1.0),
                                    BiDetParams(schedule="paper", rpn_prior_grad=True, prior_mode="csop_no_n",
                                                head_score_thresh=1.0)])
def test_frcnn_nothing_past_the_threshold(params):
    recipe = BiDet(params)
    _, detector = student(recipe, "frcnn")
    _, extra, _ = run_step(recipe, detector, batch("frcnn"), lr_stage=1)
    assert float(extra["head_prior"]) == 0.0
    assert all(torch.isfinite(v) for v in extra.values())


@pytest.mark.parametrize("family", ["ssd", "frcnn"])
def test_a_batch_without_any_object(family):
    recipe = BiDet(BiDetParams(rpn_prior_grad=True))
    _, detector = student(recipe, family)
    images = batch(family)[0]
    _, extra, _ = run_step(recipe, detector, (images, [dict(EMPTY), dict(EMPTY)]), lr_stage=2)
    priors = [k for k in extra if k.endswith("prior")]
    assert priors and all(float(extra[k]) == 0.0 for k in priors)  # no GT: no class, nothing to normalise by
