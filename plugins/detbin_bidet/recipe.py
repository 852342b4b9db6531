"""The ``bidet`` recipe: BiDet's information-bottleneck regulariser and sparse object prior (methods.md §4).

BiDet (Wang, Wu, Lu, Zhou, CVPR 2020, arXiv:2003.03961; TPAMI extension with AutoBiDet), as the
released code optimizes it (§4.4). The student's architecture is core: the detector families
``bidetssd300_vgg16`` (BiDet (SC) / plain SSD300) and ``fasterrcnnc4_resnet18_bidet`` (Faster
R-CNN R18-C4), named in the recipe file's ``detector:`` section and initialised from a real
teacher (``ssd300_vgg16`` / ``fasterrcnnc4_resnet18``) by the family's documented table. This
plugin adds only the training method:

* SSD: ``w_reg (1/6) sum_k mean(F_k^2)`` over the six sources and ``w_prior`` times the class-wise
  entropy prior on post-NMS detections (p > 0.03, NMS 0.45, top 200);
* Faster R-CNN: ``w_rpn_reg mean(R^2)`` (RPN conv + BN output), ``w_head_reg mean(h^2)`` (RoI
  features), the RPN prior on post-NMS proposal probabilities (detached as released, or with
  gradient: ``rpn_prior_grad``) and the head prior on the sampled RoIs (p > 0.01, NMS 0.3).

Weights ([R], ``schedule: release``): 0 until the first LR decay (``step.lr_stage >=
switch_on_stage``), then SSD 0.1 / 0.2, Faster R-CNN 0.5 / 0.02 / 0.01 / 0.05. ``schedule: paper``
([P], Eq. 7): ``1/beta`` on every regulariser and ``gamma`` on every prior from the first step.
Every term is logged unweighted (``raw_*``) and weighted; :meth:`BiDet.reg_terms` /
:meth:`BiDet.prior_terms` give AutoBiDet the per-image values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torchvision.ops.misc import FrozenBatchNorm2d

from detbin import (
    BinarizeSpec,
    ConfigError,
    Detector,
    Hook,
    LocationSampler,
    Params,
    Recipe,
    Step,
    is_binary,
)
from detbin_bidet.batch_terms import frcnn_head_prior, ssd_prior, ssd_task_per_image
from detbin_bidet.ib import (
    feature_regularizer,
    feature_regularizer_per_image,
    roi_feature_regularizer,
    rpn_prior,
)

__all__ = ["BiDet", "BiDetParams", "Terms", "family_of", "term_weights"]

SSD_TAPS = ("transform", "backbone", "head", "anchor_generator")
FRCNN_TAPS = ("transform", "rpn.head.bn", "rpn.proposal_scores", "roi_heads.sampled_proposals",
              "roi_heads.box_head", "roi_heads.box_predictor")
STUDENTS = {"bidetssd300": "ssd", "fasterrcnnc4": "frcnn"}
_TEACHERS = "bidetssd300_vgg16 (teacher ssd300_vgg16) or fasterrcnnc4_resnet18_bidet (teacher fasterrcnnc4_resnet18)"


class BiDetParams(Params):
    """The recipe's YAML ``params:`` (defaults: the release, methods.md §4.4)."""

    schedule: Literal["release", "paper"] = "release"
    switch_on_stage: int = 1  # release: the terms switch on at the first LR decay
    ssd_reg_weight: float = 0.1
    ssd_prior_weight: float = 0.2
    rpn_reg_weight: float = 0.5
    head_reg_weight: float = 0.02
    rpn_prior_weight: float = 0.01
    head_prior_weight: float = 0.05
    beta: float = 10.0  # paper schedule: 1/beta on the regularisers
    gamma: float = 0.2  # paper schedule: gamma on the priors
    sample_sigma: float | None = None  # None: the architecture's (SSD 0, Faster R-CNN 0.001)
    sample_seed: int = 0
    prior_mode: Literal["csop", "csop_no_n", "sop"] = "csop"
    prior_reduction: Literal["pairs", "images"] = "pairs"
    prior_classes: Literal["gt", "all"] = "gt"
    ssd_score_thresh: float = 0.03
    ssd_nms_thresh: float = 0.45
    ssd_top_k: int = 200
    head_score_thresh: float = 0.01
    head_nms_thresh: float = 0.3
    rpn_prior_grad: bool = False  # True: the paper's RPN prior with gradient; False: as released
    freeze_stem: bool = True  # Faster R-CNN: the release's fix_real_conv


