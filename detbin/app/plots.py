"""Plots written as PNG files with matplotlib's Agg backend (never shown): training curves, PR curves."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_results", "result_panels", "plot_pr_curves"]


def _records(jsonl: Path) -> list[dict]:
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


_NOT_PLOTTED = {"iteration", "epoch", "global_step", "phase", "lr", "seconds_per_iter"}


def _numeric(record: dict, key: str) -> bool:
    return isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)


def result_panels(records: list[dict]) -> tuple[list[str], list[str]]:
    """``(step quantities, metrics)`` of ``metrics.jsonl`` records, each named once.

    Step rows (they carry ``seconds_per_iter``) give every loss term and recipe value (IDa-Det's
    ``pairs``, ``selected``, ``sigma`` ...); evaluation rows give the metrics. The step rows repeat
    the latest scores (as results.csv columns); those are plotted from the evaluations only.
    """
    steps = [r for r in records if "seconds_per_iter" in r]
    evals = [r for r in records if "seconds_per_iter" not in r]
    metrics = sorted({k for r in evals for k in r if k not in _NOT_PLOTTED and _numeric(r, k)})
    losses = sorted({k for r in steps for k in r if k not in _NOT_PLOTTED and k not in metrics and _numeric(r, k)},
                    key=lambda k: (k != "total", k))
    return losses, metrics


def plot_results(jsonl: Path, png: Path) -> Path | None:
    """``results.png``: one panel per logged quantity (:func:`result_panels`) and the learning rate."""
    records = _records(Path(jsonl))
    steps = [r for r in records if "seconds_per_iter" in r]
    evals = [r for r in records if "seconds_per_iter" not in r]
    if not steps:
        return None
    losses, metrics = result_panels(records)
    panels = losses + ["lr"] + metrics
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        source = evals if key in metrics else steps
        points = [(r["iteration"], r[key]) for r in source if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def _draw_curve(ax, recall: np.ndarray, precision: np.ndarray, label: str, **style) -> None:
    # COCO marks recall thresholds a class never reaches with -1; VOC has NaN recall without GT
    keep = (np.asarray(precision) >= 0) & ~np.isnan(np.asarray(recall, dtype=float))
    if keep.any():
        ax.plot(np.asarray(recall)[keep], np.asarray(precision)[keep], label=label, linewidth=1.2, **style)


def _finish(ax, title: str) -> None:
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")


def plot_pr_curves(curves: Mapping[str, tuple[float, Mapping[str, tuple[np.ndarray, np.ndarray, float]]]],
                   folder: Path, protocol: str) -> list[Path]:
    """Precision-recall PNGs: ``pr_curve.png`` (every class, a panel per model) and ``pr_<class>.png``.

    Args:
        curves: model label -> (mAP, class name -> (recall ``[P]``, precision ``[P]``, AP)).
            Points with negative precision (COCO: recall never reached) or NaN recall are left out.
        folder: where the PNGs go (created).
        protocol: named in the titles, e.g. ``voc07``.

    Returns:
        The files written, ``pr_curve.png`` first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(curves)
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.4), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        mean, per_class = curves[label]
        for name, (recall, precision, ap) in per_class.items():
            _draw_curve(ax, recall, precision, f"{name} {ap:.3f}")
        _finish(ax, f"{label}: {protocol} mAP {mean:.4f}")
    fig.tight_layout()
    written = [folder / "pr_curve.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)
    for name in next(iter(curves.values()))[1]:
        fig, ax = plt.subplots(figsize=(4.4, 4))
        for style, label in zip(({"linestyle": "-"}, {"linestyle": "--"}, {"linestyle": ":"}), labels):
            recall, precision, ap = curves[label][1][name]
            _draw_curve(ax, recall, precision, f"{label} AP {ap:.3f}", **style)
        _finish(ax, f"{name} ({protocol})")
        fig.tight_layout()
        written.append(folder / f"pr_{_file_name(name)}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
