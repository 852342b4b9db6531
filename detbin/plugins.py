"""Recipe plugins: discovered from the entry-point group ``detbin.recipes`` without importing.

Built-in recipes are registered in detbin's own ``pyproject.toml`` exactly like third-party
ones (flake8's dogfooding). :func:`available` reads metadata only; :func:`load` imports the
one recipe asked for, so a broken plugin breaks only the run that asks for it, and the error
names its distribution. ``module:Class`` loads a recipe that is not installed (a local file).
"""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

from detbin.errors import RecipeLoadError, RecipeNotFound, close_matches

__all__ = ["GROUP", "RecipeInfo", "available", "load", "entry_points"]

GROUP = "detbin.recipes"


@dataclass(frozen=True)
class RecipeInfo:
    """A registered recipe: entry-point name and value, and the distribution that ships it."""

    name: str
    value: str
    package: str
    version: str


def entry_points() -> list[metadata.EntryPoint]:
    """The raw entry points of the group (tests monkeypatch this)."""
    return list(metadata.entry_points(group=GROUP))


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Name"], dist.version) if dist is not None else ("<unknown>", "")


def available() -> dict[str, RecipeInfo]:
    """Every registered recipe by name; imports nothing.

    Raises:
        RecipeLoadError: two distributions register the same name (both are named).
    """
    found: dict[str, RecipeInfo] = {}
    for ep in entry_points():
        package, version = _dist(ep)
        info = RecipeInfo(ep.name, ep.value, package, version)
        previous = found.get(ep.name)
        if previous is not None and previous.value != info.value:
            raise RecipeLoadError(f"recipe {ep.name!r} is registered twice: by {previous.package} "
                                  f"({previous.value}) and by {package} ({ep.value}); uninstall one")
        found[ep.name] = info
    return found


def _validate(obj: object, name: str, package: str) -> type:
    from detbin.config import Params
    from detbin.recipe import Recipe

    if not (isinstance(obj, type) and issubclass(obj, Recipe)):
        raise RecipeLoadError(f"recipe {name!r} from {package}: {obj!r} is not a detbin.Recipe subclass")
    if obj.name != name:
        raise RecipeLoadError(f"recipe {name!r} from {package}: class {obj.__name__} declares name "
                              f"{obj.name!r}; the entry-point name and Recipe.name must be equal")
    if not (isinstance(obj.Params, type) and issubclass(obj.Params, Params)):
        raise RecipeLoadError(f"recipe {name!r} from {package}: Params must subclass detbin.Params")
    return obj


def load(ref: str) -> type:
    """The Recipe class for an entry-point name, or for ``"module:Class"``.

    Raises:
        RecipeNotFound: unknown name (close names and all names are listed).
        RecipeLoadError: the plugin fails to import or is not a valid recipe (the
            distribution is named).
    """
    if ":" in ref:
        ep = metadata.EntryPoint(name=ref, value=ref, group=GROUP)
        package, name = f"local reference {ref!r}", None
    else:
        recipes = available()
        if ref not in recipes:
            raise RecipeNotFound(f"unknown recipe {ref!r}{close_matches(ref, recipes)}; "
                                 f"installed: {', '.join(sorted(recipes)) or 'none'} (see `detbin recipes`)")
        ep = next(e for e in entry_points() if e.name == ref)
        package, name = recipes[ref].package, ref
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin's import can fail in any way; report it, never crash others
        raise RecipeLoadError(f"recipe {ref!r} from {package} failed to import: {type(exc).__name__}: {exc}") from exc
    return _validate(obj, name if name is not None else getattr(obj, "name", ref), package)
