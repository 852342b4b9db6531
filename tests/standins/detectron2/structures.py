"""``Boxes`` and ``Instances`` as detectron2 documents them (the parts detbin uses)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class Boxes:
    """``tensor``: ``[N, 4]`` xyxy absolute pixels."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]


class Instances:
    """Per-image fields of equal length, set as attributes; ``image_size`` is ``(height, width)``."""

    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "_fields", dict(fields))

    def __setattr__(self, name: str, value: Any) -> None:
        self._fields[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def has(self, name: str) -> bool:
        return name in self._fields
