"""Recipe plugins: the entry-point group ``detbin.recipes``.

Built-in recipes are registered in detbin's own ``pyproject.toml`` exactly like third-party
ones (flake8's dogfooding). :func:`available` reads metadata only; :func:`load` imports the
one recipe asked for and validates it (pluggy's idea): a ``Recipe`` subclass whose ``name``
equals the entry-point name and whose ``Params`` is a :class:`~detbin.config.Params` model.

Only a name typed by the user (``--recipe``) may be a ``module:Class`` reference to a recipe
that is not installed; a name read from a file (a checkpoint's ``recipe``) resolves through
installed entry points only (:func:`load_installed`), so no file can make detbin import a
module of its choice.
"""

from __future__ import annotations

import importlib.metadata as metadata

from detbin.core import entrypoints
from detbin.core.entrypoints import PluginInfo
from detbin.core.errors import RecipeLoadError, RecipeNotFound, close_matches

__all__ = ["GROUP", "RecipeInfo", "available", "load", "load_installed"]

GROUP = "detbin.recipes"
RecipeInfo = PluginInfo


def available() -> dict[str, RecipeInfo]:
    """Every registered recipe by name; imports nothing.

    Raises:
        RecipeLoadError: two distributions register the same name (both are named).
    """
    return entrypoints.discover(GROUP, "recipe", RecipeLoadError)


def _validate(obj: object, name: str, package: str) -> type:
    from detbin.config import Params
    from detbin.training.recipe import Recipe

    if not (isinstance(obj, type) and issubclass(obj, Recipe)):
        raise RecipeLoadError(f"recipe {name!r} from {package}: {obj!r} is not a detbin.Recipe subclass")
    if obj.name != name:
        raise RecipeLoadError(f"recipe {name!r} from {package}: class {obj.__name__} declares name "
                              f"{obj.name!r}; the entry-point name and Recipe.name must be equal")
    if not (isinstance(obj.Params, type) and issubclass(obj.Params, Params)):
        raise RecipeLoadError(f"recipe {name!r} from {package}: Params must subclass detbin.Params")
    return obj


def load_installed(name: str, source: str = "") -> type:
    """The Recipe class registered as ``name`` in ``detbin.recipes`` (never an import string).

    Args:
        source: where the name was read (a checkpoint file), for the error message.

    Raises:
        RecipeNotFound: no installed recipe has this name (close names and all names are listed).
        RecipeLoadError: the plugin fails to import or is not a valid recipe.
    """
    recipes = available()
    if not isinstance(name, str) or name not in recipes:
        where = f"{source}: " if source else ""
        raise RecipeNotFound(f"{where}unknown recipe {name!r}{close_matches(str(name), recipes)}; installed: "
                             f"{', '.join(sorted(recipes)) or 'none'} (see `detbin recipes`)")
    obj, info = entrypoints.load(GROUP, "recipe", name, RecipeLoadError)
    return _validate(obj, name, info.package)


def load(ref: str) -> type:
    """The Recipe class for an entry-point name, or for ``"module:Class"`` typed by the user.

    Raises:
        RecipeNotFound: unknown name (close names and all names are listed).
        RecipeLoadError: the plugin fails to import or is not a valid recipe (the distribution is named).
    """
    if ":" not in ref:
        return load_installed(ref)
    ep = metadata.EntryPoint(name=ref, value=ref, group=GROUP)
    package = f"local reference {ref!r}"
    try:
        obj = ep.load()
    except Exception as exc:  # the user's own module can fail in any way; report it
        raise RecipeLoadError(f"recipe {ref!r} from {package} failed to import: {type(exc).__name__}: {exc}") from exc
    return _validate(obj, getattr(obj, "name", ref), package)
