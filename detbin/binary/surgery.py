"""Module surgery: swap modules in place, keeping every qualified name.

Name preservation is a design invariant: the student is a deep copy of the teacher, so a
module called ``backbone.fpn.layer_blocks.0`` in one is the same layer in the other, and taps
line up by name without a mapping table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detbin.binary.layers import BinaryConv2d, is_binary

__all__ = [
    "binarize", "set_submodule", "matches_any", "unfreeze", "fix_activations_before_binary",
    "channels_of", "execution_order",
]

Choose = Callable[[str, nn.Conv2d], "nn.Module | None"]
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.LeakyReLU, nn.GELU)
_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the module at dotted path ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches one of the shell-style ``patterns`` (``*`` spans dots)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def binarize(model: nn.Module, choose: Choose) -> list[str]:
    """Swap every ``nn.Conv2d`` for which ``choose(name, conv)`` returns a module.

    Already-binary convs are skipped. The model is modified in place.

    Returns:
        The qualified names of the swapped convs, in registration (≈ forward) order.
    """
    candidates = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not isinstance(m, BinaryConv2d)
    ]
    swapped = []
    for name, conv in candidates:
        new = choose(name, conv)
        if new is not None:
            set_submodule(model, name, new)
            swapped.append(name)
    return swapped


def unfreeze(model: nn.Module) -> int:
    """Make every layer trainable: FrozenBatchNorm2d becomes BatchNorm2d, all params require grad.

    torchvision's detection builders freeze BatchNorm (and early stages when pretrained);
    a 1-bit student must train all of them (architecture.md §5.1).

    Returns:
        The number of FrozenBatchNorm2d modules converted.
    """
    frozen = [(n, m) for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    for name, fbn in frozen:
        bn = nn.BatchNorm2d(fbn.weight.numel(), eps=fbn.eps).to(fbn.weight.device)
        with torch.no_grad():
            bn.weight.copy_(fbn.weight)
            bn.bias.copy_(fbn.bias)
            bn.running_mean.copy_(fbn.running_mean)
            bn.running_var.copy_(fbn.running_var)
        set_submodule(model, name, bn)
    for p in model.parameters():
        p.requires_grad_(True)
    return len(frozen)


def channels_of(module: nn.Module) -> int | None:
    """Output channel count of a conv or norm layer, else None."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return module.weight.numel()
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None


def execution_order(model: nn.Module, run: Callable[[], object]) -> list[tuple[str, nn.Module]]:
    """The leaf modules (and convs) of ``model`` in the order ``run()`` calls them, repeats included."""
    from detbin.binary.quantizers import Quantizer

    calls: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in model.named_modules():
        atomic = isinstance(module, nn.Conv2d) or not list(module.children())
        if atomic and not isinstance(module, Quantizer):
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: calls.append((n, m))))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return calls


def fix_activations_before_binary(
    model: nn.Module,
    make_activation: Callable[[int], nn.Module],
    run: Callable[[], object],
    skip: Sequence[str] = (),
) -> list[str]:
    """Replace activations whose output feeds a binary conv's sign.

    ``sign(ReLU(x))`` is +1 everywhere, so a binary conv fed by a ReLU sees a constant input.
    BNNs therefore put a norm (XNOR-Net: BN -> sign -> conv) and no ReLU before each binary
    conv. For an activation whose next conv *in execution order* (recorded while ``run()``
    does one forward pass) is binary, this inserts a ``BatchNorm2d`` when no norm sits
    between the previous conv and the activation, then ``make_activation(C)`` (Identity for
    the XNOR/Bi-Real forms, RPReLU for ReActNet). Modules under ``skip`` (ResNet bodies,
    whose blocks :mod:`detbin.binary_blocks` converts explicitly) are left alone.

    Returns:
        The names of the replaced activations.
    """
    calls = execution_order(model, run)
    skip_patterns = [f"{s}.*" for s in skip]
    decided: dict[str, nn.Module] = {}
    for i, (name, module) in enumerate(calls):
        if name in decided or not isinstance(module, _ACTIVATIONS) or matches_any(name, skip_patterns):
            continue
        nxt = next((m for _, m in calls[i + 1:] if isinstance(m, nn.Conv2d)), None)
        if nxt is None or not is_binary(nxt):
            continue
        prev = next((m for _, m in reversed(calls[:i]) if channels_of(m) is not None), None)
        channels = channels_of(prev) if prev is not None else None
        if channels is None:
            continue
        new = make_activation(channels)
        if isinstance(prev, nn.Conv2d):
            new = nn.Sequential(nn.BatchNorm2d(channels), new)
        decided[name] = new
    for name, new in decided.items():
        set_submodule(model, name, new)
    return list(decided)
