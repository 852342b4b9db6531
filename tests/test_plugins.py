"""Recipe discovery through entry points: metadata only, lazy loading, errors naming the package."""

from __future__ import annotations

import importlib.metadata as metadata
import textwrap

import pytest

from detbin.core import entrypoints
from detbin.training import plugins
from detbin.core.errors import RecipeLoadError, RecipeNotFound

BUILT_IN = {"xnor", "bireal", "reactnet"}


def install_fake_distribution(root, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A throwaway installed distribution: ``<name>-<version>.dist-info`` plus its modules."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[detbin.recipes]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


THIRD_PARTY = """
    from detbin import Recipe

    class Third(Recipe):
        name = "third"
        paper = "A third party's method"
"""


def test_built_ins_are_listed_with_package_and_version():
    found = plugins.available()
    assert BUILT_IN <= set(found)
    for name in BUILT_IN:
        assert found[name].package == "detbin" and found[name].version == metadata.version("detbin")


def test_third_party_distribution_is_listed_and_loads(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "detbin-third", "1.2.3", {"third": "third_recipe:Third"},
                              {"third_recipe": THIRD_PARTY})
    monkeypatch.syspath_prepend(str(tmp_path))
    info = plugins.available()["third"]
    assert (info.package, info.version, info.value) == ("detbin-third", "1.2.3", "third_recipe:Third")
    assert plugins.load("third").paper == "A third party's method"


def test_broken_plugin_breaks_only_the_run_that_asks_for_it(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "broken-plugin", "0.1", {"broken": "broken_recipe:Broken"},
                              {"broken_recipe": "import does_not_exist_anywhere\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken" in plugins.available()  # discovery imports nothing
    assert plugins.load("reactnet").name == "reactnet"
    with pytest.raises(RecipeLoadError, match=r"recipe 'broken' from broken-plugin failed to import: "
                                              r"ModuleNotFoundError"):
        plugins.load("broken")


def test_unknown_name_lists_close_and_installed_names():
    with pytest.raises(RecipeNotFound, match=r"unknown recipe 'reactnt' \(did you mean: reactnet\?\); installed: "):
        plugins.load("reactnt")


def fake_entry_points(*pairs):
    return lambda group: [metadata.EntryPoint(name, value, group) for name, value in pairs]


def test_duplicate_names_across_distributions(monkeypatch):
    monkeypatch.setattr(entrypoints, "entry_points", fake_entry_points(("dup", "a:A"), ("dup", "b:B")))
    with pytest.raises(RecipeLoadError, match=r"recipe 'dup' is registered twice: .*\(a:A\) and .*\(b:B\)"):
        plugins.available()


@pytest.mark.parametrize("target, message", [
    ("fake_recipes:NotARecipe", "is not a detbin.Recipe subclass"),
    ("fake_recipes:WrongName", "declares name 'something-else'; the entry-point name and Recipe.name must be equal"),
    ("fake_recipes:BadParams", "Params must subclass detbin.Params"),
])
def test_validation_at_load_time(monkeypatch, target, message):
    name = {"fake_recipes:NotARecipe": "not-a-recipe", "fake_recipes:WrongName": "wrong",
            "fake_recipes:BadParams": "bad-params"}[target]
    monkeypatch.setattr(entrypoints, "entry_points", fake_entry_points((name, target)))
    with pytest.raises(RecipeLoadError, match=message):
        plugins.load(name)


def test_module_class_reference_loads_without_installation():
    cls = plugins.load("fake_recipes:Good")
    assert cls.name == "good" and cls.Params().weight == 1.0
