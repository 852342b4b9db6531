"""``detbin detectors``: the detector families and their architectures (built in and from entry points)."""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text

from detbin.cli.common import JsonOpt, app, handles_errors, out

__all__ = ["detectors_list"]


@app.command("detectors")
@handles_errors
def detectors_list(as_json: JsonOpt = False) -> None:
    """List detector families: built in, and those of the entry-point group ``detbin.detectors`` (not imported)."""
    from detbin.models.families import available_plugins, families

    rows = [{"family": f.name, "source": "detbin (built in)", "archs": list(f.archs), "description": f.description}
            for f in families().values()]
    rows += [{"family": name, "source": f"{info.package} {info.version} ({info.value})", "archs": [],
              "description": "plugin: architectures listed once loaded"}
             for name, info in sorted(available_plugins().items()) if name not in families()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="detbin detector families (built in + entry-point group detbin.detectors)")
    for column in ("family", "source", "architectures", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = (row["family"], row["source"], ", ".join(row["archs"]) or "-", row["description"])
        table.add_row(*(Text(c) for c in cells))  # plugin text, printed literally (never as markup)
    out.print(table)
