"""Helpers shared by tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from detbin.models.config import tiny_config


def toy_config(arch: str = "fasterrcnn_resnet18_fpn", **overrides):
    """Smaller still than the tiny config: 32-channel FPN, 96-px images, few proposals."""
    values = dict(fpn_channels=32, representation_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=64,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32)
    if arch.startswith(("fasterrcnn", "retinanet", "fcos")):  # SSD families keep their fixed input size
        values.update(min_size=96, max_size=96)
    if arch.startswith("fcos"):  # GroupNorm(32, C) on a 1x1 P7 map needs 2+ channels per group
        values.update(fpn_channels=64)
    return tiny_config(arch, **{**values, **overrides})


def install_distribution(root, name: str, version: str, groups: dict[str, dict[str, str]],
                         modules: dict[str, str] = ()) -> None:
    """A throwaway installed distribution in folder ``root``: ``<name>-<version>.dist-info`` with
    entry points ``{group: {entry name: "module:attr"}}``, plus module files ``{module: source}``.
    Put ``root`` on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) to install it."""
    import textwrap
    from pathlib import Path

    info = Path(root) / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [f"[{group}]\n" + "\n".join(f"{k} = {v}" for k, v in entries.items()) for group, entries in groups.items()]
    (info / "entry_points.txt").write_text("\n\n".join(sections) + "\n")
    for module, source in dict(modules).items():
        (Path(root) / f"{module}.py").write_text(textwrap.dedent(source))


def run_until(args: list[str], env: dict, path, ready, timeout: float = 180.0, sig=None):
    """Start ``args``; once ``ready(checkpoint dict)`` holds for the checkpoint at ``path``, send
    ``sig`` (SIGKILL by default) and wait. Returns the checkpoint as it was when the signal went."""
    import signal
    import subprocess
    import time

    from detbin.models import checkpoint

    victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline, state = time.monotonic() + timeout, None
    while victim.poll() is None and time.monotonic() < deadline:
        try:
            state = checkpoint.read(path)
        except Exception:  # not written yet, or being replaced
            state = None
        if state is not None and ready(state):
            break
        time.sleep(0.02)
    victim.send_signal(sig or signal.SIGKILL)
    victim.communicate(timeout=timeout)
    return state


def same_tensors(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (or exist in one dict only), recursing into nested dicts."""
    import torch

    out = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{key}.{k}" for k in same_tensors(x, y)]
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                out.append(str(key))
        elif x != y:
            out.append(str(key))
    return out
