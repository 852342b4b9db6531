"""Alternating optimisation (methods.md §5.5): the phase list, the D/G cycle, the G-loss stop rule."""

from __future__ import annotations

import pytest
from detbin_bidet.schedule import (
    ConvergenceMonitor,
    GanAction,
    calls_per_g_step,
    gan_action,
    plan_phases,
    round_of,
)

from detbin import ConfigError, Phase


def test_one_round_per_lr_stage() -> None:
    phases = plan_phases(1000, [400, 700])
    assert phases == [Phase("warmup", 400),
                      Phase("gan1", None, student=False), Phase("detector1", 700 - 400),
                      Phase("gan2", None, student=False), Phase("detector2", 1000 - 700)]
    assert sum(p.iterations for p in phases if p.student) == 1000


def test_extra_round_start_and_fixed_gan_length() -> None:
    phases = plan_phases(80, [40, 60], extra_round_starts=[20], gan_iterations=30)
    assert [(p.name, p.iterations, p.student) for p in phases] == [
        ("warmup", 20, True), ("gan1", 30, False), ("detector1", 20, True), ("gan2", 30, False),
        ("detector2", 20, True), ("gan3", 30, False), ("detector3", 20, True)]


def test_round_at_zero_has_no_warmup() -> None:
    assert plan_phases(10, [5], extra_round_starts=[0])[0] == Phase("gan1", None, student=False)


def test_plan_errors() -> None:
    with pytest.raises(ConfigError, match="needs an LR milestone"):
        plan_phases(100, [])
    with pytest.raises(ConfigError, match="increase strictly"):
        plan_phases(100, [60, 40])
    with pytest.raises(ConfigError, match=r"must lie in \[0, 100\)"):
        plan_phases(100, [40, 100])
    with pytest.raises(ConfigError, match="gan_iterations"):
        plan_phases(100, [40], gan_iterations=0)


def test_round_of() -> None:
    assert round_of("gan2") == ("gan", 2)
    assert round_of("detector13") == ("detector", 13)
    assert round_of("warmup") == ("warmup", 0)
    with pytest.raises(ConfigError):
        round_of("ganx")


def test_two_d_steps_per_g_step() -> None:
    assert [gan_action(k) for k in range(6)] == [GanAction("D", True), GanAction("D", True), GanAction("G", True)] * 2
    # GAN batch 64 as 2 micro-batches of 32: D accumulates 2 calls per update, then G does
    assert [gan_action(k, 2, 2) for k in range(6)] == [
        GanAction("D", False), GanAction("D", True), GanAction("D", False), GanAction("D", True),
        GanAction("G", False), GanAction("G", True)]
    assert calls_per_g_step(2, 2) == 6 and gan_action(6, 2, 2) == GanAction("D", False)


SEQUENCE = [10.0, 8.0, 6.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]


def test_monitor_converges_where_computed() -> None:
    # window 3, span 2, tolerance 1%: MA_3 = 8, MA_4 = 6, MA_5 = 14/3, MA_6 = 4, MA_7 = 4, MA_8 = 4.
    # t = 5: |14/3 - 8| large; t = 6: |4 - 6|; t = 7: |4 - 14/3| = 2/3 > 0.01 * 14/3; t = 8: |4 - 4| = 0 -> stop.
    monitor = ConvergenceMonitor(window=3, span=2, tolerance=0.01, cap=100)
    stops = [monitor.update(x) for x in SEQUENCE]
    assert stops.index(True) == 8 - 1
    assert monitor.reason == "converged" and monitor.steps == 8  # no update counted once done
    assert monitor.moving_average() == 4.0 and monitor.moving_average(2) == 4.0


def test_monitor_respects_the_tolerance_boundary() -> None:
    # MA over 1 step, span 1: 100 -> 100.5 is a 0.5% change (< 1%: stop); 100 -> 102 is 2% (go on)
    assert ConvergenceMonitor(1, 1, 0.01, 10).update(100.0) is False
    going = ConvergenceMonitor(1, 1, 0.01, 10)
    assert [going.update(x) for x in (100.0, 102.0, 102.5)] == [False, False, True]


def test_monitor_cap() -> None:
    monitor = ConvergenceMonitor(window=3, span=2, tolerance=0.01, cap=6)
    stops = [monitor.update(100.0 - 5.0 * t) for t in range(20)]  # MA falls by 10 every 2 steps: never flat
    assert stops.index(True) == 6 - 1 and monitor.reason == "cap"
    monitor.reset(cap=2)
    assert [monitor.update(1.0), monitor.update(1.0)] == [False, True] and monitor.reason == "cap"


def test_monitor_resume_mid_sequence_gives_the_same_stop_step() -> None:
    first = ConvergenceMonitor(window=3, span=2, tolerance=0.01, cap=100)
    for x in SEQUENCE[:5]:
        first.update(x)
    state = first.state_dict()
    assert all(isinstance(v, (int, float, str, list, type(None))) for v in state.values())
    resumed = ConvergenceMonitor()  # spec defaults, overwritten by the state
    resumed.load_state_dict(state)
    later = [resumed.update(x) for x in SEQUENCE[5:]]
    assert 5 + later.index(True) + 1 == 8 and resumed.state_dict() == _run_all(SEQUENCE).state_dict()


def _run_all(sequence: list[float]) -> ConvergenceMonitor:
    monitor = ConvergenceMonitor(window=3, span=2, tolerance=0.01, cap=100)
    for x in sequence:
        monitor.update(x)
    return monitor


def test_monitor_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="GAN stop rule"):
        ConvergenceMonitor(window=0)
