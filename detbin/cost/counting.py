"""The two MAC counters behind :mod:`detbin.profile`: fvcore (primary) and FlopCounterMode (check).

Both count multiply-accumulates of convolutions and matrix products only, per module:

* **fvcore** ``FlopCountAnalysis`` JIT-traces the part on zero tensors of the real input shapes.
  Its handles that count something other than MACs (``batch_norm``, ``group_norm``,
  ``upsample_*``, ``adaptive_avg_pool2d`` ...) are replaced by handles that count 0 but record
  the call, so BN, activations, pooling, additions and the binarizers' element-wise ops are
  listed by name with their number of calls, never counted.
* ``torch.utils.flop_counter.FlopCounterMode`` intercepts the dispatched aten ops. It counts
  2 FLOPs per MAC (halved here) and runs on ``meta`` tensors: shapes are all a MAC count
  needs, so it costs no arithmetic. Its output shapes feed the next part.

fvcore is imported in this module only (architecture.md §3.1). When it cannot trace a part,
that part falls back to FlopCounterMode and :attr:`Counted.counter` says so (gotcha 5).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Counted", "count", "tensors"]

log = logging.getLogger(__name__)

# fvcore handles for work that is not a MAC, plus ops fvcore ignores silently that the papers
# name as "not counted" (ReLU, clamp, the sign's comparison): recorded, counted as 0.
_LISTED_OPS = (
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d", "aten::grid_sampler",
    "aten::relu", "aten::relu_", "aten::clamp", "aten::clamp_", "aten::ge", "aten::max", "aten::constant_pad_nd",
)
_CHILD = "model"  # attribute under which a part wrapper holds the counted module


@dataclass(frozen=True)
class Counted:
    """MACs of one traced part, keyed by module name relative to the counted module.

    Attributes:
        macs: the primary counter's MACs per module (a module's own ops, children excluded).
        check_macs: FlopCounterMode's MACs per module, same keys.
        not_counted: op name (``batch_norm``, ``add``, ``max_pool2d`` ...) -> calls seen.
        counter: ``"fvcore"``, or ``"FlopCounterMode"`` with the reason fvcore failed.
        outputs: the part's output tensors on the ``meta`` device (their shapes).
    """

    macs: dict[str, int]
    check_macs: dict[str, int]
    not_counted: Counter[str] = field(default_factory=Counter)
    counter: str = "fvcore"
    outputs: tuple[Tensor, ...] = ()


def tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor in nested dicts, lists and tuples, in order (tracing wants flat tuples)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)


class _Part(nn.Module):
    """Calls ``run(module, *inputs)`` and returns its tensors as a flat tuple."""

    def __init__(self, module: nn.Module, run: Callable[..., Any]) -> None:
        super().__init__()
        self.add_module(_CHILD, module)
        self.run = run

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensors(self.run(getattr(self, _CHILD), *inputs)))


def _own(totals: dict[str, int], root: str) -> dict[str, int]:
    """Per-module totals that include descendants -> each module's own count, renamed.

    A key's own count is its total minus the totals of the keys whose nearest present
    ancestor it is (both counters credit an op to every module on the call stack). Names
    become relative to the counted module; its own ops and the wrapper's are keyed ``""``.
    """
    own = dict(totals)
    for name, total in totals.items():
        parent = _parent(name)
        while parent is not None and parent not in totals:
            parent = _parent(parent)
        if parent is not None:
            own[parent] -= total
    child = f"{root}.{_CHILD}" if root else _CHILD
    renamed: Counter[str] = Counter()
    for name, n in own.items():
        if n and (name in (root, child) or name.startswith(child + ".")):
            renamed[name[len(child) + 1:]] += n
    return dict(renamed)


def _parent(name: str) -> str | None:
    return name.rsplit(".", 1)[0] if "." in name else ("" if name else None)


# fvcore's trace runs the part once for real. oneDNN JIT-compiles a kernel for every new conv
# shape: on a small part that costs more than it saves (about 2x on the tiny FPN detectors),
# on a large one its kernels win by far (3x on R50-FPN at 800x800, where the trace dominated
# the profile's time). The cheap meta-tensor count, made first, tells which part is which.
ONEDNN_MIN_MACS = 20e9


@contextlib.contextmanager
def _quiet_kernels(macs: int = 0) -> Iterator[None]:
    """No autograd, no warnings; ATen's own convolutions below ``ONEDNN_MIN_MACS``, oneDNN's above.

    Counts depend on shapes only, so the kernel choice cannot change them.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; mkldnn.flags warns about TF32 on CPU builds
        with torch.backends.mkldnn.flags(enabled=macs >= ONEDNN_MIN_MACS):
            yield


