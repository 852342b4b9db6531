"""Recipe files on disk: YAML in and out, dotted ``--set`` overrides, the shipped recipe folders.

YAML is read with ``yaml.safe_load`` only; a mapping with a duplicate key is an error (PyYAML
keeps the last one silently). Overrides are applied to the raw mapping *before* validation
(:mod:`detbin.config.schema`), so a typo in ``--set`` fails like one in the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from detbin.config.schema import RunConfig, validate
from detbin.core.errors import ConfigError, close_matches

__all__ = ["read_yaml", "parse_overrides", "apply_overrides", "load", "dump", "recipes_dir", "recipe_files",
           "find_recipe_file", "default_recipe_file"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice.

    PyYAML keeps the last value silently, so a second ``train:`` section would drop the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class raises the proper error
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the first one would be ignored)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader, unique keys), with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        data = _safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the recipe file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe file must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["train.epochs=2", ...]`` -> ``[(["train", "epochs"], 2), ...]``; values parsed as YAML."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=2")
        try:
            parsed.append((key.strip().split("."), _safe_load(value)))
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[tuple[list[str], Any]]) -> dict[str, Any]:
    """Set each dotted key in a copy of ``raw`` (intermediate mappings are created)."""
    out = copy.deepcopy(raw)
    for keys, value in overrides:
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return out


def load(path: Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """Read, override and validate a recipe file; returns the model and the resolved mapping."""
    raw = apply_overrides(read_yaml(Path(path)), parse_overrides(overrides))
    return validate(raw, str(path)), raw


def dump(config: RunConfig | dict[str, Any]) -> str:
    """YAML text of a resolved config (plain types only)."""
    data = config if isinstance(config, dict) else config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def recipes_dir() -> Path:
    """The shipped recipe files: ``detbin/recipes`` in a wheel, ``recipes/`` in a source tree."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "recipes"
    return packaged if packaged.is_dir() else package.parent / "recipes"


def recipe_files(recipe: str) -> list[Path]:
    """The YAML files shipped for ``recipe`` (``recipes/<recipe>/*.yaml``)."""
    return sorted((recipes_dir() / recipe).glob("*.yaml"))


PAPER_DEFAULT, CPU_DEFAULT = "fasterrcnn_r18_fpn_voc", "tiny_synthetic"


def default_recipe_file(recipe: str, cuda: bool) -> tuple[Path, str]:
    """The shipped file a run uses without ``--config``, and why, for one line to the user.

    With a CUDA device: the paper's setting (``fasterrcnn_r18_fpn_voc``, else the first file that
    is not a tiny one). Without: the tiny CPU setting (``tiny_synthetic``, else the first
    ``tiny_synthetic*``), since the paper's (36 epochs, AMP, 4 workers) would take days on a CPU.
    """
    shipped = recipe_files(recipe)
    tiny = [p for p in shipped if p.stem.startswith(CPU_DEFAULT)]
    paper = [p for p in shipped if not p.stem.startswith(CPU_DEFAULT)]
    if cuda:
        chosen = [p for p in paper if p.stem == PAPER_DEFAULT] or paper or tiny
        why = "the paper's setting, a CUDA device is present"
    else:
        chosen = [p for p in tiny if p.stem == CPU_DEFAULT] or tiny or paper
        why = "the tiny CPU setting, no CUDA device here"
    if not chosen:
        raise ConfigError(f"recipe {recipe!r} ships no recipe file under {recipes_dir() / recipe}; pass --config PATH.yaml")
    others = [p.stem for p in shipped if p != chosen[0]]
    return chosen[0], why + (f"; --config {' | '.join(others)} picks another" if others else "")


def find_recipe_file(ref: str | None, recipe: str, default: str = PAPER_DEFAULT) -> Path:
    """A recipe file from a path, or a variant name of ``recipe``'s shipped files.

    ``--config tiny_synthetic`` with ``--recipe reactnet`` is ``recipes/reactnet/tiny_synthetic.yaml``.
    """
    if ref is not None and (Path(ref).is_file() or ref.endswith((".yaml", ".yml"))):
        if not Path(ref).is_file():
            raise ConfigError(f"{ref}: no such recipe file")
        return Path(ref)
    variant = ref or default
    candidate = recipes_dir() / recipe / f"{variant}.yaml"
    if candidate.is_file():
        return candidate
    shipped = [p.stem for p in recipe_files(recipe)]
    raise ConfigError(f"no recipe file {variant!r} for {recipe!r}{close_matches(variant, shipped)}; shipped: "
                      f"{', '.join(shipped) or 'none'} (or pass --config PATH.yaml)")