def term_weights(p: BiDetParams, family: str, lr_stage: int) -> dict[str, float]:
    """Weight of each term at ``lr_stage`` (LR milestones passed) for ``ssd`` or ``frcnn``."""
    if p.schedule == "paper":
        reg, prior = 1.0 / p.beta, p.gamma
        return {"reg": reg, "prior": prior} if family == "ssd" else \
            {"rpn_reg": reg, "head_reg": reg, "rpn_prior": prior, "head_prior": prior}
    on = float(lr_stage >= p.switch_on_stage)
    if family == "ssd":
        return {"reg": p.ssd_reg_weight * on, "prior": p.ssd_prior_weight * on}
    return {"rpn_reg": p.rpn_reg_weight * on, "head_reg": p.head_reg_weight * on,
            "rpn_prior": p.rpn_prior_weight * on, "head_prior": p.head_prior_weight * on}


@dataclass(frozen=True)
class Terms:
    """Unweighted batch values (with grad) and per-image values ``[B]`` of every term."""

    batch: dict[str, Tensor]
    per_image: dict[str, Tensor]


class ReseedSampling(Hook):
    """Before each step, seed every location sampler from ``(sample_seed, iteration)`` (exact resume)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_step(self, trainer: Any) -> None:
        for module in trainer.student.model.modules():
            if isinstance(module, LocationSampler):
                module.reseed(self.seed, trainer.iteration)


def family_of(detector: Detector) -> str:
    """``ssd`` or ``frcnn`` for BiDet's student architectures.

    Raises:
        ConfigError: any other architecture (a real teacher's included), with the fix.
    """
    arch = detector.config.arch
    family = STUDENTS.get(detector.config.family)
    if family is None or arch == "fasterrcnnc4_resnet18":
        raise ConfigError(f"bidet trains BiDet's own students, not {arch}: set detector.arch to {_TEACHERS} in the "
                          "recipe file (the student starts from the teacher's weights by the family's table)")
    return family


def freeze_stem(model: Any) -> None:
    """The release's ``fix_real_conv``: stem conv frozen, its BN a ``FrozenBatchNorm2d`` (eval statistics)."""
    body = model.backbone.body
    body.conv1.requires_grad_(False)
    bn = body.bn1
    if isinstance(bn, FrozenBatchNorm2d):
        return
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, key).copy_(getattr(bn, key).detach())
    body.bn1 = frozen.to(bn.weight.device)


