"""``detbin recipes [show NAME]``: installed recipes and their shipped YAML files."""

from __future__ import annotations

import json

import typer

from rich.table import Table

from detbin.cli.common import JsonOpt, handles_errors, out, recipes_app

__all__ = ["recipes_list", "recipes_show"]


@recipes_app.callback()
@handles_errors
def recipes_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List installed recipes (entry points of ``detbin.recipes``) without importing them."""
    if ctx.invoked_subcommand is not None:
        return
    from detbin.training import plugins

    found = plugins.available()
    if as_json:
        out.print_json(json.dumps({n: vars(i) for n, i in sorted(found.items())}))
        return
    table = Table(title="detbin recipes (entry-point group detbin.recipes)")
    for column in ("name", "package", "version", "entry point"):
        table.add_column(column)
    for name, info in sorted(found.items()):
        table.add_row(name, info.package, info.version, info.value)
    out.print(table)


@recipes_app.command("show")
@handles_errors
def recipes_show(name: str) -> None:
    """Print a recipe's reference and its shipped YAML files."""
    from detbin import config
    from detbin.training import plugins

    cls = plugins.load(name)
    out.print(f"[bold]{name}[/]: {cls.paper or '(no reference given)'}")
    info = plugins.available().get(name)
    if info:
        out.print(f"from {info.package} {info.version} ({info.value})")
    files = config.recipe_files(name)
    if not files:
        out.print("no YAML files shipped for this recipe")
    for path in files:
        out.rule(f"{path.parent.name}/{path.name}")
        out.print(path.read_text(), markup=False, soft_wrap=True)
