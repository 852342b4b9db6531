"""Plots written as PNG files with matplotlib's Agg backend (never shown)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_results"]


def _records(jsonl: Path) -> list[dict]:
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def plot_results(jsonl: Path, png: Path) -> Path | None:
    """``results.png``: every loss term, the learning rate and the test metrics per iteration."""
    records = _records(Path(jsonl))
    steps = [r for r in records if "total" in r]
    evals = [r for r in records if "total" not in r]
    if not steps:
        return None
    losses = sorted({k for r in steps for k in r if "/" in k or k == "total"})
    metrics = sorted({k for r in evals for k in r if k not in ("iteration", "epoch")})
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