class BiDet(Recipe):
    """BiDet: IB feature regulariser + class-wise sparse object prior (methods.md §4.4)."""

    name = "bidet"
    paper = ("Wang, Wu, Lu, Zhou, BiDet: An Efficient Binarized Object Detector, CVPR 2020, arXiv:2003.03961 "
             "(released code: ZiweiWangTHU/BiDet)")
    Params: ClassVar[type[Params]] = BiDetParams
    needs_teacher = False  # a teacher initialises the student; without one it starts from the release's init
    # Recorded with the student; the architecture itself is the family's (§4.3: ApproxSign, non-detached
    # mean|W| scale, identity STE, -1 padding), so binarize: keys cannot change it.
    layout: ClassVar[dict[str, Any]] = {"form": "bireal", "activation": "approx_sign", "pad_value": -1.0,
                                        "weight": {"name": "scaled_sign", "detach_scale": False, "ste": "identity"}}

    def binarize(self, student: Detector, spec: BinarizeSpec) -> list[str]:
        """Check the student is a BiDet architecture and set the method's knobs on it; returns its binary convs.

        The architecture is built by its family (eval/profile/export rebuild it from the checkpoint's
        config); here only the location-sampling scale, the RPN prior's gradient mode and the frozen stem.
        """
        family = family_of(student)
        expected = BinarizeSpec.from_dict({**BinarizeSpec().to_dict(), **self.layout})
        if spec != expected:
            raise ConfigError("bidet's binarization is its architecture's (the detector family's): remove the "
                              "binarize: section from the recipe file")
        model, p = student.model, self.params
        if p.sample_sigma is not None:
            for module in model.modules():
                if isinstance(module, LocationSampler):
                    module.sample_sigma = float(p.sample_sigma)
        if family == "frcnn":
            model.rpn.prior_grad = p.rpn_prior_grad
            if p.freeze_stem:
                freeze_stem(model)
        return [name for name, module in model.named_modules() if is_binary(module)]

    def hooks(self) -> list[Hook]:
        return [ReseedSampling(self.params.sample_seed)]

    def tap_names(self, student: Detector) -> tuple[str, ...]:
        return SSD_TAPS if family_of(student) == "ssd" else FRCNN_TAPS

    @torch.no_grad()
    def teacher_features(self, images: list[Tensor], teacher: Detector, student_taps: dict[str, list[Any]]) -> None:
        """BiDet reads no teacher feature: the teacher only initialises the student, so it never runs."""

    def terms(self, step: Step) -> Terms:
        """Every term of the batch, unweighted (SSD: reg, prior; FRCNN: rpn/head reg and prior)."""
        model, taps, p = step.student.model, step.student_taps, self.params
        if family_of(step.student) == "ssd":
            sources = list(taps["backbone"][0].values())
            prior = ssd_prior(taps["head"][0], taps["anchor_generator"][0], step.targets, model.box_coder,
                              p.prior_mode, p.ssd_score_thresh, p.ssd_nms_thresh, p.ssd_top_k, p.prior_classes)
            return Terms({"reg": feature_regularizer(sources), "prior": prior.batch(p.prior_reduction)},
                         {"reg": feature_regularizer_per_image(sources), "prior": prior.per_image})
        rpn_map = taps["rpn.head.bn"][0]
        proposals = taps["roi_heads.sampled_proposals"][0]
        head_reg, head_reg_image = roi_feature_regularizer(taps["roi_heads.box_head"][0], [len(r) for r in proposals])
        rpn_terms = rpn_prior(taps["rpn.proposal_scores"][0], [len(t["labels"]) for t in step.targets])
        logits, deltas = taps["roi_heads.box_predictor"][0]
        head = frcnn_head_prior(logits, deltas, proposals, taps["transform"][0][0].image_sizes, step.targets,
                                model.roi_heads.box_coder, p.prior_mode, p.head_score_thresh, p.head_nms_thresh,
                                classes=p.prior_classes)
        batch = {"rpn_reg": feature_regularizer([rpn_map]), "head_reg": head_reg,
                 "rpn_prior": rpn_terms.batch("images"), "head_prior": head.batch(p.prior_reduction)}
        per_image = {"rpn_reg": feature_regularizer_per_image([rpn_map]), "head_reg": head_reg_image,
                     "rpn_prior": rpn_terms.per_image, "head_prior": head.per_image}
        return Terms(batch, per_image)

    def loss(self, step: Step) -> dict[str, Tensor]:
        terms = self.terms(step)
        weights = term_weights(self.params, family_of(step.student), step.lr_stage)
        self._logged = {f"{self.name}/raw_{k}": float(v.detach()) for k, v in terms.batch.items()}
        self._logged.update({f"{self.name}/w_{k}": w for k, w in weights.items()})
        return {k: weights[k] * v for k, v in terms.batch.items()}

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        return dict(getattr(self, "_logged", {}))

    # -- what AutoBiDet builds on ------------------------------------------------------------------
    def full_weights(self, family: str) -> dict[str, float]:
        """The weights after the warm-up (the release's, or the paper's constants)."""
        return term_weights(self.params, family, self.params.switch_on_stage)

    def reg_terms(self, step: Step, terms: Terms | None = None) -> dict[str, tuple[Tensor, float]]:
        """Per-image compression terms ``{name: ([B] values with grad, weight after the warm-up)}``."""
        terms = terms or self.terms(step)
        weights = self.full_weights(family_of(step.student))
        return {k: (v, weights[k]) for k, v in terms.per_image.items() if k.endswith("reg")}

    def prior_terms(self, step: Step, terms: Terms | None = None) -> dict[str, tuple[Tensor, float]]:
        """Prior terms ``{name: (batch value with grad, weight after the warm-up)}``."""
        terms = terms or self.terms(step)
        weights = self.full_weights(family_of(step.student))
        return {k: (v, weights[k]) for k, v in terms.batch.items() if k.endswith("prior")}

    def task_per_image(self, step: Step) -> Tensor:
        """``[B]`` per-image contributions (with grad) summing to the batch detection loss (SSD only).

        Raises:
            ConfigError: Faster R-CNN (its sampled RPN/RoI losses have no per-image split here).
        """
        if family_of(step.student) != "ssd":
            raise ConfigError("per-image detection losses exist for the SSD student only; use "
                              "params.weighting: inverse_reg with Faster R-CNN")
        _, targets = step.student_taps["transform"][0]
        return ssd_task_per_image(step.student.model, step.student_taps["head"][0],
                                  step.student_taps["anchor_generator"][0], targets)

    def high_level_feature(self, student: Detector) -> str:
        """The module whose output is f (AutoBiDet §5.4 [D]): SSD fc7 (conv7 + BN + ReLU), the C4 base."""
        return "backbone.vgg.layers.24" if family_of(student) == "ssd" else "backbone"
