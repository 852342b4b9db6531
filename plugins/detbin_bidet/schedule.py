"""AutoBiDet's alternating optimisation (methods.md §5.5) as phases, a GAN micro-step cycle and a stop rule.

    warm-up: the detector trains as BiDet, IB/C-SOP weights 0 until the first LR decay
    round r: (a) "gan<r>": detector frozen, G/D trained on detached features until the G loss converges
             (b) "detector<r>": G/D frozen, detector trained with beta(x) until the next round starts

[D] one round per LR stage after the warm-up (round starts = the LR milestones, optionally plus
extra starts, e.g. epoch 20 of the VOC schedule). Detector iterations of all phases sum to the run's
``max_iterations``; GAN phases add trainer calls but no detector iterations.

Stop rule of a GAN phase (§5.4 [D]): the ``window``-step moving average of the G loss changes by
less than ``tolerance`` (relative) over ``span`` G steps, or ``cap`` G steps have run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from detbin import ConfigError, Phase

__all__ = ["ConvergenceMonitor", "GanAction", "calls_per_g_step", "gan_action", "plan_phases", "round_of"]


def plan_phases(max_iterations: int, milestones: Sequence[int], *, extra_round_starts: Sequence[int] = (),
                gan_iterations: int | None = None) -> list[Phase]:
    """The ordered phases of a run (contract v2 ``Recipe.phases``).

    Args:
        max_iterations: detector iterations of the whole run.
        milestones: LR milestones in detector iterations, increasing; each starts a round ([D] §5.5).
        extra_round_starts: further round starts in detector iterations (e.g. VOC epoch 20).
        gan_iterations: ``None``: GAN phases run until :class:`ConvergenceMonitor` stops them;
            an int fixes each GAN phase to that many trainer calls (ablations, benchmarks of equal cost).

    Returns:
        ``[Phase("warmup", n0), Phase("gan1", None, student=False), Phase("detector1", n1), ...]``;
        a zero-length warm-up (a round starting at 0) is omitted.
    """
    if list(milestones) != sorted(set(milestones)):
        raise ConfigError(f"train.schedule.milestones must increase strictly, got {list(milestones)}")
    starts = sorted(set(milestones) | set(extra_round_starts))
    if not starts:
        raise ConfigError("autobidet needs an LR milestone (or params.extra_round_starts): its warm-up ends at the "
                          "first one and every one starts a GAN round (methods.md §5.5)")
    if starts[0] < 0 or starts[-1] >= max_iterations:
        raise ConfigError(f"round starts {starts} must lie in [0, {max_iterations}) detector iterations")
    if gan_iterations is not None and gan_iterations < 1:
        raise ConfigError(f"params.gan_iterations must be >= 1 or null, got {gan_iterations}")
    phases = [Phase("warmup", starts[0])] if starts[0] > 0 else []
    for r, (start, end) in enumerate(zip(starts, [*starts[1:], max_iterations]), start=1):
        phases.append(Phase(f"gan{r}", gan_iterations, student=False))
        phases.append(Phase(f"detector{r}", end - start))
    return phases


def round_of(phase: str) -> tuple[Literal["warmup", "gan", "detector"], int]:
    """``"gan2" -> ("gan", 2)``, ``"warmup" -> ("warmup", 0)``."""
    for kind in ("gan", "detector"):
        if phase.startswith(kind) and phase[len(kind):].isdigit():
            return kind, int(phase[len(kind):])  # type: ignore[return-value]
    if phase == "warmup":
        return "warmup", 0
    raise ConfigError(f"unknown autobidet phase {phase!r} (expected warmup, gan<r> or detector<r>)")


@dataclass(frozen=True)
class GanAction:
    """What one GAN trainer call does: accumulate a micro-batch into ``net``; ``step``: then update it."""

    net: Literal["D", "G"]
    step: bool


def calls_per_g_step(d_steps: int, accumulate: int) -> int:
    """Trainer calls (micro-batches) per G step: ``accumulate * (d_steps + 1)``."""
    return accumulate * (d_steps + 1)


def gan_action(call: int, d_steps: int = 2, accumulate: int = 1) -> GanAction:
    """The action of GAN call ``call`` (0-based): ``d_steps`` D updates, then one G update (§5.4: 2 D per G).

    Each update accumulates ``accumulate`` micro-batches (the [D] GAN batch of 64 as 2 x 32), so one
    cycle is ``accumulate * (d_steps + 1)`` calls; every call sees one fresh batch, which keeps the data
    order and a mid-phase resume exactly the trainer's.
    """
    if d_steps < 1 or accumulate < 1:
        raise ConfigError(f"params.d_steps and params.gan_accumulate must be >= 1, got {d_steps}, {accumulate}")
    position = call % calls_per_g_step(d_steps, accumulate)
    net: Literal["D", "G"] = "D" if position < d_steps * accumulate else "G"
    return GanAction(net, (position + 1) % accumulate == 0)


class ConvergenceMonitor:
    """Stop rule of a GAN phase: the G loss's moving average has flattened, or the cap is reached (§5.4 [D]).

    After G step ``t`` (1-based) with moving average ``MA_t`` = mean of the last ``window`` losses, the phase
    stops when ``t >= window + span`` and ``|MA_t - MA_{t-span}| < tolerance * |MA_{t-span}|``, or when
    ``t >= cap``. Spec values: window 1000, span 2000, tolerance 0.01, cap 20000.
    """

    def __init__(self, window: int = 1000, span: int = 2000, tolerance: float = 0.01, cap: int = 20000) -> None:
        if window < 1 or span < 1 or cap < 1 or tolerance <= 0:
            raise ConfigError(f"GAN stop rule: window, span, cap must be >= 1 and tolerance > 0, got "
                              f"{window}, {span}, {cap}, {tolerance}")
        self.window, self.span, self.tolerance, self.cap = window, span, tolerance, cap
        self.reset()

    def reset(self, cap: int | None = None) -> None:
        """Start a new phase (optionally with another cap: later rounds are warm-started)."""
        if cap is not None:
            self.cap = cap
        self.steps = 0
        self.history: list[float] = []  # the last window + span losses
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.reason is not None

    def moving_average(self, lag: int = 0) -> float:
        """``MA_{t - lag}``; needs ``window + lag`` losses."""
        end = len(self.history) - lag
        values = self.history[end - self.window: end]
        return sum(values) / self.window

    def update(self, loss: float) -> bool:
        """Record the loss of one G step; True once the phase should stop (then stays True)."""
        if self.done:
            return True
        self.steps += 1
        self.history.append(float(loss))
        del self.history[: -(self.window + self.span)]
        if len(self.history) == self.window + self.span:
            now, before = self.moving_average(), self.moving_average(self.span)
            if abs(now - before) < self.tolerance * abs(before):
                self.reason = "converged"
        if self.reason is None and self.steps >= self.cap:
            self.reason = "cap"
        return self.done

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (``torch.load(weights_only=True)`` reads them)."""
        return {"window": self.window, "span": self.span, "tolerance": self.tolerance, "cap": self.cap,
                "steps": self.steps, "history": list(self.history), "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window, self.span = state["window"], state["span"]
        self.tolerance, self.cap = state["tolerance"], state["cap"]
        self.steps, self.history, self.reason = state["steps"], list(state["history"]), state["reason"]
