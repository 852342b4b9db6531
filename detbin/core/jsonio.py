"""Strict JSON out: NaN and infinities become ``null``, so every file detbin writes parses anywhere.

Python's ``json`` writes bare ``NaN``/``Infinity`` by default, which strict parsers (``jq``,
JavaScript's ``JSON.parse``, Go) refuse. A metric that is undefined (no ground truth of a class)
or a loss that overflowed is written as ``null`` instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["finite_or_none", "dumps"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, recursing into dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` (``value``), with ``allow_nan=False`` as a guarantee."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)
