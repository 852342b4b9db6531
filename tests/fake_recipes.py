"""Recipe classes for plugin-loading tests (referenced as ``fake_recipes:Class``)."""

from __future__ import annotations

from pydantic import BaseModel

from detbin import Params, Recipe


class Good(Recipe):
    name = "good"

    class Params(Params):
        weight: float = 1.0


class WrongName(Recipe):
    name = "something-else"


class BadParams(Recipe):
    name = "bad-params"
    Params = BaseModel  # not a detbin.Params


class NotARecipe:
    name = "not-a-recipe"
