"""LWS-Det's two optimisation structures (methods.md §3.4), as logic testable without a trainer.

* ``joint`` (default, [I/D] reading of Algorithm 13): one phase ``train``; every iteration runs
  the layer-wise forward, the global losses, one backward. Everything is trained on
  ``L_GT + L_Lim + lambda sum_i (L_ang_i + L_amp_i) + mu sum_i L_w_i``.
* ``search_then_train`` ([D]): phase ``search`` trains only the DBS logits ``beta+-`` and the
  scales ``alpha`` on ``lambda sum_i (L_ang_i + L_amp_i) + mu sum_i L_w_i`` (no L_GT, no L_Lim;
  the student's input to layer i is its own activation), then phase ``train`` as ``joint``.

A DBS conv's latent ``weight`` is never trained: its weight is the search state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch import nn

from detbin import ConfigError, Phase
from detbin_lwsdet.dbs import DBSWeight, dbs_convs

__all__ = ["MODES", "SEARCH", "TRAIN", "LossTerms", "phase_plan", "loss_terms", "search_parameters",
           "trainable_parameters", "set_trainable"]

Mode = Literal["joint", "search_then_train"]
MODES: tuple[str, ...] = ("joint", "search_then_train")
SEARCH, TRAIN = "search", "train"


@dataclass(frozen=True)
class LossTerms:
    """Which terms a phase optimises: the task-loss factor, and whether L_Lim is on."""

    task_weight: float
    imitation: bool


def phase_plan(mode: str, search_iterations: int) -> list[Phase]:
    """The ordered phases of ``mode``; ``search_iterations`` is phase A's length (search_then_train)."""
    if mode == "joint":
        return [Phase(TRAIN, None)]
    if mode == "search_then_train":
        if search_iterations < 1:
            raise ConfigError(f"params.search_iterations must be >= 1 for lws_mode search_then_train, "
                              f"got {search_iterations}")
        return [Phase(SEARCH, int(search_iterations)), Phase(TRAIN, None)]
    raise ConfigError(f"params.lws_mode: unknown mode {mode!r}; valid: {', '.join(MODES)}")


def loss_terms(phase: str) -> LossTerms:
    """``search``: layer losses only (task weight 0, no L_Lim); ``train``: the full loss of §3.3."""
    if phase == SEARCH:
        return LossTerms(task_weight=0.0, imitation=False)
    if phase == TRAIN:
        return LossTerms(task_weight=1.0, imitation=True)
    raise ConfigError(f"lws-det has phases {SEARCH!r} and {TRAIN!r}, not {phase!r}")


def search_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``beta_plus``, ``beta_minus`` and ``alpha`` of every DBS quantizer, with qualified names."""
    for name, module in model.named_modules():
        if isinstance(module, DBSWeight):
            for pname, p in module.named_parameters(recurse=False):
                yield f"{name}.{pname}", p


def trainable_parameters(model: nn.Module, recipe: nn.Module | None, phase: str) -> dict[str, nn.Parameter]:
    """The parameters trained in ``phase`` by name (recipe-owned ones prefixed ``recipe.``).

    ``search``: the search state only. ``train``: every student parameter except the unused latent
    weights of DBS convs, plus the recipe's (the L_Lim adaptation convs).
    """
    loss_terms(phase)  # validates the name
    if phase == SEARCH:
        return dict(search_parameters(model))
    latent = {id(conv.weight) for _, conv in dbs_convs(model)}
    params = {n: p for n, p in model.named_parameters() if id(p) not in latent}
    if recipe is not None:
        params.update({f"recipe.{n}": p for n, p in recipe.named_parameters()})
    return params


def set_trainable(model: nn.Module, recipe: nn.Module | None, phase: str) -> dict[str, nn.Parameter]:
    """``requires_grad`` True exactly on :func:`trainable_parameters` (student and recipe); returns them."""
    chosen = trainable_parameters(model, recipe, phase)
    ids = {id(p) for p in chosen.values()}
    for module in (model, recipe) if recipe is not None else (model,):
        for p in module.parameters():
            p.requires_grad_(id(p) in ids)
    return chosen
