"""The trainer-hook base class (detectron2's HookBase idea): every method is a no-op.

Built-in hooks are in :mod:`detbin.training.hooks`; recipes add their own through
``Recipe.hooks()``. The trainer is passed explicitly (no weak back-reference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detbin.training.trainer import Trainer

__all__ = ["Hook"]


class Hook:
    """Base class of trainer hooks; every method is a no-op. The trainer is passed explicitly."""

    def before_train(self, trainer: Trainer) -> None: ...
    def before_step(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State to resume with (e.g. the best metric so far)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
