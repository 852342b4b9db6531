"""``detbin demo``: the embedded default end to end, and its comparison table (fits 80 columns)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from detbin.cli.common import NoProgressOpt, app, err, fmt_ap, handles_errors, out
from detbin.cli.progress import clock, make_progress_hook

__all__ = ["demo", "comparison_table", "size_note"]

_ROI_FC = "roi_heads.box_head."


def comparison_table(rows: list[Any]) -> Table:
    """Teacher and student side by side, one quantity per row, with the teacher/student ratio."""
    teacher, student = (row.cost for row in rows)
    size = f"{teacher.image_size[0]}x{teacher.image_size[1]}" if teacher.image_size else "?"
    table = Table(title="detbin demo: tiny Faster R-CNN R18-FPN on the synthetic test split (500 images)",
                  caption=f"mAP: VOC07 11-point. Memory: 32 bit per real parameter + 1 bit per binary weight, "
                          f"MB = 10^6 B. OPs = FLOPs + BOPs/64 (1 MAC = 1 FLOP) at {size} with {teacher.rois} "
                          "RoIs. Binary convs run simulated in float here.", caption_justify="left")
    for column, justify in (("", "left"), ("teacher", "right"), ("1-bit student", "right"), ("ratio", "right")):
        table.add_column(column, justify=justify)
    a, b = rows
    table.add_row("VOC07 mAP", fmt_ap(a.map50), fmt_ap(b.map50), f"{b.map50 - a.map50:+.4f}")
    table.add_row("real params", f"{teacher.params_real:,}", f"{student.params_real:,}", "")
    table.add_row("1-bit params", f"{teacher.params_binary:,}", f"{student.params_binary:,}", "")
    table.add_row("memory (MB)", f"{teacher.memory_mb:.3f}", f"{student.memory_mb:.3f}",
                  f"{teacher.memory_bits / student.memory_bits:.2f}x")
    table.add_row("FLOPs (M)", f"{teacher.flops / 1e6:.1f}", f"{student.flops / 1e6:.1f}", "")
    table.add_row("BOPs (M)", f"{teacher.bops / 1e6:.1f}", f"{student.bops / 1e6:.1f}", "")
    table.add_row("OPs (M)", f"{teacher.ops / 1e6:.1f}", f"{student.ops / 1e6:.1f}",
                  f"{teacher.ops / student.ops:.2f}x")
    return table


def size_note(rows: list[Any]) -> str:
    """Why a 1-bit student is only so much smaller: what stays real, and the ratio with the RoI FC head binary too."""
    teacher, student = (row.cost for row in rows)
    fc = sum(m.params_real for m in student.by_module if m.name.startswith(_ROI_FC) and not m.binary)
    if not fc:
        return ""
    share = 32 * fc / student.memory_bits
    binarized = student.memory_bits - 31 * fc  # the same weights at 1 bit each
    return (f"Only {teacher.memory_bits / student.memory_bits:.1f}x smaller: the RoI head's two FC layers stay "
            f"real (as in IDa-Det and LWS-Det) and hold {share:.0%} of the student's memory; with them binary too it "
            f"would be {teacher.memory_bits / binarized:.1f}x. The stem, the 1x1 shortcuts and the predictors stay "
            "real as well (`detbin profile` lists every real layer).")


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo keeps its data, runs and cache.")] = Path("runs/demo"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Remove what an earlier demo wrote there (its data and "
                                                          "stage folders; nothing else) and redo every stage.")] = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Make data, train a teacher, binarize it (reactnet), compare both: the whole story in one command.

    An interrupted demo resumes the stage it stopped in from that stage's weights/last.pt.
    """
    from detbin.app.demo import run_demo

    result = run_demo(out_dir, lambda title: [make_progress_hook(title, no_progress)],
                      lambda text: err.print(Text(text, style="dim"), soft_wrap=True), fresh)
    out.print(comparison_table(result.rows))
    note = size_note(result.rows)
    if note and not math.isnan(result.rows[0].map50):
        out.print(Text(note))
    for row in result.rows:
        out.print(Text(f"{row.name}: {row.checkpoint}" + (" (cached)" if row.reused else "")))
    times = ", ".join(f"{stage} {clock(seconds)}" for stage, seconds in result.seconds.items())
    out.print(Text(f"stage times: {times}; total {clock(sum(result.seconds.values()))}"))
