"""Taps: record module outputs (or inputs) by qualified name while a model runs.

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
def record(model: nn.Module, names: Sequence[str], inputs: bool = False) -> Iterator[dict[str, list[Any]]]:
    """Capture the outputs (or, with ``inputs``, the inputs) of the named modules while the ``with`` body runs.

    Args:
        inputs: record each call's first positional argument (a conv's input tensor) instead
            of its output; LWS-Det's layer losses compare the inputs of the same conv in the
            teacher and the student.

    Yields:
        ``{name: [value of call 1, value of call 2, ...]}`` (a module called twice, e.g. a
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
    if inputs:
        handles = [modules[name].register_forward_pre_hook(lambda m, args, n=name: captured[n].append(args[0]))
                   for name in names]
    else:
        handles = [modules[name].register_forward_hook(lambda m, i, out, n=name: captured[n].append(out))
                   for name in names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
