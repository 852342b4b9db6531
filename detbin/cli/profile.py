"""``detbin profile``: binary-aware cost accounting of a model or an architecture."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from detbin.cli.common import JsonOpt, app, handles_errors, out
from detbin.core.errors import ConfigError

if TYPE_CHECKING:  # torch stays out of `detbin --help`
    from detbin.cost.profile import Cost

__all__ = ["profile_command"]

CONVENTIONS = ("1 MAC = 1 FLOP; OPs = FLOPs + BOPs/64; MB = 10^6 B, MiB = 2^20 B; "
               "binary convs are simulated in float during training")
_ROI_FC = "roi_heads.box_head."


def _g(value: float) -> str:
    return f"{value / 1e9:.3f}"


def _table(title: str, caption: str | None = None) -> Table:
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)


def _parts_table(title: str, cost: Cost) -> Table:
    table = _table(title, f"{CONVENTIONS}; real M / 1-bit M: millions of parameters")
    totals = {"flops": cost.flops, "bops": cost.bops, "ops": cost.ops, "binary_mac_share": cost.binary_mac_share,
              "params_real": cost.params_real, "params_binary": cost.params_binary, "memory_mb": cost.memory_mb}
    rows = [[part, _g(v["flops"]), _g(v["bops"]), _g(v["ops"]), f"{100 * v['binary_mac_share']:.1f}",
             f"{v['params_real'] / 1e6:.3f}", f"{v['params_binary'] / 1e6:.3f}", f"{v['memory_mb']:.2f}",
             f"{100 * v['memory_mb'] / cost.memory_mb:.1f}"]
            for part, v in [*cost.by_part().items(), ("total", totals)]]
    headers = ("part", "FLOPs G", "BOPs G", "OPs G", "1-bit MAC %", "real M", "1-bit M", "MB", "MB %")
    for i, column in enumerate(headers):  # numbers never wrap or get cut; headers may wrap
        table.add_column(column, justify="left" if i == 0 else "right", min_width=max(len(r[i]) for r in rows))
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == "total" else None)
    return table


def _modules_table(cost: Cost, top: int = 10) -> Table:
    table = _table(f"top {top} layers by MACs")
    table.add_column("layer", overflow="fold")
    for column in ("kind", "MACs G", "bits", "real params", "1-bit params"):
        table.add_column(column, justify="left" if column in ("kind", "bits") else "right")
    for m in sorted(cost.by_module, key=lambda m: -m.macs)[:top]:
        table.add_row(m.name or "(model)", m.kind, _g(m.macs), "1" if m.binary else "32", f"{m.params_real:,}",
                      f"{m.params_binary:,}")
    return table


def _real_table(cost: Cost) -> Table:
    table = _table(f"layers kept real ({len(cost.real_layers)} of {len(cost.by_module)} with MACs)")
    table.add_column("layer", overflow="fold")
    for column in ("kind", "FLOPs G", "params", "MB", "note"):
        table.add_column(column, justify="left" if column in ("kind", "note") else "right")
    for m in (m for m in cost.by_module if not m.binary):
        note = "RoI FC head" if m.name.startswith(_ROI_FC) and m.kind == "Linear" else ""
        table.add_row(m.name or "(model)", m.kind, _g(m.macs), f"{m.params_real:,}", f"{m.params_real * 4 / 1e6:.2f}",
                      note)
    return table


def _print_cost(name: str, cost: Cost) -> None:
    size = f"{cost.image_size[0]}x{cost.image_size[1]}" if cost.image_size else "?"
    rois = f", RoI head counted for exactly {cost.rois} RoIs" if cost.rois else ""
    out.print(_parts_table(f"{name} at {size}{rois}", cost))
    out.print(f"OPs {_g(cost.ops)} G · FLOPs {_g(cost.flops)} G · BOPs {_g(cost.bops)} G · memory "
              f"{cost.memory_mb:.2f} MB = {cost.memory_mib:.2f} MiB · "
              f"binary share of MACs {cost.binary_mac_share:.1%}")
    check = cost.cross_check
    out.print(f"counter: {cost.counter}; cross-check {check.counter}: {check.rel_diff:.4%} difference"
              + (f" ({len(check.differing)} layers differ)" if check.differing else ""))
    out.print(_modules_table(cost))
    if cost.bops:
        out.print(_real_table(cost))
        fc = sum(m.params_real for m in cost.by_module if m.name.startswith(_ROI_FC) and not m.binary)
        if fc:
            out.print(f"the real RoI FC head holds {fc * 4 / 1e6:.2f} MB of {cost.memory_mb:.2f} MB "
                      f"({fc * 32 / cost.memory_bits:.0%} of the memory)")
    else:
        out.print(f"all {len(cost.real_layers)} layers with MACs are real (no binary layers)")
    listed = ", ".join(f"{k} x{v}" for k, v in cost.not_counted.items() if v is not None)
    outside = ", ".join(k for k, v in cost.not_counted.items() if v is None)
    out.print(f"not counted (calls): {listed or 'none'}; outside the counted parts: {outside or 'none'}")
    if cost.unreached:
        out.print(f"[yellow]layers no counted part ran (0 MACs):[/] {', '.join(cost.unreached)}")


def _print_compare(name: str, cost: Cost, other_name: str, other: Cost) -> None:
    size = f"{cost.image_size[0]}x{cost.image_size[1]}" if cost.image_size else "the same input size"
    rois = f", {cost.rois} RoIs" if cost.rois else ""
    table = _table(f"comparison at {size}{rois} (ratio = OTHER / MODEL)")
    for column in ("", f"MODEL: {name}", f"OTHER: {other_name}", "ratio"):
        table.add_column(column, justify="left" if not column else "right", overflow="fold")
    ratios = cost.ratios(other)
    for label, key, a, b in (("memory (MB)", "memory", cost.memory_mb, other.memory_mb),
                             ("OPs (G)", "ops", cost.ops / 1e9, other.ops / 1e9),
                             ("FLOPs (G)", "flops", cost.flops / 1e9, other.flops / 1e9),
                             ("MACs (G)", "macs", (cost.flops + cost.bops) / 1e9, (other.flops + other.bops) / 1e9)):
        ratio = ratios[f"{key}_ratio"]
        table.add_row(label, f"{a:.3f}", f"{b:.3f}", "n/a" if ratio is None else f"{ratio:.2f}x")
    out.print(table)


@app.command("profile")
@handles_errors
def profile_command(
    model: Annotated[str, typer.Argument(help="A checkpoint, or an architecture name (e.g. fasterrcnn_resnet50_fpn).")],
    recipe: Annotated[str | None, typer.Option(help="Apply this recipe's binarization layout to MODEL first.")] = None,
    image_size: Annotated[tuple[int, int] | None, typer.Option(
        help="Network input H W (default: the model's min_size x max_size).")] = None,
    rois: Annotated[int | None, typer.Option(
        help="RoIs through a two-stage RoI head (default: the model's test-time proposal count, "
             "rpn_post_nms_top_n_test: 1000 for full-size models, as the papers test; 150 for the tiny configs).")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes incl. background, for architecture names.")] = 21,
    compare: Annotated[str | None, typer.Option(
        help="Another checkpoint or architecture, counted at the same size; prints OTHER/MODEL ratios.")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture of a plain state dict whose keys do not tell.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Count FLOPs (real MACs), BOPs (binary MACs), OPs = FLOPs + BOPs/64 and memory, per part and layer."""
    from detbin.app import build
    from detbin.cost.profile import profile

    if image_size is not None and min(image_size) <= 0:
        raise ConfigError(f"--image-size {image_size[0]} {image_size[1]}: both sides must be positive")
    if rois is not None and rois <= 0:
        raise ConfigError(f"--rois {rois}: must be at least 1")
    cost = profile(build.load_target(model, recipe, num_classes, arch), image_size, rois)
    other = None
    if compare is not None:  # the other model at MODEL's input size and RoI count
        other = profile(build.load_target(compare, None, num_classes, arch), cost.image_size, cost.rois or rois)
    if as_json:
        report = {"model": model, "recipe": recipe, **cost.to_dict()}
        if other is not None:
            report["compare"] = {"model": compare, **cost.ratios(other), "other": {
                k: v for k, v in other.to_dict().items() if k not in ("by_module", "not_counted")}}
        out.print_json(json.dumps(report))
        return
    name = escape(model if recipe is None else f"{model} + {recipe}")  # a path is text, never markup
    _print_cost(name, cost)
    if other is not None:
        _print_compare(name, cost, escape(str(compare)), other)
