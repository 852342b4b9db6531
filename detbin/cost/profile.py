"""Binary-aware cost accounting: parameters, memory, FLOPs, BOPs and OPs of a detector.

Conventions of the 1-bit literature (Bi-Real, ReActNet, BiDet, IDa-Det; methods.md §1.8):

* one multiply-accumulate counts 1: ``FLOPs`` = real MACs, ``BOPs`` = binary MACs (a conv
  whose ``max(input bits, weight bits) == 1``, :func:`detbin.layers.is_binary`);
* ``OPs = FLOPs + BOPs / 64``;
* BatchNorm, activations, pooling, additions and the binarizers are not counted; they are
  listed by op name with their number of calls. Detection ops outside the counted parts
  (anchors, box decoding, RoIAlign, NMS, the input transform) are listed by name;
* memory = 32 bits per real parameter (weights, biases, BN affine, learned and derived
  scales) + 1 bit per binary weight; MB = 10^6 bytes, MiB = 2^20 bytes. Frozen parameters
  count too (mmcv's counter leaves them out, performance.md §1.3).

A detector is counted per part on the network input of exactly ``image_size`` (after
resizing, before padding): backbone (+FPN), then the RPN head and the RoI head of two-stage
detectors for exactly ``rois`` pooled RoIs, or the dense head. MACs come from fvcore, checked
against ``FlopCounterMode`` (:mod:`detbin.counting`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from detbin.cost.counting import Counted, count
from detbin.models.detector import Detector
from detbin.core.errors import ConfigError
from detbin.binary.layers import BinaryConv2d, is_binary

__all__ = ["ModuleCost", "CrossCheck", "Cost", "profile", "profile_module", "part_of", "NOT_TRACED", "PARTS"]

PARTS = ("backbone", "neck", "rpn", "roi_head", "head", "model", "other")
# Work a detector does outside the counted parts; listed, never counted (value None in not_counted).
NOT_TRACED: dict[str, tuple[str, ...]] = {
    "two_stage": ("input transform (normalize, resize)", "anchor generation", "proposal decoding (RPN)",
                  "nms (RPN proposals)", "roi_align (MultiScaleRoIAlign)", "box decoding", "nms (postprocess)"),
    "dense": ("input transform (normalize, resize)", "anchor/point generation", "box decoding",
              "nms (postprocess)"),
    "backbone_only": ("input transform", "the heads (the family's detector has no torchvision RPN/RoI or dense "
                      "head to count; only its backbone is counted)"),
}


@dataclass(frozen=True)
class ModuleCost:
    """One layer with MACs: its part, MACs, whether they are binary, own parameters by bit width."""

    name: str
    kind: str
    part: str
    macs: int
    binary: bool
    params_real: int
    params_binary: int


@dataclass(frozen=True)
class CrossCheck:
    """The second counter's totals (MACs, split by the same binary rule) and the disagreement.

    Attributes:
        rel_diff: ``|primary MACs - check MACs| / primary MACs``.
        differing: layers whose MACs differ between the two counters.
    """

    counter: str
    flops: int
    bops: int
    rel_diff: float
    differing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cost:
    """Totals and per-layer costs of a model at one input size.

    Attributes:
        flops: real MACs; ``bops``: binary MACs; ``ops = flops + bops / 64``.
        params_real / params_binary: parameter counts (binary = 1-bit weights; real includes
            XNOR's derived per-channel scales).
        image_size: network input ``(H, W)``; ``rois``: RoIs through a two-stage head, else None.
        by_module: layers with MACs, in execution order; ``real_layers``: those kept real.
        counter: the MAC counter used (per part when they differ); ``cross_check``: the other.
        not_counted: op or stage name -> calls seen (None: outside the counted parts).
        part_params: part -> (real, binary) parameters of every module in it.
        unreached: conv/linear layers that no counted part ran.
    """

    flops: int
    bops: int
    params_real: int
    params_binary: int
    image_size: tuple[int, int] | None
    rois: int | None
    by_module: list[ModuleCost] = field(default_factory=list)
    real_layers: list[str] = field(default_factory=list)
    counter: str = "fvcore"
    cross_check: CrossCheck | None = None
    not_counted: dict[str, int | None] = field(default_factory=dict)
    part_params: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)

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

    def by_part(self) -> dict[str, dict[str, Any]]:
        """FLOPs, BOPs, OPs, parameters, memory (MB) and binary MAC share per part."""
        sums: dict[str, Counter[str]] = {}
        for part, (real, binary) in self.part_params.items():
            sums.setdefault(part, Counter()).update(params_real=real, params_binary=binary)
        for m in self.by_module:
            sums.setdefault(m.part, Counter())["bops" if m.binary else "flops"] += m.macs
        parts: dict[str, dict[str, Any]] = {}
        for part in sorted(sums, key=lambda p: PARTS.index(p) if p in PARTS else len(PARTS)):
            s = sums[part]
            flops, bops, real, binary = s["flops"], s["bops"], s["params_real"], s["params_binary"]
            parts[part] = {"flops": flops, "bops": bops, "ops": flops + bops / 64, "params_real": real,
                           "params_binary": binary, "memory_mb": (32 * real + binary) / 8e6,
                           "binary_mac_share": bops / (flops + bops) if flops + bops else 0.0}
        return parts

    def ratios(self, other: Cost) -> dict[str, float | None]:
        """``other / self`` for memory, OPs, FLOPs, MACs and parameters (>1: this one is smaller)."""
        pairs = {"memory": (other.memory_bits, self.memory_bits), "ops": (other.ops, self.ops),
                 "flops": (other.flops, self.flops), "macs": (other.flops + other.bops, self.flops + self.bops),
                 "params": (other.params_real + other.params_binary, self.params_real + self.params_binary)}
        return {f"{k}_ratio": (a / b if b else None) for k, (a, b) in pairs.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        check = self.cross_check
        return {
            "flops": self.flops, "bops": self.bops, "ops": self.ops, "macs": self.flops + self.bops,
            "memory_bits": self.memory_bits, "memory_mb": self.memory_mb, "memory_mib": self.memory_mib,
            "params_real": self.params_real, "params_binary": self.params_binary,
            "binary_mac_share": self.binary_mac_share,
            "image_size": list(self.image_size) if self.image_size else None, "rois": self.rois,
            "counter": self.counter,
            "cross_check": None if check is None else {**check.__dict__, "differing": list(check.differing)},
            "real_layers": self.real_layers, "not_counted": self.not_counted, "unreached": self.unreached,
            "by_part": self.by_part(), "by_module": [m.__dict__ for m in self.by_module],
        }


def part_of(name: str) -> str:
    """Which part of a torchvision detector a module belongs to, from its qualified name."""
    for prefix, part in (("backbone.fpn", "neck"), ("backbone", "backbone"), ("rpn", "rpn"),
                         ("roi_heads", "roi_head"), ("head", "head")):
        if name == prefix or name.startswith(prefix + "."):
            return part
    return "other"


def _deployed_scales(conv: BinaryConv2d) -> int | None:
    """Real values a 1-bit conv stores beside its signs once deployed: its deploy form's scale.

    None for a weight quantizer without a deploy form (then its own parameters are counted).
    """
    try:
        _, scale = conv.weight_quantizer.deploy(conv.weight.detach())
    except TypeError:
        return None
    return 0 if scale is None else scale.numel()


def _parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Own (real, binary) parameters per module, as the deployed student stores them.

    A 1-bit conv counts its signs (1 bit each) and the real scale of its weight quantizer's
    deploy form, never the quantizer's training state (LWS-Det's two search logits per
    weight); derived XNOR scales count as real.
    """
    per_module: dict[str, tuple[int, int]] = {}
    deployed: set[int] = set()  # weight quantizers counted through their conv's deploy form
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        real, binary = sum(p.numel() for p in own), 0
        if id(module) in deployed:
            real = 0
        elif isinstance(module, BinaryConv2d):
            scales = _deployed_scales(module) if module.bits[1] == 1 else None
            if module.bits[1] == 1:  # 1-bit weights, whatever the input bits
                real, binary = real - module.weight.numel(), module.weight.numel()
            if scales is None:
                real += module.weight_quantizer.derived_scales(module.weight.shape)
            else:
                real += scales
                deployed.add(id(module.weight_quantizer))
        per_module[name] = (real, binary)
    return per_module


def _cross_check(macs: Counter[str], check: Counter[str], modules: dict[str, nn.Module]) -> CrossCheck:
    total, check_total = sum(macs.values()), sum(check.values())
    bops = sum(n for name, n in check.items() if name in modules and is_binary(modules[name]))
    differing = tuple(sorted(name for name in set(macs) | set(check) if macs[name] != check[name]))
    rel = abs(total - check_total) / total if total else float(check_total != 0)
    return CrossCheck("torch.utils.flop_counter.FlopCounterMode", check_total - bops, bops, rel, differing)


def _assemble(model: nn.Module, counted: Sequence[tuple[str, Counted]], image_size: tuple[int, int] | None,
              rois: int | None, part: Callable[[str], str], not_traced: Sequence[str]) -> Cost:
    """One :class:`Cost` from the per-part counts and the parameters of ``model``."""
    modules = dict(model.named_modules())
    params = _parameter_counts(model)
    macs: Counter[str] = Counter()
    check: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    for _, c in counted:
        macs.update(c.macs)
        check.update(c.check_macs)
        ops.update(c.not_counted)
    by_module = [ModuleCost(name, type(modules[name]).__name__, part(name), n, is_binary(modules[name]),
                            *params[name]) for name, n in macs.items()]
    part_params: dict[str, tuple[int, int]] = {}
    for name, (real, binary) in params.items():
        r, b = part_params.get(part(name), (0, 0))
        part_params[part(name)] = (r + real, b + binary)
    counters = {c.counter for _, c in counted}
    return Cost(
        flops=sum(m.macs for m in by_module if not m.binary), bops=sum(m.macs for m in by_module if m.binary),
        params_real=sum(r for r, _ in params.values()), params_binary=sum(b for _, b in params.values()),
        image_size=image_size, rois=rois, by_module=by_module,
        real_layers=[m.name for m in by_module if not m.binary],
        counter=counters.pop() if len(counters) == 1 else "; ".join(f"{p}: {c.counter}" for p, c in counted),
        cross_check=_cross_check(macs, check, modules),
        not_counted={**dict(ops.most_common()), **{name: None for name in not_traced}},
        part_params={p: v for p, v in part_params.items() if any(v)},
        unreached=[n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in macs],
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def profile_module(module: nn.Module, inputs: Sequence[Tensor], run: Callable[..., Any] | None = None) -> Cost:
    """Count any module on ``inputs`` (one part, named ``model``); the entry point for plain models.

    Args:
        module: the model; its layers are named as in ``module.named_modules()``.
        inputs: example inputs (only their shapes matter), e.g. ``[torch.zeros(1, 3, 32, 32)]``.
        run: how to call it (default ``module(*inputs)``); may return nested tensors.
    """
    with _eval_mode(module):
        counted = count(module, run or (lambda m, *x: m(*x)), list(inputs))
    first = inputs[0] if inputs else None
    size = tuple(first.shape[-2:]) if first is not None and first.dim() >= 3 else None
    return _assemble(module, [("model", counted)], size, None, lambda name: "model", ())  # type: ignore[arg-type]


def _count_parts(model: nn.Module, size: tuple[int, int], rois: int) -> list[tuple[str, Counted]]:
    """Count backbone(+FPN), then RPN and RoI heads on ``rois`` pooled RoIs, or the dense head."""
    p = next(model.parameters())

    def zeros(shape: Sequence[int]) -> Tensor:
        return torch.zeros(tuple(shape), device=p.device, dtype=p.dtype)

    backbone = count(model, lambda m, x: m.backbone(x), [zeros((1, 3, *size))])
    maps = [zeros(o.shape) for o in backbone.outputs]
    if not hasattr(model, "rpn") and not hasattr(model, "head"):
        return [("backbone", backbone)]
    if not hasattr(model, "rpn"):
        return [("backbone", backbone), ("head", count(model, lambda m, *f: m.head(list(f)), maps))]
    rpn = count(model, lambda m, *f: m.rpn.head(list(f)), maps)
    pool = model.roi_heads.box_roi_pool.output_size
    pooled = zeros((rois, maps[0].shape[1], *((pool,) * 2 if isinstance(pool, int) else pool)))
    roi = count(model, lambda m, x: m.roi_heads.box_predictor(m.roi_heads.box_head(x)), [pooled])
    return [("backbone", backbone), ("rpn", rpn), ("roi_head", roi)]


def profile(detector: Detector, image_size: Sequence[int] | None = None, rois: int | None = None) -> Cost:
    """Count the cost of ``detector`` at ``image_size`` (H, W) with ``rois`` proposals.

    Args:
        image_size: network input size in pixels; default the detector's
            ``(min_size, max_size)`` (600x1000 for the papers' VOC setting, 300x300 for SSD300).
        rois: proposals through the RoI head of two-stage detectors; default the detector's own
            test-time count ``rpn_post_nms_top_n_test`` (1000, the papers' setting, for full-size
            torchvision models; 150 for the tiny CPU configs), so one model has one RoI convention.

    Raises:
        ConfigError: a non-positive image side or RoI count.
    """
    model = detector.model
    size = (int(image_size[0]), int(image_size[1])) if image_size else tuple(detector.config.input_size)
    if min(size) <= 0:
        raise ConfigError(f"image size {size[0]}x{size[1]}: both sides must be positive (--image-size H W)")
    if rois is None:
        rois = int(getattr(detector.config, "rpn_post_nms_top_n_test", 1000))
    if rois <= 0:
        raise ConfigError(f"rois {rois}: a two-stage head needs at least 1 RoI (--rois N)")
    with _eval_mode(model):
        counted = _count_parts(model, size, rois)  # type: ignore[arg-type]
    two_stage = hasattr(model, "rpn")
    kind = "two_stage" if two_stage else "dense" if hasattr(model, "head") else "backbone_only"
    return _assemble(model, counted, size, rois if two_stage else None, part_of,  # type: ignore[arg-type]
                     NOT_TRACED[kind])
