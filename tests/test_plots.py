"""results.png names each quantity once and plots every logged recipe term; PR plots keep every model's curve."""

from __future__ import annotations

import json

import numpy as np

from detbin.app.plots import plot_pr_curves, plot_results, result_panels


def test_each_metric_once_and_every_recipe_term(tmp_path):
    records = [
        {"iteration": 0, "epoch": 0, "teacher/voc07/mAP50": 0.67},
        {"iteration": 20, "epoch": 0, "lr": 0.01, "task/loss_classifier": 0.9, "ida-det/kd_p2": 0.1, "total": 1.0,
         "pairs": 12.0, "selected": 7.0, "sigma": 1.0, "seconds_per_iter": 0.5, "teacher/voc07/mAP50": 0.67},
        {"iteration": 40, "epoch": 0, "voc07/mAP50": 0.5},
        {"iteration": 40, "epoch": 0, "lr": 0.0, "task/loss_classifier": 0.8, "ida-det/kd_p2": 0.1, "total": 0.9,
         "pairs": 10.0, "selected": 6.0, "sigma": 1.0, "seconds_per_iter": 0.5, "teacher/voc07/mAP50": 0.67,
         "voc07/mAP50": 0.5},
    ]
    losses, metrics = result_panels(records)
    assert losses == ["total", "ida-det/kd_p2", "pairs", "selected", "sigma", "task/loss_classifier"]
    assert metrics == ["teacher/voc07/mAP50", "voc07/mAP50"]  # once each, from the evaluation rows
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_results(jsonl, tmp_path / "results.png").stat().st_size > 0


def test_a_per_class_plot_draws_both_models(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: (drawn.append(k.get("label")),
                                                                            original(self, *a, **k))[1])
    curve = (np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.8, 0.5]), 0.7)
    curves = {"reactnet (best.pt)": (0.7, {"circle": curve}), "teacher (best.pt)": (0.8, {"circle": curve})}
    written = plot_pr_curves(curves, tmp_path, "voc07")
    assert [p.name for p in written] == ["pr_curve.png", "pr_circle.png"]
    assert drawn[-2:] == ["reactnet (best.pt) AP 0.700", "teacher (best.pt) AP 0.700"]  # two curves per class plot
