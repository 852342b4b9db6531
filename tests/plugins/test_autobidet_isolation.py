"""G and D are recipe-owned and gradient-isolated from the detector (methods.md §5.3-5.4; issue 13)."""

from __future__ import annotations

import io

import pytest
import torch
from detbin_bidet.ces import Discriminator, Generator, real_images
from detbin_bidet.gan import ComplexityEstimator
from detbin_bidet.schedule import ConvergenceMonitor
from detbin_bidet.tradeoff import WeightedTerm, make_transform, tradeoff_terms
from torch import Tensor, nn


class TinyDetector(nn.Module):
    """A stride-4 'backbone' (the high-level map f) and a 'head' whose output plays the detection loss."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        f = self.backbone(images)
        return f, self.head(f).pow(2).mean()


def _setup(monitor: ConvergenceMonitor | None = None, seed: int = 0) -> tuple[TinyDetector, ComplexityEstimator]:
    torch.manual_seed(seed)
    detector = TinyDetector()
    ces = ComplexityEstimator(Generator(4, n_up=1, channels=2), Discriminator(channels=2, blocks=2),
                              make_transform("sine"), monitor=monitor)
    return detector, ces


def _batch(k: int) -> Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(100 + k))


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, Tensor)}


def test_detector_gradient_reaches_neither_g_nor_d() -> None:
    detector, ces = _setup()
    before = _state(ces)
    images = _batch(0)
    f, det_loss = detector(images)
    beta, _ = ces.beta(f, (8, 8))  # 1/2 of 16 x 16
    reg = {"reg": WeightedTerm(f.pow(2).mean(dim=(1, 2, 3)), 0.1)}  # a per-image compression term of f
    total = det_loss + sum(tradeoff_terms(beta, reg, {}, reference=10.0).values())
    total.backward()
    assert all(p.grad is None for p in ces.parameters())
    assert all(p.grad is not None for p in detector.parameters())
    after = _state(ces)  # eval mode: no BatchNorm statistics or spectral-norm vectors moved
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gan_gradient_does_not_reach_the_detector() -> None:
    detector, ces = _setup()
    detector.eval()  # the GAN phase's frozen detector
    before = _state(detector)
    for k in range(3):  # D, D, G
        images = _batch(k)
        f, _ = detector(images)  # with grad on purpose: the estimator must detach it itself
        logs = ces.gan_step(f, real_images(images * 2 - 1, [0.5] * 3, [0.5] * 3, (8, 8)))
        assert ("d_loss" in logs) == (k < 2) and ("g_loss" in logs) == (k == 2)
    assert all(p.grad is None for p in detector.parameters())
    assert all(torch.equal(before[k], v) for k, v in _state(detector).items())
    assert all(p.grad is None for p in ces.parameters())  # set to None after each update; D frozen in G's


def test_gan_updates_the_right_network() -> None:
    detector, ces = _setup()
    f, _ = detector(_batch(0))
    reals = real_images(_batch(0) * 2 - 1, [0.5] * 3, [0.5] * 3, (8, 8))
    g0, d0 = _state(ces.generator), _state(ces.discriminator)
    ces.gan_step(f, reals)  # a D step: D's weights move, G's weights do not (its BN statistics may)
    g1, d1 = _state(ces.generator), _state(ces.discriminator)
    assert all(torch.equal(g0[k], g1[k]) for k in g0 if "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(d0[k], d1[k]) for k in d0 if k.endswith("original"))
    ces.gan_step(f, reals)  # the second D step
    d2 = _state(ces.discriminator)
    ces.gan_step(f, reals)  # the G step: G's weights move, D's do not
    g3, d3 = _state(ces.generator), _state(ces.discriminator)
    assert any(not torch.equal(g1[k], g3[k]) for k in g1 if k.endswith("weight"))
    assert all(torch.equal(d2[k], d3[k]) for k in d2 if k.endswith("original"))


def _run(ces: ComplexityEstimator, detector: TinyDetector, start: int, stop: int | None) -> int:
    """GAN calls from ``start`` until ``stop`` or the monitor says done; returns the next call index."""
    k = start
    while (stop is None or k < stop) and not ces.monitor.done:
        images = _batch(k)
        with torch.no_grad():
            f, _ = detector(images)
        ces.gan_step(f, real_images(images * 2 - 1, [0.5] * 3, [0.5] * 3, (8, 8)))
        k += 1
    return k


@pytest.mark.parametrize(("accumulate", "cap", "kill_at"), [(1, 5, 7), (2, 3, 9)])
def test_resume_inside_a_gan_phase_is_bit_identical(accumulate: int, cap: int, kill_at: int) -> None:
    """SIGKILL after call ``kill_at`` (accumulate 2: call 9 is half of the second D update of a cycle)."""
    def build(seed: int, monitor: ConvergenceMonitor) -> ComplexityEstimator:
        _, ces = _setup(monitor, seed)
        ces.accumulate = accumulate
        return ces

    def stop_rule() -> ConvergenceMonitor:
        return ConvergenceMonitor(window=2, span=2, tolerance=1e-9, cap=cap)  # stops at the cap

    detector, _ = _setup()
    detector.eval()
    straight = build(0, stop_rule())
    end = _run(straight, detector, 0, None)
    assert end == cap * accumulate * 3 and straight.monitor.reason == "cap"

    first = build(0, stop_rule())
    _run(first, detector, 0, kill_at)
    buffer = io.BytesIO()
    torch.save({"ces": first.state_dict(), "opt_d": first.opt_d.state_dict(),
                "opt_g": first.opt_g.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = build(1, ConvergenceMonitor())  # other initial weights, spec monitor: all overwritten
    resumed.load_state_dict(saved["ces"])
    resumed.opt_d.load_state_dict(saved["opt_d"])
    resumed.opt_g.load_state_dict(saved["opt_g"])
    assert _run(resumed, detector, resumed.calls, None) == end
    assert resumed.monitor.state_dict() == straight.monitor.state_dict()
    expected = straight.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items() if isinstance(v, Tensor))


def test_optimisers_follow_the_paper() -> None:
    _, ces = _setup()
    d, g = ces.opt_d.param_groups[0], ces.opt_g.param_groups[0]
    assert isinstance(ces.opt_d, torch.optim.Adam) and isinstance(ces.opt_g, torch.optim.Adam)
    assert (d["lr"], g["lr"], d["betas"], g["betas"]) == (2e-4, 5e-5, (0.0, 0.999), (0.0, 0.999))
    assert {id(p) for p in d["params"]} == {id(p) for p in ces.discriminator.parameters()}
    assert {id(p) for p in g["params"]} == {id(p) for p in ces.generator.parameters()}
    assert ces.d_steps == 2


def test_begin_round_keeps_weights_and_restarts_the_monitor() -> None:
    detector, ces = _setup(ConvergenceMonitor(window=1, span=1, tolerance=1e-9, cap=1))
    ces.begin_round(1)
    _run(ces, detector, 0, None)
    weights = _state(ces.generator)
    ces.begin_round(1)  # on_phase after a resume: same round, nothing restarts
    assert ces.monitor.done and ces.calls == 3
    ces.begin_round(2, cap=2)
    assert not ces.monitor.done and ces.calls == 0 and ces.monitor.cap == 2
    assert all(torch.equal(v, weights[k]) for k, v in _state(ces.generator).items())  # warm start
