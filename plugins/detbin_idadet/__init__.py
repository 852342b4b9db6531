"""The ``ida-det`` recipe: Information-Discrepancy-aware distillation for 1-bit detectors.

Xu, Li, Zeng, Ma, Zhang, Cao, Gao, Lü: "IDa-Det: An Information Discrepancy-aware
Distillation for 1-bit Detectors", ECCV 2022, arXiv:2210.03477; the authors' released code
(``SteveTsui/IDa-Det``, a fork of DeFeat.pytorch) where it differs. methods.md §2 is the
specification; every constant below is a recipe parameter with the paper's/repository's value.

Per iteration (§2.9): student forward (task losses x5); teacher backbone+FPN+RPN (no grad);
per image the teacher's and the student's confident proposals (score > 0.85, NMS 0.1);
per FPN level the discrepancy of every proposal pair, the top round(0.6 N) pairs, their mask,
and the entropy loss between the teacher's map and the student's adapted map;
``loss = 5 L_det + 0.5 mean_l L_l``; BiConv's backward adds the reconstruction pull mu.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from detbin import (BinarizeSpec, ConfigError, Detector, Hook, Params, Recipe, Step, adaptation_conv, apply_layout,
                    register_quantizer, set_box_loss)

from detbin_idadet.biconv import BiConvWeight
from detbin_idadet.selection import (discrepancy, entropy_loss, level_mask, proposal_pairs, rpn_proposals,
                                     select_top, spans)

__all__ = ["IDaDet", "BiConvWeight"]

_TAPS = ("transform", "backbone", "rpn.head", "rpn.anchor_generator")
# optimizers that divide each step by a running gradient magnitude (see IDaDet.on_phase)
_ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
             torch.optim.Adagrad, torch.optim.RMSprop)
log = logging.getLogger(__name__)


class IDaDet(Recipe):
    """IDa-Det (ECCV 2022): discrepancy-aware proposal selection + entropy distillation."""

    name = "ida-det"
    paper = ("Xu et al., IDa-Det: An Information Discrepancy-aware Distillation for 1-bit Detectors, ECCV 2022, "
             "arXiv:2210.03477 (released code: SteveTsui/IDa-Det)")
    needs_teacher = True
    # §2.1: ReAct blocks with RSign in the backbone, ApproxSign in the neck and RPN; BiConv weights
    # with a real bias; binary 3x3 laterals; PReLU after every FPN conv and in the RPN.
    layout: ClassVar[dict[str, Any]] = {
        "form": "reactnet", "activation": "rsign", "weight": "biconv", "fpn_lateral_kernel": 3, "conv_bias": True,
        "neck_activation": "prelu",
        "rules": ({"match": "backbone.fpn.*", "activation": "approx_sign"}, {"match": "rpn.*", "activation": "approx_sign"}),
    }

    class Params(Params):
        score_threshold: float = 0.85  # §2.3: confident proposals only
        nms_threshold: float = 0.1  # §2.3: aggressive de-duplication
        gamma: float = 0.6  # §2.5: share of pairs kept per level
        temperature: float = 1.0  # §2.4: spatial softmax T
        mask_mode: Literal["repo", "box"] = "repo"  # §2.6: released code (bands) or the paper's boxes
        kd_weight: float = 0.5  # §2.8: hint_neck_w, times the mean over FPN levels
        task_weight: float = 5.0  # §2.1: every detection loss x5 in the student config
        sigma_init: float = 1.000001  # §2.7: the single learned sigma
        log_weight: float = 1e-3  # §2.7: weight of log(sigma^2)
        scale_c: float = 0.02  # §2.2: BiConv's c
        mu: float = 1e-4  # §2.2 / Eq. 6.89: reconstruction pull
        # BiConv's pieces, to take it apart (biconv.py; issue 16). Defaults: the repository's layer
        # started from the copied real conv.
        scale_init: Literal["xnor", "randn"] = "xnor"  # s = mean|W|/c (§2.1 [D]); randn: the layer's own init
        weight_grad: Literal["repo", "forward", "identity"] = "repo"  # |s| G; c|s| G (plain STE); G
        scale_grad: Literal["repo", "exact"] = "repo"  # sum G W ([Q]); the chain rule c sign(s) sum G sign(W)
        scale_mode: Literal["learned", "frozen", "mean_abs"] = "learned"  # s trained; fixed; XNOR's mean|W|
        box_loss: Literal["l1", "smooth_l1"] = "l1"  # §1.9: L1 regression in the student config
        prelu_init: float = 0.25  # slope of the added neck/RPN PReLUs (PyTorch's, the repository's init)
        frozen_stages: int = 0  # repository: 1 (stem + stage 1) with its ImageNet-pretrained BiRes18
        norm_eval: bool = False  # repository: True (backbone BN statistics frozen), same reason

    def binarize(self, student: Detector, spec: BinarizeSpec) -> list[str]:
        """The BiRes18-FPN student of §2.1 on a torchvision Faster R-CNN FPN (the layout above)."""
        model = student.model
        if not (hasattr(model, "rpn") and hasattr(model.backbone, "fpn") and student.resnet_body):
            raise ConfigError(f"ida-det needs a Faster R-CNN with a ResNet FPN; got {student.config.arch}")
        if spec.form != "reactnet":
            raise ConfigError("ida-det's student is fixed by the paper (§2.1): keep binarize.form reactnet "
                              "(binarize.weight may name another quantizer for ablations; biconv is the paper's)")
        p = self.params
        weight = ({"name": "biconv", "c": p.scale_c, "mu": p.mu, "init": p.scale_init, "weight_grad": p.weight_grad,
                   "scale_grad": p.scale_grad, "scale": p.scale_mode} if spec.weight == "biconv" else spec.weight)
        self._biconv = spec.weight == "biconv"
        swapped = apply_layout(student, dataclasses.replace(spec, weight=weight, activation_init=p.prelu_init))
        set_box_loss(student, 0.0 if self.params.box_loss == "l1" else 1.0 / 9.0)
        _freeze_stages(model.get_submodule(student.resnet_body), self.params.frozen_stages)
        return swapped

    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        was_training = student.model.training
        student.model.eval()
        with torch.no_grad():
            device = next(student.model.parameters()).device
            levels = len(student.model.backbone(torch.zeros(1, 3, 64, 64, device=device)))
        student.model.train(was_training)
        self.adapt = nn.ModuleList(adaptation_conv(student.config.fpn_channels, teacher.config.fpn_channels)
                                   for _ in range(levels)).to(device)
        self.sigma = nn.Parameter(torch.tensor(self.params.sigma_init, device=device))
        self._stats: dict[str, float] = {}

    def hooks(self) -> list[Hook]:
        return [_BackboneNormEval()] if self.params.norm_eval else []

    def on_phase(self, name: str, trainer: Any) -> None:
        """Warn when BiConv's mu pull meets an adaptive optimizer (issue 16).

        The paper's mu = 1e-4 is set for SGD, where the pull moves a weight by lr x mu (W - W_hat),
        ~5e-8 a step. Adam divides every step by the gradient's running RMS, so wherever the task
        gradient is small the pull takes lr-sized steps: on the widened 3x3 laterals it holds the
        off-centre taps (0 from the teacher's 1x1 kernel, +c|s| after sign(0) = +1) at +c|s|: on the
        synthetic benchmark the no-KD student ends at 0.512 +- 0.022 VOC07 mAP with it and 0.621 +-
        0.013 without (3 seeds; bench/diagnose_biconv.py and the README's "What to expect from ida-det").
        """
        if getattr(self, "_biconv", False) and self.params.mu > 0 and isinstance(trainer.optimizer, _ADAPTIVE):
            log.warning("ida-det: under %s BiConv's reconstruction pull (params.mu=%g, the paper's value for SGD) "
                        "takes lr-sized steps and holds the widened laterals' off-centre weights at +c|s| (issue 16); "
                        "set params.mu=0, as the CPU default file does", type(trainer.optimizer).__name__, self.params.mu)

    def tap_names(self, student: Detector) -> tuple[str, ...]:
        return _TAPS

    def task_weight(self) -> float:
        return self.params.task_weight

    @torch.no_grad()
    def teacher_features(self, images: list[Tensor], teacher: Detector, student_taps: dict[str, list[Any]]) -> None:
        """Teacher backbone+FPN, RPN head and anchors on the student's transformed batch (§2.9).

        Skipped with ``kd_weight == 0`` (the paper's "w/o KD" row): ``0 x L_l`` adds nothing to the
        student's gradient, so the teacher forward and the selection would only cost time.
        """
        if self.params.kd_weight == 0:
            return
        model = teacher.model
        image_list, _ = student_taps["transform"][0]
        maps = list(model.backbone(image_list.tensors).values())
        model.rpn.head(maps)
        model.rpn.anchor_generator(image_list, maps)

    def loss(self, step: Step) -> dict[str, Tensor]:
        if self.params.kd_weight == 0:  # w/o KD: no pairs, no selection, no terms (0 x L_l adds nothing)
            self._stats = {}
            return {}
        student_taps, teacher_taps = step.student_taps, step.teacher_taps
        image_list, _ = student_taps["transform"][0]
        student_maps = list(student_taps["backbone"][0].values())
        teacher_maps = [m.detach() for m in teacher_taps["backbone"][0].values()]
        pairs = self._pairs(step, image_list.image_sizes)
        losses, selected = {}, 0
        for level, (s_map, t_map, adapt) in enumerate(zip(student_maps, teacher_maps, self.adapt)):
            mask, kept = self._mask(t_map, s_map.detach(), pairs, image_list)
            selected += kept
            term = entropy_loss(t_map, adapt(s_map), mask, self.sigma, self.params.log_weight)
            losses[f"kd_p{level + 2}"] = self.params.kd_weight / len(student_maps) * term
        self._stats = {"pairs": float(sum(len(p) for p in pairs)), "selected": float(selected),
                       "sigma": float(self.sigma.detach())}
        return losses

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        return dict(self._stats)

    def _pairs(self, step: Step, image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        def proposals(detector: Detector, taps: dict[str, list[Any]]) -> tuple[list[Tensor], list[Tensor]]:
            objectness, deltas = taps["rpn.head"][0]
            return rpn_proposals(detector.model.rpn, objectness, deltas, taps["rpn.anchor_generator"][0], image_sizes)

        return proposal_pairs(proposals(step.teacher, step.teacher_taps), proposals(step.student, step.student_taps),
                              self.params.score_threshold, self.params.nms_threshold)

    @torch.no_grad()
    def _mask(self, teacher_map: Tensor, student_map: Tensor, pairs: list[Tensor], image_list: Any
              ) -> tuple[Tensor, int]:
        """``[B, H, W]`` mask of the top-gamma discrepant pairs of each image, and how many were kept."""
        height, width = teacher_map.shape[-2:]
        padded = tuple(image_list.tensors.shape[-2:])
        masks, kept = [], 0
        for b, boxes in enumerate(pairs):
            grid = spans(boxes, (height, width), image_list.image_sizes[b], padded, self.params.mask_mode)
            scores = [discrepancy(teacher_map[b, :, s.r1:s.r2, s.c1:s.c2], student_map[b, :, s.r1:s.r2, s.c1:s.c2],
                                  self.params.temperature) for s in grid]
            ties = "last" if self.params.mask_mode == "repo" else "first"  # the released sort in repo mode
            chosen = [grid[i] for i in select_top(scores, self.params.gamma, ties)]
            kept += len(chosen)
            masks.append(level_mask(chosen, height, width, self.params.mask_mode, teacher_map.device))
        return torch.stack(masks), kept


def _freeze_stages(body: nn.Module, stages: int) -> None:
    """The repository's ``frozen_stages``: stem (conv1, bn1) and the first ``stages`` stages."""
    if stages <= 0:
        return
    for name in ["conv1", "bn1"] + [f"layer{i}" for i in range(1, stages + 1)]:
        for p in body.get_submodule(name).parameters():
            p.requires_grad_(False)


class _BackboneNormEval(Hook):
    """``norm_eval``: keep the backbone's BatchNorm statistics frozen while training."""

    def before_step(self, trainer: Any) -> None:
        body = trainer.student.model.get_submodule(trainer.student.resnet_body)
        for module in body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


register_quantizer("biconv", BiConvWeight, needs_channels=True)
