"""Taps: record module outputs by qualified name while a model runs.

Because surgery keeps names, ``record(student, names)`` and ``record(teacher, names)``
capture the same layers of both networks with no mapping table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from detbin.core.errors import DetbinError, close_matches

__all__ = ["record"]


@contextmanager
def record(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """Capture the outputs of the named modules while the ``with`` body runs.

    Yields:
        ``{name: [output of call 1, output of call 2, ...]}`` (a module called twice, e.g. a
        shared head on several FPN levels, appears twice, in call order).

    Raises:
        DetbinError: a name that is not a module of ``model`` (close names are suggested).

    Hooks are removed on exit, also when the body raises.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise DetbinError(f"no module named {missing[0]!r}{close_matches(missing[0], modules)} "
                          f"in {type(model).__name__}")
    captured: dict[str, list[Any]] = {name: [] for name in names}
    handles = [modules[name].register_forward_hook(lambda m, i, out, n=name: captured[n].append(out)) for name in names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
