"""Small recipes that use each point of the recipe contract (installed by the tests as a throwaway distribution).

* ``taps-inputs``: records a conv's input and its predecessor's output on student and teacher;
* ``owned-adam``: a recipe-owned critic trained by its own Adam after every student step;
* ``two-phase``: ``warm`` (the student), ``critic`` (the student frozen, the owned critic trains in
  ``phase_step``), then ``train``;
* ``late-term``: a loss term that is 0 until the first LR milestone;
* ``sometimes-unused``: a student parameter used by the forward on even steps only (DDP).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detbin import Params, Phase, Recipe, Step

CONV = "backbone.body.layer1.0.conv1"
BEFORE = "backbone.body.maxpool"


def _pooled(step: Step) -> Tensor:
    """The student's finest FPN map, pooled to ``[B, C]``, detached: the critic's input."""
    maps = step.student_taps["backbone"][0]
    return next(iter(maps.values())).detach().mean(dim=(2, 3))


class TapsInputs(Recipe):
    name = "taps-inputs"
    needs_teacher = True

    def tap_names(self, student):
        return [BEFORE]

    def input_tap_names(self, student):
        return [CONV]

    def loss(self, step: Step) -> dict[str, Tensor]:
        self.seen = {"student": (step.student_taps[BEFORE][0], step.student_inputs[CONV][0]),
                     "teacher": (step.teacher_taps[BEFORE][0], step.teacher_inputs[CONV][0])}
        return {}


class _Critic(Recipe):
    """Owns a linear critic with its own Adam (never in the student's optimizer)."""

    class Params(Params):
        lr: float = 1e-2

    def tap_names(self, student):
        return ["backbone"]

    def prepare(self, student, teacher) -> None:
        channels = student.config.fpn_channels
        self.critic = nn.Linear(channels, 1)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.params.lr)

    def owned_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer}

    def _train_critic(self, step: Step) -> dict[str, float]:
        # a target the critic can learn: the mean activation of the map
        features = _pooled(step)
        loss = (self.critic(features).squeeze(1) - features.mean(dim=1)).pow(2).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step.sync(self.critic.parameters())
        self.critic_optimizer.step()
        return {"critic": float(loss.detach())}


class OwnedAdam(_Critic):
    name = "owned-adam"

    def after_optimizer_step(self, step: Step) -> dict[str, float]:
        return self._train_critic(step)


class TwoPhase(_Critic):
    name = "two-phase"

    def phases(self, plan):
        return [Phase("warm", 3), Phase("critic", 4, student=False), Phase("train")]

    def on_phase(self, name, trainer) -> None:
        self.entered = [*getattr(self, "entered", []), name]

    def phase_step(self, step: Step) -> dict[str, float]:
        with torch.no_grad():
            was_training = step.student.model.training
            step.student.model.eval()
            from detbin import record

            with record(step.student.model, ["backbone"]) as taps:
                step.student.features(step.images)
            step.student.model.train(was_training)
        critic_step = Step(step.images, step.targets, {}, taps, {}, step.iteration, step.max_iterations,
                           step.student, step.teacher, sync=step.sync)
        return self._train_critic(critic_step)


class LateTerm(Recipe):
    name = "late-term"

    def loss(self, step: Step) -> dict[str, Tensor]:
        weight = 0.0 if step.lr_stage == 0 else 1.0  # BiDet's terms switch on at the first decay
        return {"late": weight * sum(step.task_losses.values()), "stage": torch.tensor(float(step.lr_stage))}


class SometimesUnused(Recipe):
    """Adds a 1-channel gate to the student's FPN output that only even steps use."""

    name = "sometimes-unused"

    def binarize(self, student, spec):
        swapped = super().binarize(student, spec)
        fpn = student.model.backbone.fpn
        fpn.gate = nn.Parameter(torch.ones(()))
        fpn.calls = 0

        def gate(module, inputs, outputs):
            module.calls += 1
            if module.calls % 2 == 0:  # eval passes count too; what matters is an unused step
                return {k: v * module.gate for k, v in outputs.items()}
            return outputs

        fpn.register_forward_hook(gate)
        return swapped