def _count_dispatch(part: _Part, inputs: list[Tensor]) -> tuple[dict[str, int], tuple[Tensor, ...]]:
    """FlopCounterMode MACs per module, on meta tensors (real ones if a meta kernel is missing)."""
    state = {k: torch.empty_like(v, device="meta") for k, v in (*part.named_parameters(), *part.named_buffers())}
    meta = [torch.empty_like(x, device="meta") for x in inputs]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            outputs = functional_call(part, state, tuple(meta))
    except Exception as exc:  # noqa: BLE001 - a missing meta kernel raises many types; real tensors tell
        log.info("FlopCounterMode on meta tensors failed (%s); counting on real tensors", exc)
        with _quiet_kernels(), FlopCounterMode(display=False) as counter:
            outputs = part(*inputs)
        outputs = tuple(torch.empty_like(o, device="meta") for o in outputs)
    per_module = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items() if k != "Global"}
    return _own(per_module, type(part).__name__), outputs


def _count_fvcore(part: _Part, inputs: list[Tensor], macs: int = 0) -> tuple[dict[str, int], Counter[str]]:
    """fvcore MACs per module and the calls of every op it did not count, by op name.

    ``macs``: the part's MACs as the meta-tensor count found them (picks the conv kernels).
    """
    with warnings.catch_warnings():  # fvcore.nn scripts a loss at import; torch warns about it
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    listed: Counter[str] = Counter()

    def listing(op: str) -> Callable[[Any, Any], int]:
        def handle(inputs: Any, outputs: Any) -> int:
            listed[op] += 1
            return 0
        return handle

    analysis = FlopCountAnalysis(part, tuple(inputs))
    analysis.set_op_handle(**{op: listing(op) for op in _LISTED_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with _quiet_kernels(macs):
        totals = dict(analysis.by_module())
    listed.update(analysis.unsupported_ops())
    names: Counter[str] = Counter()
    for op, n in listed.items():  # "aten::add_" and "aten::add" are both additions
        names[op.split("::")[-1].rstrip("_")] += n
    return _own(totals, ""), names


def count(module: nn.Module, run: Callable[..., Any], inputs: list[Tensor]) -> Counted:
    """Count the MACs of ``run(module, *inputs)`` with both counters.

    Args:
        module: the model whose submodules are named in the result (e.g. a detector).
        run: calls the part, e.g. ``lambda m, x: m.backbone(x)``; may return nested
            dicts/lists of tensors.
        inputs: real tensors with the part's input shapes (values do not change a count).

    Returns:
        Per-module MACs of both counters, the ops left uncounted and the output shapes.
    """
    part = _Part(module, run)
    check, outputs = _count_dispatch(part, inputs)
    try:
        macs, not_counted = _count_fvcore(part, inputs, sum(check.values()))
        counter = "fvcore"
    except Exception as exc:  # noqa: BLE001 - JIT tracing fails in many ways; fall back, say why
        log.warning("fvcore could not trace this part (%s: %s); using FlopCounterMode", type(exc).__name__, exc)
        macs, not_counted = check, Counter()
        counter = f"FlopCounterMode (fvcore failed: {type(exc).__name__})"
    return Counted(macs, check, not_counted, counter, outputs)
