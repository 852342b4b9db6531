"""The ``lws-det`` recipe: layer-wise searching for 1-bit detectors.

Xu, Zhao, Lü, Zhang, Han, Doermann: "Layer-Wise Searching for 1-bit Detectors", CVPR 2021,
pp. 5678-5687, doi:10.1109/CVPR46437.2021.00563; the authors' book, §6.4 (Eqs. 6.65-6.76,
Algorithm 13). methods.md §3 is the specification. The student (§3.2) is core (the ``lws``
block form and neck of :mod:`detbin.models.layout`); this plugin adds what only training needs:
the DBS search logits (:mod:`detbin_lwsdet.dbs`), the layer losses, L_Lim and the phases.

Per iteration (§3.3, §3.4):

1. student forward (task losses; input taps of every binary conv, output taps of the FPN);
2. teacher backbone + FPN + RPN head on the student's transformed batch (input taps by name);
3. per binary conv i: L_ang_i, L_amp_i, L_w_i from the teacher's input and weight and the
   student's input (:func:`detbin_lwsdet.losses.layer_losses`);
4. L_Lim: FGFI on the FPN levels, one 3x3 adaptation conv per level;
5. ``L = L_GT + L_Lim + lambda sum_i (L_ang_i + L_amp_i) + mu sum_i L_w_i`` (phase ``train``), or
   only the layer terms with only beta, alpha trainable (phase ``search`` of search_then_train).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from detbin import (BinarizeSpec, ConfigError, Detector, Params, Phase, Plan, Recipe, Step, adaptation_convs,
                    apply_layout, is_binary)
from detbin_lwsdet.dbs import DBSWeight, dbs_convs
from detbin_lwsdet.imitation import fgfi_level_masks, imitation_loss
from detbin_lwsdet.losses import ConvGeometry, layer_losses, widen_kernel
from detbin_lwsdet.phases import SEARCH, TRAIN, loss_terms, phase_plan, set_trainable, trainable_parameters

__all__ = ["LWSDet", "DBSWeight"]

_TAPS = ("transform", "backbone")
_TERMS = ("ang", "amp", "w")


class LWSDet(Recipe):
    """LWS-Det (CVPR 2021): layer-wise angular/amplitude matching with a searched binarization."""

    name = "lws-det"
    paper = ("Xu et al., Layer-Wise Searching for 1-bit Detectors, CVPR 2021, pp. 5678-5687, "
             "doi:10.1109/CVPR46437.2021.00563 (test-only release: Anonymousresults/CVPR2677)")
    needs_teacher = True
    # §3.2: LWS blocks (pre-BN, ApproxSign, searched +-1 weights x alpha, real strided 1x1 shortcuts,
    # PReLU), binary 3x3 laterals, PReLU after every FPN conv, the RPN conv between two BNs.
    layout: ClassVar[dict[str, Any]] = {"form": "lws", "activation": "approx_sign", "weight": "dbs",
                                        "fpn_lateral_kernel": 3, "neck_activation": "lws"}

    class Params(Params):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)

        lws_mode: Literal["joint", "search_then_train"] = "joint"  # §3.4 [D]: joint by default
        lam: float = Field(1.0, alias="lambda", ge=0)  # §3.3 [D]: on the per-layer mean losses
        mu: float = Field(1e-4, ge=0)  # §3.3 [D]: weight reconstruction, IDa's constant
        fgfi_weight: float = Field(1.0, ge=0)  # §3.3 [D]: on the per-mask-point-normalised L_Lim
        psi: float = Field(0.5, gt=0, le=1)  # §3.3: FGFI's IoU threshold factor
        canonical_scale: float = Field(56.0, gt=0)  # FPN level assignment of GT boxes (mmdet's 56)
        search_epochs: float = Field(1.0, gt=0)  # §3.4 [D]: phase A runs 1-2 epochs
        search_iterations: int | None = Field(None, ge=1)  # overrides search_epochs
        layer_losses: Literal["all", "backbone"] = "all"  # §3.7 [D]: every binarized conv
        search_lr: float | None = Field(None, gt=0)  # [D] own lr for the logits beta (None: the trainer's)

    def binarize(self, student: Detector, spec: BinarizeSpec) -> list[str]:
        """The LWS-Det student of §3.2 (the core ``lws`` form and neck); returns the binary conv names."""
        model = student.model
        if not (hasattr(model, "rpn") and hasattr(model.backbone, "fpn") and student.resnet_body):
            raise ConfigError(f"lws-det's student (§3.2) is a Faster R-CNN with a ResNet FPN; got "
                              f"{student.config.arch} (use fasterrcnn_resnet18/34/50_fpn)")
        if (spec.form, spec.neck_activation, spec.fpn_lateral_kernel, spec.pad_value) != ("lws", "lws", 3, 0):
            raise ConfigError("lws-det's student is fixed by §3.2: keep binarize.form lws, neck_activation lws, "
                              "fpn_lateral_kernel 3 and pad_value 0 (binarize.weight may name another quantizer "
                              "for a deployed student; dbs is the paper's)")
        return apply_layout(student, spec)

    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        """Check the same-topology teacher, freeze the latent weights, build the L_Lim adapters."""
        if teacher is None or teacher.config.arch != student.config.arch:
            got = "no teacher" if teacher is None else f"a {teacher.config.arch} teacher"
            raise ConfigError(f"lws-det needs a teacher of the student's topology (§3.3): the student is "
                              f"{student.config.arch}, got {got} (train a real {student.config.arch} teacher, "
                              "recipes/teacher/)")
        self.layer_names = self._layers(student)
        _check_teacher(student.model, teacher.model, self.layer_names)
        for _, conv in dbs_convs(student.model):
            conv.weight.requires_grad_(False)  # the weight is the search state, not the latent weight
        device = next(student.model.parameters()).device
        self.adapt = adaptation_convs(student.config.fpn_channels, teacher.config.fpn_channels,
                                      _levels(student.model, device)).to(device)
        self._phase = TRAIN if self.params.lws_mode == "joint" else SEARCH
        self._stats: dict[str, float] = {}

    def param_groups(self, student: Detector) -> list[dict[str, Any]]:
        """What phase ``train`` trains (phase ``search`` switches requires_grad off the rest).

        With ``search_lr`` the logits get their own group at that lr (the schedule scales it too).
        Why it may be needed: a logit starts ``|d| ~ 2|w| / (3 sigma)`` from its sign flip and moves
        ``lr G |alpha|`` per SGD step (G = dL/dW_hat), where a sign-STE latent weight (ReActNet's)
        starts ``|w|`` away and moves ``lr G``: DBS flips ``2 / (3 sigma |alpha|)`` times slower,
        ~250x at sigma = 0.06 and ~2000x at sigma = 0.02, with alpha ~ 0.8 sigma. Adam's
        per-parameter normalisation removes the alpha factor (left: ``2 / (3 sigma)``, ~10-30x).
        """
        params = trainable_parameters(student.model, self, TRAIN)
        if self.params.search_lr is None:
            return [{"params": list(params.values())}]
        logits = {n for n in params if n.endswith((".beta_plus", ".beta_minus"))}
        return [{"params": [p for n, p in params.items() if n not in logits]},
                {"params": [params[n] for n in sorted(logits)], "lr": self.params.search_lr}]

    def phases(self, plan: Plan) -> list[Phase]:
        """``[train]`` (joint) or ``[search (n iterations), train]`` (search_then_train)."""
        if self.params.lws_mode == "joint":
            return phase_plan("joint", 0)
        return phase_plan("search_then_train", self._search_iterations(plan))

    def on_phase(self, name: str, trainer: Any) -> None:
        """Phase ``search`` trains only beta and alpha; ``train`` everything but the latent weights."""
        self._phase = name
        set_trainable(trainer.student.model, self, name)

    def tap_names(self, student: Detector) -> tuple[str, ...]:
        return _TAPS

    def input_tap_names(self, student: Detector) -> list[str]:
        return self._layers(student)

    @torch.no_grad()
    def teacher_features(self, images: list[Tensor], teacher: Detector, student_taps: dict[str, list[Any]]) -> None:
        """Teacher backbone + FPN and RPN head on the student's transformed batch (so the RPN conv's taps fire)."""
        image_list, _ = student_taps["transform"][0]
        teacher.model.rpn.head(list(teacher.model.backbone(image_list.tensors).values()))

    def task_weight(self) -> float:
        return loss_terms(self._phase).task_weight

    def loss(self, step: Step) -> dict[str, Tensor]:
        """``lambda sum L_ang``, ``lambda sum L_amp``, ``mu sum L_w`` and (phase ``train``) ``L_Lim``."""
        sums, per_layer = self._layer_terms(step)
        p = self.params
        out = {"ang": p.lam * sums["ang"], "amp": p.lam * sums["amp"], "w": p.mu * sums["w"]}
        if loss_terms(step.phase).imitation:
            out["lim"] = p.fgfi_weight * self._imitation(step)
        self._stats = _summary(per_layer, [step.student.model.get_submodule(n).weight_quantizer.alpha
                                           for n in self.layer_names])
        return out

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        """Unweighted layer terms: summed over layers and for the first, middle and last binary conv."""
        return dict(self._stats)

    def _layers(self, student: Detector) -> list[str]:
        names = [n for n, m in student.model.named_modules() if is_binary(m)]
        if self.params.layer_losses == "backbone":
            names = [n for n in names if n.startswith(f"{student.resnet_body}.")]
        return names

    def _search_iterations(self, plan: Plan) -> int:
        if self.params.search_iterations is not None:
            return self.params.search_iterations
        return max(1, round(self.params.search_epochs * plan.iters_per_epoch))

    def _layer_terms(self, step: Step) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        per_layer = []
        for name in self.layer_names:
            conv = step.student.model.get_submodule(name)
            quantizer: DBSWeight = conv.weight_quantizer
            teacher_weight = step.teacher.model.get_submodule(name).weight
            per_layer.append(layer_losses(teacher_weight, step.teacher_inputs[name], step.student_inputs[name],
                                          quantizer.signs(), quantizer.scale().flatten(), ConvGeometry.of(conv)))
        sums = {k: torch.stack([t[k] for t in per_layer]).sum() for k in _TERMS}
        return sums, per_layer

    def _imitation(self, step: Step) -> Tensor:
        image_list, targets = step.student_taps["transform"][0]
        student_maps = list(step.student_taps["backbone"][0].values())
        teacher_maps = list(step.teacher_taps["backbone"][0].values())
        masks = fgfi_level_masks(step.student.model, image_list, [m.detach() for m in student_maps],
                                 [t["boxes"] for t in targets], self.params.psi, self.params.canonical_scale)
        return imitation_loss(self.adapt, student_maps, teacher_maps, masks)


def _summary(per_layer: list[dict[str, Tensor]], alphas: list[Tensor]) -> dict[str, float]:
    """``{term}_sum``, ``{term}_{first,mid,last}`` for ang, amp, w and ``alpha_{first,mid,last}`` (mean |alpha|).

    The scales are logged because L_amp drives alpha to its least-squares optimum, which is ~0 where
    the student's features no longer track the teacher's: a collapsing alpha switches a binary branch off.
    """
    table = torch.stack([torch.stack([t[k].detach() for k in _TERMS] + [a.detach().abs().mean()])
                         for t, a in zip(per_layer, alphas)]).tolist()  # one device->host copy per step
    picks = {"first": 0, "mid": len(per_layer) // 2, "last": len(per_layer) - 1}
    stats = {f"{term}_sum": float(sum(row[j] for row in table)) for j, term in enumerate(_TERMS)}
    for where, i in picks.items():
        stats.update({f"{term}_{where}": table[i][j] for j, term in enumerate((*_TERMS, "alpha"))})
    return stats


def _levels(model: nn.Module, device: torch.device) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        levels = len(model.backbone(torch.zeros(1, 3, 64, 64, device=device)))
    model.train(was_training)
    return levels


def _check_teacher(student: nn.Module, teacher: nn.Module, names: list[str]) -> None:
    """Every layer-loss conv exists in the teacher with the same channels and a compatible kernel (§3.3 [I])."""
    modules = dict(teacher.named_modules())
    for name in names:
        s_conv, t_conv = student.get_submodule(name), modules.get(name)
        if not isinstance(s_conv.weight_quantizer, DBSWeight):
            raise ConfigError(f"lws-det searches the signs with DBS (§3.3): {name} has weight quantizer "
                              f"{type(s_conv.weight_quantizer).__name__}; keep binarize.weight dbs")
        if not isinstance(t_conv, nn.Conv2d) or t_conv.weight.shape[:2] != s_conv.weight.shape[:2]:
            got = "no conv" if not isinstance(t_conv, nn.Conv2d) else f"weight {tuple(t_conv.weight.shape)}"
            raise ConfigError(f"lws-det needs a teacher of the student's topology (§3.3): {name} is "
                              f"{tuple(s_conv.weight.shape)} in the student, {got} in the teacher "
                              "(train a real teacher of the same arch, recipes/teacher/)")
        widen_kernel(t_conv.weight, s_conv.kernel_size)  # raises on an incompatible kernel
