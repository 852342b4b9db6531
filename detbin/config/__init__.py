"""Recipe files: YAML on disk (:mod:`~detbin.config.files`) and their strict schema (:mod:`~detbin.config.schema`)."""

from __future__ import annotations

from detbin.config.files import (apply_overrides, default_recipe_file, dump, find_recipe_file, load, parse_overrides,
                                 read_yaml, recipe_files, recipes_dir)
from detbin.config.schema import DataSplit, Params, RunConfig, validate, validate_params

__all__ = ["Params", "RunConfig", "DataSplit", "validate", "validate_params", "read_yaml", "parse_overrides",
           "apply_overrides", "load", "dump", "recipes_dir", "recipe_files", "find_recipe_file",
           "default_recipe_file"]
