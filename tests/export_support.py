"""Students for the export tests: any recipe's untrained student with non-trivial state (importable as a module)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detbin.app.build import layout_spec, make_student
from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.binary.quantizers import RSign
from detbin.config import validate_params
from detbin.models.config import DetectorConfig, tiny_config
from detbin.models.detector import build_detector
from detbin.training import plugins

__all__ = ["full_config", "images", "perturb", "save_student", "student", "tiny_config"]


def full_config() -> DetectorConfig:
    """The papers' VOC R18-FPN: 21 classes, 600x1000 test size."""
    return DetectorConfig(arch="fasterrcnn_resnet18_fpn", num_classes=21, min_size=600, max_size=1000)


def student(recipe_name: str, config: DetectorConfig, seed: int = 0, params: dict[str, Any] | None = None):
    """``(student in eval mode, binarized conv names, spec)`` of ``recipe_name`` on ``config``, state perturbed."""
    torch.manual_seed(seed)
    cls = plugins.load(recipe_name)
    recipe = cls(validate_params(cls.Params, params or {}, recipe_name))
    spec = layout_spec(cls)
    detector, binarized = make_student(build_detector(config), recipe, spec)
    perturb(detector.model, seed)
    detector.model.eval()
    return detector, binarized, spec


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine terms, RSign shifts, (R)PReLU parameters, learned scales, binary conv biases.

    Biases matter: IDa-Det's BiConv gets a zero bias, so an untrained student's binary conv
    outputs ``scale * n`` are exactly 0 wherever the popcount balances (n = 0), and a float
    sum of ``±scale`` gives ±1e-9 there instead: the next sign of such a value is noise.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=g) * (hi - lo) + lo

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(rand(m.running_var, 0.5, 2.0))
            m.weight.copy_(rand(m.weight, 0.5, 1.5))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, RSign):
            m.shift.copy_(torch.randn(m.shift.shape, generator=g) * 0.1)
        elif isinstance(m, RPReLU):
            m.shift_in.copy_(torch.randn(m.shift_in.shape, generator=g) * 0.1)
            m.shift_out.copy_(torch.randn(m.shift_out.shape, generator=g) * 0.1)
            m.prelu.weight.copy_(rand(m.prelu.weight, 0.05, 0.5))
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(rand(m.weight, 0.05, 0.5))
        elif type(m).__name__ in ("LearnedScaleSign", "BiConvWeight"):
            m.scale.mul_(rand(m.scale, 0.5, 1.5))
        elif isinstance(m, BinaryConv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)


def images(seed: int = 3) -> list[torch.Tensor]:
    """Two images of different sizes (0..1)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 128, 160, generator=g), torch.rand(3, 96, 128, generator=g)]


def save_student(path, recipe_name: str, config: DetectorConfig, classes: tuple[str, ...], seed: int = 0):
    """A student checkpoint as ``detbin binarize`` writes it (untrained, state perturbed); returns the student."""
    from detbin.app.run_files import student_payload
    from detbin.models.checkpoint import save_atomic

    detector, _, spec = student(recipe_name, config, seed)
    recipe = plugins.load(recipe_name)()
    save_atomic(student_payload("student", detector, spec, recipe, classes, {}, {}), path)
    return detector
