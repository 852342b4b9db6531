"""Training and querying the complexity estimator: GAN losses, the G/D updates and beta(x).

Losses (methods.md §5.4, paper Eq. 9, non-saturating), written with logits ``l`` of ``D = sigmoid(l)``:

    L_D = -log D(x) - log(1 - D(G(f))) = softplus(-l_real) + softplus(l_fake)
    L_G = -log D(G(f))                 = softplus(-l_fake)

(``softplus`` is stable for any logit; ``log(sigmoid(.))`` underflows). Optimisers: Adam, constant lr
2e-4 (D) and 5e-5 (G), betas (0, 0.999) (§5.4 [P/I]); 2 D steps per G step.

Gradient isolation (§5.3 "stop-gradient is essential"): the estimator only ever sees
``features.detach()``, so neither GAN loss reaches the detector; beta(x) is computed under
``no_grad`` in eval mode, so the detector loss reaches neither G nor D and no G/D state
(BatchNorm statistics, spectral-norm vectors) changes during detector phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detbin_bidet.ces import Discriminator, Generator
from detbin_bidet.schedule import ConvergenceMonitor, gan_action
from detbin_bidet.tradeoff import Transform

__all__ = ["ComplexityEstimator", "discriminator_loss", "generator_loss"]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``mean(-log D(x)) + mean(-log(1 - D(G(f))))`` from logits ``[B]``."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating ``mean(-log D(G(f)))`` from logits ``[B]``."""
    return F.softplus(-fake_logits).mean()


class ComplexityEstimator(nn.Module):
    """G, D, their optimisers and the GAN-phase state: the recipe-owned half of AutoBiDet.

    Args:
        generator, discriminator: see :mod:`detbin_bidet.ces`.
        transform: Eq. 10's ``T``.
        d_lr, g_lr, betas: Adam settings.
        d_steps: D updates per G update; ``accumulate``: micro-batches per update.
        monitor: the GAN phase's stop rule.

    State (``state_dict``): G/D weights and buffers, plus the call counter, the partial G loss and the
    gradients of an accumulating update, and the monitor (extra state: plain values and tensors). The
    optimisers' states are saved by the trainer through ``Recipe.owned_optimizers``. Not part of any
    student checkpoint: the estimator lives in the recipe, never in the student.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator, transform: Transform, *,
                 d_lr: float = 2e-4, g_lr: float = 5e-5, betas: tuple[float, float] = (0.0, 0.999),
                 d_steps: int = 2, accumulate: int = 1, monitor: ConvergenceMonitor | None = None) -> None:
        super().__init__()
        self.generator, self.discriminator, self.transform = generator, discriminator, transform
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=d_lr, betas=betas)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=g_lr, betas=betas)
        self.d_steps, self.accumulate = d_steps, accumulate
        self.monitor = monitor if monitor is not None else ConvergenceMonitor()
        self.calls, self._g_partial, self.round = 0, 0.0, 0

    def begin_round(self, round_index: int, cap: int | None = None) -> None:
        """Start GAN round ``round_index`` unless it is the one in progress (``on_phase`` also runs after resume).

        G/D and Adam states carry over (later rounds are warm-started, §5.5); the monitor restarts.
        """
        if round_index == self.round:
            return
        self.round, self.calls, self._g_partial = round_index, 0, 0.0
        self.monitor.reset(cap)
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)

    def gan_step(self, features: Tensor, reals: Tensor,
                 sync: Callable[[Sequence[nn.Parameter]], None] | None = None) -> dict[str, float]:
        """One GAN trainer call on one batch: a D or G micro-batch (:func:`gan_action`).

        Args:
            features: ``[B, C_f, h, w]`` the detector's high-level map (detached here).
            reals: ``[B, 3, H, W]`` in [-1, 1] (:func:`detbin_bidet.ces.real_images`).
            sync: ``Step.sync`` (all-reduces the given parameters' gradients under DDP) before each update.

        Returns:
            log values: ``d_loss`` or ``g_loss`` (this micro-batch), ``d_real``/``d_fake`` (mean D
            probabilities), ``g_ma`` (moving average once defined) and ``converged`` (0/1).
        """
        self.train()
        action = gan_action(self.calls, self.d_steps, self.accumulate)
        features, size = features.detach(), (reals.shape[-2], reals.shape[-1])
        logs: dict[str, float] = {}
        if action.net == "D":
            with torch.no_grad():  # G in train mode (BatchNorm batch statistics), as for its own step
                fakes = self.generator(features, size)
            # one D forward on reals and fakes together: one spectral-norm power iteration per call
            logits = self.discriminator(torch.cat([reals, fakes]))
            real_logits, fake_logits = logits.split([len(reals), len(fakes)])
            loss = discriminator_loss(real_logits, fake_logits)
            (loss / self.accumulate).backward()
            if action.step:
                if sync is not None:
                    sync(list(self.discriminator.parameters()))
                self.opt_d.step()
                self.opt_d.zero_grad(set_to_none=True)
            logs["d_loss"] = loss.item()
            logs["d_real"] = torch.sigmoid(real_logits).mean().item()
        else:
            self.discriminator.requires_grad_(False)  # the G loss updates G only
            try:
                fake_logits = self.discriminator(self.generator(features, size))
                loss = generator_loss(fake_logits)
                (loss / self.accumulate).backward()
            finally:
                self.discriminator.requires_grad_(True)
            self._g_partial += loss.item() / self.accumulate
            if action.step:
                if sync is not None:
                    sync(list(self.generator.parameters()))
                self.opt_g.step()
                self.opt_g.zero_grad(set_to_none=True)
                self.monitor.update(self._g_partial)
                self._g_partial = 0.0
            logs["g_loss"] = loss.item()
        logs["d_fake"] = torch.sigmoid(fake_logits.detach()).mean().item()
        if len(self.monitor.history) >= self.monitor.window:
            logs["g_ma"] = self.monitor.moving_average()
        logs["converged"] = float(self.monitor.done)
        self.calls += 1
        return logs

    @torch.no_grad()
    def probability(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """``D(G(sg(f)))`` per image, ``[B]`` in [0, 1], in eval mode (no G/D state changes)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self.discriminator(self.generator(features.detach(), size)))
        finally:
            self.train(was_training)

    def beta(self, features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(beta(x), D(G(f(x))))``, both ``[B]`` and detached (methods.md §5.3)."""
        d = self.probability(features, size)
        return self.transform(d), d

    def get_extra_state(self) -> dict[str, Any]:
        """Counters, the monitor and the gradients of an update still accumulating (exact mid-update resume)."""
        grads = {name: p.grad.clone() for name, p in self.named_parameters() if p.grad is not None}
        return {"calls": self.calls, "g_partial": self._g_partial, "round": self.round,
                "monitor": self.monitor.state_dict(), "grads": grads}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.calls, self._g_partial, self.round = state["calls"], state["g_partial"], state["round"]
        self.monitor.load_state_dict(state["monitor"])
        for name, p in self.named_parameters():
            grad = state["grads"].get(name)
            p.grad = None if grad is None else grad.clone().to(p.device)
