"""Binary-aware cost accounting: parameters, memory, FLOPs, BOPs and OPs of a detector.

Conventions of the 1-bit literature (Bi-Real, ReActNet, BiDet, IDa-Det; methods.md §1.8):

* one multiply-accumulate counts 1: ``FLOPs`` = real MACs, ``BOPs`` = binary MACs (a conv
  whose ``max(input bits, weight bits) == 1``);
* ``OPs = FLOPs + BOPs / 64``;
* BatchNorm, activations, pooling, additions, RoIAlign, NMS are not counted (they are listed);
* memory = 32 bits per real parameter (weights, biases, BN affine, learned and derived
  scales) + 1 bit per binary weight; MB = 10^6 bytes, MiB = 2^20 bytes.

Costs are counted per detector part at a given network input size (after resizing, before
padding), the RoI head of two-stage detectors for exactly ``rois`` proposals.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from detbin.detector import TorchvisionDetector
from detbin.layers import BinaryConv2d, is_binary

__all__ = ["ModuleCost", "Cost", "profile", "NOT_COUNTED"]

NOT_COUNTED = ("batch_norm", "activations (ReLU, PReLU, RPReLU)", "pooling", "additions", "binarizers (sign)",
               "anchor generation", "box decoding", "roi_align", "nms")


@dataclass(frozen=True)
class ModuleCost:
    """One conv/linear layer: MACs, whether they are binary, parameter counts by bit width."""

    name: str
    kind: str
    part: str
    macs: int
    binary: bool
    params_real: int
    params_binary: int


@dataclass(frozen=True)
class Cost:
    """Totals and per-layer costs of a detector at one input size.

    Attributes:
        flops: real MACs; ``bops``: binary MACs; ``ops = flops + bops / 64``.
        params_real / params_binary: parameter counts (binary = 1-bit weights).
        memory_bits: ``32 * params_real + 1 * params_binary``.
    """

    flops: int
    bops: int
    params_real: int
    params_binary: int
    image_size: tuple[int, int]
    rois: int | None
    by_module: list[ModuleCost] = field(default_factory=list)
    real_layers: list[str] = field(default_factory=list)
    counter: str = "forward hooks on Conv2d/Linear"

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    @property
    def memory_bits(self) -> int:
        return 32 * self.params_real + self.params_binary

    @property
    def memory_mb(self) -> float:
        """Memory in MB (10^6 bytes), the unit of LWS-Det/IDa-Det."""
        return self.memory_bits / 8 / 1e6

    @property
    def memory_mib(self) -> float:
        """Memory in MiB (2^20 bytes), the unit of BiDet."""
        return self.memory_bits / 8 / 2**20

    @property
    def binary_mac_share(self) -> float:
        total = self.flops + self.bops
        return self.bops / total if total else 0.0

    def by_part(self) -> dict[str, dict[str, int]]:
        """FLOPs, BOPs and parameters summed per part (backbone, neck, rpn, roi_head, head)."""
        parts: dict[str, dict[str, int]] = OrderedDict()
        for m in self.by_module:
            p = parts.setdefault(m.part, {"flops": 0, "bops": 0, "params_real": 0, "params_binary": 0})
            p["bops" if m.binary else "flops"] += m.macs
            p["params_real"] += m.params_real
            p["params_binary"] += m.params_binary
        return parts

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops, "bops": self.bops, "ops": self.ops, "memory_bits": self.memory_bits,
            "memory_mb": self.memory_mb, "memory_mib": self.memory_mib, "params_real": self.params_real,
            "params_binary": self.params_binary, "binary_mac_share": self.binary_mac_share,
            "image_size": list(self.image_size), "rois": self.rois, "counter": self.counter,
            "real_layers": self.real_layers, "not_counted": list(NOT_COUNTED),
            "by_part": self.by_part(),
        }


def part_of(name: str) -> str:
    """Which part of a detector a module belongs to, from its qualified name."""
    for prefix, part in (("backbone.body", "backbone"), ("backbone.fpn", "neck"), ("backbone", "backbone"),
                         ("rpn", "rpn"), ("roi_heads", "roi_head"), ("head", "head")):
        if name == prefix or name.startswith(prefix + "."):
            return part
    return "other"


def _parameter_counts(model: nn.Module) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(real, binary, per-module) parameter counts; derived XNOR scales count as real."""
    per_module: dict[str, tuple[int, int]] = {}
    real = binary = 0
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, BinaryConv2d):
            own_real = sum(p.numel() for p in own if p is not module.weight)
            own_binary = module.weight.numel() if module.bits[1] == 1 else 0
            own_real += 0 if own_binary else module.weight.numel()
            own_real += module.weight_quantizer.derived_scales(module.weight.shape)
        else:
            own_real, own_binary = sum(p.numel() for p in own), 0
        per_module[name] = (own_real, own_binary)
        real += own_real
        binary += own_binary
    return real, binary, per_module


def _count_macs(run: Any, model: nn.Module) -> dict[str, int]:
    """MACs per Conv2d/Linear module while ``run()`` executes (``out.numel() * C_in/groups * k``)."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            else:
                per_output = module.in_features
            macs[name] = macs.get(name, 0) + output.numel() * per_output
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return macs


def _run_parts(detector: TorchvisionDetector, image_size: tuple[int, int], rois: int) -> None:
    """Forward each part on a dummy input: backbone(+neck), RPN head and RoI head, or dense head."""
    model = detector.model
    device = next(model.parameters()).device
    features = model.backbone(torch.zeros(1, 3, *image_size, device=device))
    maps = list(features.values()) if isinstance(features, dict) else list(features)
    if hasattr(model, "rpn"):
        model.rpn.head(maps)
        pool = model.roi_heads.box_roi_pool
        channels = maps[0].shape[1]
        size = pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
        pooled = torch.zeros(rois, channels, *size, device=device)
        model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    else:
        model.head(maps)


def profile(detector: TorchvisionDetector, image_size: tuple[int, int] | None = None, rois: int = 1000) -> Cost:
    """Count the cost of ``detector`` at ``image_size`` (H, W) with ``rois`` proposals.

    Args:
        image_size: network input size; default the detector's ``min_size`` square.
        rois: proposals through the RoI head of two-stage detectors (the papers test with 1000).
    """
    model = detector.model
    size = tuple(image_size) if image_size else (detector.config.input_size[0],) * 2
    was_training = model.training
    model.eval()
    try:
        macs = _count_macs(lambda: _run_parts(detector, size, rois), model)
    finally:
        model.train(was_training)
    real, binary, per_module = _parameter_counts(model)
    modules = dict(model.named_modules())
    by_module = [
        ModuleCost(name, type(modules[name]).__name__, part_of(name), count, is_binary(modules[name]),
                   *per_module[name])
        for name, count in macs.items()
    ]
    flops = sum(m.macs for m in by_module if not m.binary)
    bops = sum(m.macs for m in by_module if m.binary)
    real_layers = [m.name for m in by_module if not m.binary]
    two_stage = hasattr(model, "rpn")
    return Cost(flops, bops, real, binary, size, rois if two_stage else None, by_module, real_layers)  # type: ignore[arg-type]
