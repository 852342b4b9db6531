"""The ``autobidet`` recipe: BiDet with a per-image IB trade-off from a GAN complexity estimator (methods.md §5).

AutoBiDet (Wang, Lu, Wu, Zhou, TPAMI 2021, the journal extension of BiDet): ``beta(x) =
sg(T(D(G(sg(f(x))))))`` weights each image's compression terms (§5.2-5.3) and the prior is the
class-aware C-SOP (Eq. 11, BiDet's ``prior_mode: csop``). The run (§5.5 [D]): warm-up as BiDet (its
IB/prior weights 0 until the first LR decay), then one round per LR stage of (a) ``gan<r>``: detector
frozen (eval mode, no grad), G/D trained on its detached features until the G loss converges, and (b)
``detector<r>``: G/D frozen (eval mode), the detector trained with beta(x). G and D are recipe-owned:
their Adams are :meth:`AutoBiDet.owned_optimizers` (saved in ``last.pt``, restored on ``--resume``), their
weights live in the recipe's state (``last.pt`` only, never in a student file or an export).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from detbin import ConfigError, Detector, Params, Phase, Plan, Step
from detbin_bidet.ces import (
    Discriminator,
    Generator,
    output_size,
    real_images,
    up_blocks,
)
from detbin_bidet.features import extract, feature_map, probe
from detbin_bidet.gan import ComplexityEstimator
from detbin_bidet.recipe import BiDet, BiDetParams, family_of, term_weights
from detbin_bidet.schedule import ConvergenceMonitor, plan_phases, round_of
from detbin_bidet.tradeoff import WeightedTerm, make_transform, tradeoff_terms

__all__ = ["OUTPUT_SCALE", "AutoBiDet", "AutoBiDetParams"]

OUTPUT_SCALE = {"ssd": 0.5, "frcnn": 0.25}  # §5.4 [P]: reconstructions at 1/2 (SSD300) and 1/4 (Faster R-CNN)


class AutoBiDetParams(BiDetParams):
    """BiDet's keys (§4.4; ``prior_mode: csop`` is C-SOP) and AutoBiDet's (§5.2-5.5, the spec's defaults)."""

    # §5.2 transform T of Eq. 10; delta/theta None: sine (10, 5) [P]; linear (10, 5), exp (10, ln 1.5) [D]
    transform: Literal["sine", "linear", "exp"] = "sine"
    delta: float | None = Field(default=None, gt=0)
    theta: float | None = None
    # §5.3: [D] 1/beta(x) on each image's compression terms, or the literal beta(x) L_det(x) (ablation; SSD)
    weighting: Literal["inverse_reg", "literal"] = "inverse_reg"
    literal_prior_scale: float | None = Field(default=None, ge=0)  # gamma'/gamma; None: T(0)
    # §5.4 complexity estimator
    feature: str | None = None  # module whose output is f; None: fc7 (SSD) / the C4 base
    output_scale: float | None = Field(default=None, gt=0, le=1)  # None: 1/2 (SSD), 1/4 (Faster R-CNN)
    g_channels: int = Field(default=256, ge=1)  # ch; the input conv maps to 4 ch
    g_spectral_norm: bool = False
    d_channels: int = Field(default=64, ge=1)
    d_blocks: int = Field(default=5, ge=1)
    d_lr: float = Field(default=2e-4, gt=0)
    g_lr: float = Field(default=5e-5, gt=0)
    adam_betas: tuple[float, float] = (0.0, 0.999)
    d_steps: int = Field(default=2, ge=1)  # D updates per G update
    gan_accumulate: int = Field(default=1, ge=1)  # micro-batches per G/D update (GAN batch = this x train batch)
    # §5.4 [D] stop rule of each GAN phase, in G steps
    ma_window: int = Field(default=1000, ge=1)
    ma_span: int = Field(default=2000, ge=1)
    ma_tolerance: float = Field(default=0.01, gt=0)
    gan_cap: int = Field(default=20000, ge=1)
    gan_cap_later: int | None = Field(default=None, ge=1)  # warm-started rounds; None: gan_cap
    gan_iterations: int | None = Field(default=None, ge=1)  # fixed trainer calls per GAN phase instead
    # §5.5 [D] rounds start at the LR milestones, plus these (epochs, as train.schedule.milestones)
    extra_round_starts: list[float] = []


class AutoBiDet(BiDet):
    """AutoBiDet: BiDet with a GAN-estimated per-image IB trade-off and C-SOP (methods.md §5)."""

    name = "autobidet"
    paper = ("Wang, Lu, Wu, Zhou, Learning Efficient Binarized Object Detectors with Information Compression, "
             "IEEE TPAMI 2021 (AutoBiDet; extends BiDet, CVPR 2020); no public AutoBiDet code")
    Params: ClassVar[type[Params]] = AutoBiDetParams

    # -- build -------------------------------------------------------------------------------------
    def prepare(self, student: Detector, teacher: Detector | None) -> None:
        """G and D sized from the student's f (§5.4), on the student's device."""
        p, family = self.params, family_of(student)
        if p.weighting == "literal" and family != "ssd":
            raise ConfigError("params.weighting: literal needs per-image detection losses, which exist for the SSD "
                              "student only; use weighting: inverse_reg with Faster R-CNN")
        self._feature = p.feature or self.high_level_feature(student)
        self._scale = p.output_scale or OUTPUT_SCALE[family]
        channels, stride = probe(student.model, self._feature, student.config.input_size)
        monitor = ConvergenceMonitor(p.ma_window, p.ma_span, p.ma_tolerance, p.gan_cap)
        device = next(student.model.parameters()).device
        self.ces = ComplexityEstimator(
            Generator(channels, up_blocks(stride, self._scale), p.g_channels, p.g_spectral_norm),
            Discriminator(p.d_channels, p.d_blocks), make_transform(p.transform, p.delta, p.theta),
            d_lr=p.d_lr, g_lr=p.g_lr, betas=p.adam_betas, d_steps=p.d_steps, accumulate=p.gan_accumulate,
            monitor=monitor).to(device)
        self._stats: dict[str, float] = {}

    def owned_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """G's and D's Adams (§5.4): out of the student's optimizer, saved and resumed with the run."""
        if not hasattr(self, "ces"):  # before prepare() (a student rebuilt for eval): nothing owned
            return {}
        return {"ces_d": self.ces.opt_d, "ces_g": self.ces.opt_g}

    def tap_names(self, student: Detector) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*super().tap_names(student), self._feature, "transform"]))

    # -- phases ------------------------------------------------------------------------------------
    def phases(self, plan: Plan) -> list[Phase]:
        """§5.5: warm-up until the first round; a GAN and a detector phase per round (starts: the LR milestones)."""
        extra = [round(s * plan.iters_per_epoch) for s in self.params.extra_round_starts]
        return plan_phases(plan.max_iterations, list(plan.milestones), extra_round_starts=extra,
                           gan_iterations=self.params.gan_iterations)

    def on_phase(self, name: str, trainer: Any) -> None:
        kind, index = round_of(name)
        if kind == "gan":
            cap = self.params.gan_cap if index == 1 else (self.params.gan_cap_later or self.params.gan_cap)
            self.ces.begin_round(index, cap)  # a no-op for the round in progress (resume)
        self.ces.train(kind == "gan")

    def phase_done(self, name: str, trainer: Any) -> bool:
        """A GAN phase of open length ends when its stop rule fires (§5.4 [D])."""
        return round_of(name)[0] == "gan" and self.params.gan_iterations is None and self.ces.monitor.done

    @torch.no_grad()
    def phase_step(self, step: Step) -> dict[str, float]:
        """One GAN call: f and the input of the frozen detector (eval mode), then a D or G micro-step."""
        f, batch, mean, std = extract(step.student.model, step.images, self._feature)
        reals = real_images(batch, mean, std, output_size((batch.shape[-2], batch.shape[-1]), self._scale))
        with torch.enable_grad():
            logs = self.ces.gan_step(f, reals, sync=step.sync)
        return {**logs, "round": float(self.ces.round), "g_steps": float(self.ces.monitor.steps)}

    # -- detector phases -----------------------------------------------------------------------------
    def loss(self, step: Step) -> dict[str, Tensor]:
        """Warm-up: BiDet's loss (weights 0 before the first decay). Rounds: §5.3 per image, beta(x) detached."""
        kind, _ = round_of(step.phase)
        if kind == "warmup":
            self._stats = {}
            return super().loss(step)
        if kind != "detector":
            raise ConfigError(f"autobidet: loss() called in phase {step.phase!r}")
        beta, d = self.beta_of(step)
        terms = self.terms(step)
        reg = {k: WeightedTerm(v, w) for k, (v, w) in self.reg_terms(step, terms).items()}
        literal = self.params.weighting == "literal"
        out = tradeoff_terms(beta, reg, self.prior_terms(step, terms), reference=self.ces.transform.reference,
                             mode=self.params.weighting, det_per_image=self.task_per_image(step) if literal else None,
                             literal_prior_scale=self.params.literal_prior_scale)
        weights = term_weights(self.params, family_of(step.student), step.lr_stage)
        self._logged = {f"{self.name}/raw_{k}": float(v.detach()) for k, v in terms.batch.items()}
        self._logged.update({f"{self.name}/w_{k}": w for k, w in weights.items()})
        self._stats = {f"{self.name}/beta_min": beta.min().item(), f"{self.name}/beta_mean": beta.mean().item(),
                       f"{self.name}/beta_max": beta.max().item(), f"{self.name}/d_mean": d.mean().item()}
        return out

    def beta_of(self, step: Step) -> tuple[Tensor, Tensor]:
        """``(beta(x), D(G(f(x))))`` of the batch, ``[B]`` each, detached, from the recorded f (§5.3)."""
        f = feature_map(step.student_taps[self._feature][0], self._feature)
        tensors = step.student_taps["transform"][0][0].tensors
        return self.ces.beta(f, output_size((tensors.shape[-2], tensors.shape[-1]), self._scale))

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        return {**super().after_optimizer_step(step), **self._stats}
