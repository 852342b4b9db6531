"""The lws-det recipe through detbin's own Trainer: taps, both phases, what each step trains and logs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import toy_config
from lwsdet_helpers import LWS_SPEC, batch, built, spec, trainer_step

from detbin import ConfigError, Hook, Phase, Plan, build_detector
from detbin.config import load, recipes_dir, validate_params
from detbin.training.trainer import Trainer
from detbin_lwsdet import LWSDet

TERMS = {f"{t}_{w}" for t in ("ang", "amp", "w") for w in ("sum", "first", "mid", "last")}


def test_params_defaults_are_the_d_choices_of_3_3_and_lambda_is_a_yaml_key():
    p = LWSDet.Params()
    assert (p.lws_mode, p.lam, p.mu, p.fgfi_weight, p.psi, p.search_lr) == ("joint", 1.0, 1e-4, 1.0, 0.5, None)
    assert LWSDet.Params.model_validate({"lambda": 10.0}).lam == 10.0
    assert LWSDet.Params.model_validate(p.model_dump(mode="json")) == p  # what a checkpoint stores reloads
    with pytest.raises(ValueError, match="extra"):
        LWSDet.Params.model_validate({"lamda": 1.0})


def test_input_taps_are_every_binary_conv_by_name():
    recipe, student, teacher, names = built()
    assert recipe.input_tap_names(student) == names and len(names) == 25
    assert recipe.tap_names(student) == ("transform", "backbone")
    assert all(name in dict(teacher.model.named_modules()) for name in names)
    assert len(built(layer_losses="backbone")[0].layer_names) == 16


def test_phases_of_both_modes():
    assert built()[0].phases(Plan(30, 300)) == [Phase("train", None)]
    assert built("search_then_train", search_epochs=2.0)[0].phases(Plan(30, 300)) == [Phase("search", 60),
                                                                                      Phase("train", None)]
    assert built("search_then_train", search_iterations=7)[0].phases(Plan(30, 300))[0] == Phase("search", 7)


def test_a_joint_step_trains_everything_on_the_full_loss_and_logs_every_term():
    recipe, student, teacher, names = built()
    _, result = trainer_step(recipe, student, teacher)  # lr 0: parameters stay where the step saw them
    extra = {k.split("/")[1]: v for k, v in result.losses.items() if k.startswith("lws-det/")}
    task = [v for k, v in result.losses.items() if k.startswith("task/")]
    assert set(extra) == {"ang", "amp", "w", "lim"} and len(task) == 4
    assert math.isclose(result.total, sum(task) + sum(extra.values()), rel_tol=1e-5)  # task weight 1
    q = student.model.get_submodule(names[0]).weight_quantizer
    assert q.beta_plus.grad.abs().sum() > 0 and q.alpha.grad.abs().sum() > 0
    assert student.model.backbone.body.layer1[0].bn_in1.weight.grad is not None  # L_GT / L_Lim reach the net
    assert recipe.adapt[0].weight.grad.abs().sum() > 0
    stats = result.extra
    assert set(stats) == TERMS | {f"alpha_{w}" for w in ("first", "mid", "last")}
    assert stats["alpha_first"] == pytest.approx(float(q.alpha.detach().abs().mean()))
    last = student.model.get_submodule(names[-1]).weight_quantizer
    assert stats["alpha_last"] == pytest.approx(float(last.alpha.detach().abs().mean()))
    assert stats["ang_sum"] == pytest.approx(extra["ang"], rel=1e-5)  # lambda = 1
    assert stats["w_sum"] * 1e-4 == pytest.approx(extra["w"], rel=1e-5)  # mu = 1e-4
    assert stats["ang_first"] + stats["ang_mid"] + stats["ang_last"] <= stats["ang_sum"] + 1e-6
    assert 0 <= stats["ang_first"] <= 4 and stats["amp_last"] >= 0


def test_lambda_and_mu_scale_the_logged_terms():
    recipe, student, teacher, _ = built(lam=0.1, mu=0.5)
    _, result = trainer_step(recipe, student, teacher)
    assert result.losses["lws-det/amp"] == pytest.approx(0.1 * result.extra["amp_sum"], rel=1e-5)
    assert result.losses["lws-det/w"] == pytest.approx(0.5 * result.extra["w_sum"], rel=1e-5)


def test_param_groups_exclude_latent_weights_and_can_give_the_logits_their_own_lr():
    recipe, student, _, names = built()
    (group,) = recipe.param_groups(student)
    ids = {id(p) for p in group["params"]}
    assert all(id(student.model.get_submodule(n).weight) not in ids for n in names)
    assert id(recipe.adapt[0].weight) in ids
    recipe, student, _, names = built(search_lr=0.05)
    main, logits = recipe.param_groups(student)
    assert logits["lr"] == 0.05 and len(logits["params"]) == 2 * len(names)
    assert {id(p) for p in logits["params"]} == {id(getattr(student.model.get_submodule(n).weight_quantizer, b))
                                                 for n in names for b in ("beta_plus", "beta_minus")}
    assert not {id(p) for p in main["params"]} & {id(p) for p in logits["params"]}


def test_a_search_step_trains_only_beta_and_alpha_on_the_layer_losses():
    recipe, student, teacher, _ = built("search_then_train", search_iterations=5)
    trainer, result = trainer_step(recipe, student, teacher)
    assert trainer.phase.name == "search" and result.phase == "search"
    extra = {k: v for k, v in result.losses.items() if k.startswith("lws-det/")}
    assert set(extra) == {"lws-det/ang", "lws-det/amp", "lws-det/w"} and recipe.task_weight() == 0.0
    assert math.isclose(result.total, sum(extra.values()), rel_tol=1e-5)  # no task loss, no L_Lim
    with_grad = {n for n, p in student.model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.rsplit(".", 1)[1] in ("alpha", "beta_plus", "beta_minus") for n in with_grad)
    assert recipe.adapt[0].weight.grad is None
    recipe.on_phase("train", trainer)
    assert recipe.task_weight() == 1.0 and student.model.backbone.body.bn1.weight.requires_grad


class _Phases(Hook):
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def after_step(self, trainer) -> None:
        self.seen.append((trainer.last.phase, trainer.student.model.backbone.body.bn1.weight.requires_grad))


def test_the_trainer_moves_from_search_to_train():
    recipe, student, teacher, _ = built("search_then_train", search_iterations=2)
    optimizer = torch.optim.Adam(recipe.param_groups(student), lr=1e-3)
    watch = _Phases()
    trainer = Trainer(student, recipe, [batch()], optimizer, 3, teacher=teacher, hooks=[watch],
                      phases=recipe.phases(Plan(1, 3)))
    before = student.model.backbone.body.bn1.weight.detach().clone()
    trainer.train()
    assert watch.seen == [("search", False), ("search", False), ("train", True)]
    assert not torch.equal(before, student.model.backbone.body.bn1.weight.detach())  # trained in phase train


def test_a_teacher_of_another_topology_is_refused():
    teacher = build_detector(toy_config("fasterrcnn_resnet34_fpn"))
    student = copy.deepcopy(build_detector(toy_config()))
    recipe = LWSDet()
    recipe.binarize(student, LWS_SPEC)
    with pytest.raises(ConfigError, match="student's topology.*resnet18.*resnet34"):
        recipe.prepare(student, teacher)
    wider = build_detector(toy_config(fpn_channels=48))  # same arch, other FPN width: shapes differ
    with pytest.raises(ConfigError, match=r"inner_blocks.0.0 is \(32, 16, 3, 3\) in the student"):
        recipe.prepare(student, wider)


def test_other_students_and_non_dbs_weights_are_refused():
    with pytest.raises(ConfigError, match="fixed by §3.2"):
        LWSDet().binarize(build_detector(toy_config()), spec(form="reactnet"))
    with pytest.raises(ConfigError, match="ResNet FPN"):
        LWSDet().binarize(build_detector(toy_config("retinanet_resnet18_fpn")), LWS_SPEC)
    teacher = build_detector(toy_config())
    student = copy.deepcopy(teacher)
    recipe = LWSDet()
    recipe.binarize(student, spec(weight="deployed_sign"))
    with pytest.raises(ConfigError, match="DBS"):
        recipe.prepare(student, teacher)


@pytest.mark.parametrize("name", ["fasterrcnn_r18_fpn_voc", "fasterrcnn_r34_fpn_voc", "tiny_synthetic"])
def test_recipe_files_validate(name):
    config, _ = load(recipes_dir() / "lws-det" / f"{name}.yaml")
    params = validate_params(LWSDet.Params, config.params, name)
    assert config.recipe == "lws-det" and params.lws_mode == "joint" and params.psi == 0.5
    if name.endswith("voc"):
        opt, sched = config.train.optimizer, config.train.schedule
        assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.004, 0.9, 1e-4)
        assert (config.train.batch_size, config.train.clip_grad, config.train.epochs) == (4, 35.0, 36)
        assert (sched.name, sched.milestones, sched.warmup_iters) == ("step", [24, 33], 0)  # 12 x3: 8, 11
        assert config.detector.arch == f"fasterrcnn_resnet{name[12:14]}_fpn"
        assert (params.lam, params.mu, params.search_lr) == (1.0, 1e-4, None)  # the [D] defaults of §3.3
