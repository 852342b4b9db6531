"""eval --compare of two runs' weights/best.pt: distinct labels, both curves in every PR plot, distinct CSV columns."""

from __future__ import annotations

import csv
import json

import matplotlib.axes
import torch
from typer.testing import CliRunner

from detbin.cli import app
from detbin.data.synthetic import write_dataset
from detbin.models.detector import build_detector
from helpers import toy_config


def test_two_best_pt_are_told_apart(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "syn", train=2, test=12)
    paths = []
    for seed, run in ((0, "reactnet"), (1, "teacher")):
        torch.manual_seed(seed)
        path = tmp_path / "runs" / run / "weights" / "best.pt"
        path.parent.mkdir(parents=True)
        torch.save(build_detector(toy_config(num_classes=6, score_thresh=0.0)).model.state_dict(), path)
        paths.append(path)
    drawn: list[tuple[matplotlib.axes.Axes, str]] = []
    original = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        drawn.append((self, kwargs.get("label", "")))  # the axes object itself: its title is set after
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    result = CliRunner().invoke(app, ["eval", str(paths[0]), "--compare", str(paths[1]), "--dataset", "synthetic",
                                      "--data", str(data), "--project", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["label"], report["compare"]["label"]) == ("reactnet (best.pt)", "teacher (best.pt)")
    header = next(csv.reader((tmp_path / "out" / "eval" / "exp" / "per_class.csv").open()))
    assert header == ["class", "npos", "ap[reactnet (best.pt)]", "ndet[reactnet (best.pt)]",
                      "ap[teacher (best.pt)]", "ndet[teacher (best.pt)]"] and len(set(header)) == len(header)
    per_class: dict[str, list[str]] = {}
    for axes, label in drawn:
        if " AP " in label:  # the one-class plots, titled "<class> (voc07)"
            per_class.setdefault(axes.get_title().split(" (")[0], []).append(label.split(" AP ")[0])
    both = [name for name, c in report["per_class"].items() if c["ndet"] and report["compare"]["per_class"][name]["ndet"]]
    assert both, "the two models must share a class with detections"
    for name in both:  # a model's curve is drawn wherever it has detections of the class
        assert per_class[name] == ["reactnet (best.pt)", "teacher (best.pt)"], name
