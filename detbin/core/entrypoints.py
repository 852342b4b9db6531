"""Plugins found through entry points: discovered without importing, loaded one at a time.

Two groups use this: ``detbin.recipes`` (training methods) and ``detbin.detectors``
(detector families). :func:`discover` reads package metadata only; :func:`load` imports the
one plugin asked for, so a broken plugin breaks only the run that asks for it, and every error
names the distribution that ships it (flake8's finder is the model). This is the only module
that imports :mod:`importlib.metadata`.
"""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

from detbin.core.errors import DetbinError

__all__ = ["PluginInfo", "entry_points", "discover", "load", "version"]


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin: entry-point name and value, and the distribution that ships it."""

    name: str
    value: str
    package: str
    version: str


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The raw entry points of ``group`` (tests monkeypatch this)."""
    return list(metadata.entry_points(group=group))


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Name"], dist.version) if dist is not None else ("<unknown>", "")


def discover(group: str, kind: str, error: type[DetbinError]) -> dict[str, PluginInfo]:
    """Every plugin of ``group`` by name; imports nothing. ``kind`` names it in errors ("recipe").

    Raises:
        error: two distributions register the same name with different values (both named).
    """
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group):
        package, dist_version = _dist(ep)
        info = PluginInfo(ep.name, ep.value, package, dist_version)
        previous = found.get(ep.name)
        if previous is not None and previous.value != info.value:
            raise error(f"{kind} {ep.name!r} is registered twice: by {previous.package} ({previous.value}) "
                        f"and by {package} ({ep.value}); uninstall one")
        found[ep.name] = info
    return found


def load(group: str, kind: str, name: str, error: type[DetbinError]) -> tuple[object, PluginInfo]:
    """Import the object registered as ``name`` in ``group``.

    The caller has checked that ``name`` is registered (:func:`discover`).

    Raises:
        error: the plugin's import failed in any way (the distribution is named).
    """
    info = discover(group, kind, error)[name]
    ep = next(e for e in entry_points(group) if e.name == name)
    try:
        return ep.load(), info
    except Exception as exc:  # a plugin's import can fail in any way; report it, never crash others
        raise error(f"{kind} {name!r} from {info.package} failed to import: {type(exc).__name__}: {exc}") from exc


def version(distribution: str) -> str:
    """The installed version of ``distribution`` (``0.0.0+unknown`` when not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
