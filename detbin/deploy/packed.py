"""Packed files: a student with its binary weights stored 1 bit each, in safetensors.

Layout (``format: detbin-packed``, version 1):

* every 1-bit weight ``[O, I, kh, kw]`` as ``<layer>.weight_bits``: uint8 ``[O, ceil(I kh kw / 8)]``,
  bit ``j`` of row ``o`` (little bit order: the first weight is the lowest bit) set where the
  sign is +1, rows padded with zero bits; its scale as ``<layer>.weight_quantizer.scale``
  float32 ``[O, 1, 1, 1]`` (absent for unscaled signs);
* every other tensor of the deployed student's ``state_dict`` as it is (float32 real layers, BN
  running statistics; BN's ``num_batches_tracked`` counters are left out);
* the metadata key ``detbin``: JSON with the architecture (:func:`~detbin.deploy.structure.describe`:
  detector config, deployed layout, module swaps), the binary layers' shapes, the class names
  and free-form ``info`` (recipe, source checkpoint).

The file is the accounted memory of ``detbin profile`` (32 bits per real parameter and derived
scale, 1 bit per binary weight) plus the BN running statistics (buffers, 8 bytes per channel)
and the header. :func:`load_packed` rebuilds the student with detbin's core only and runs the
same simulated forward as the checkpoint it came from, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from detbin.deploy.forms import ExportError, binary_weight_layers, deployed, deployed_spec
from detbin.deploy.structure import describe, rebuild
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec

__all__ = ["FORMAT", "VERSION", "pack_signs", "unpack_signs", "save_packed", "load_packed", "read_header",
           "is_packed", "size_breakdown"]

FORMAT, VERSION = "detbin-packed", 1


def pack_signs(signs: Tensor) -> Tensor:
    """±1 tensor ``[O, ...]`` -> uint8 ``[O, ceil(K / 8)]``, K = elements per row (little bit order, zero-padded)."""
    rows = signs.detach().reshape(signs.shape[0], -1).cpu().numpy() > 0
    return torch.from_numpy(np.packbits(rows, axis=1, bitorder="little"))


def unpack_signs(bits: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_signs`: float32 ±1 of ``shape``."""
    k = math.prod(shape[1:])
    flat = np.unpackbits(bits.numpy(), axis=1, count=k, bitorder="little")
    return torch.from_numpy(flat.astype(np.float32) * 2 - 1).reshape(shape)


def _tensors(student: Detector) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The file's tensors and the binary layers' shapes, from a deployed student."""
    state = {k: v.detach().cpu() for k, v in student.model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    layers: dict[str, Any] = {}
    for name, conv in binary_weight_layers(student.model).items():
        state[f"{name}.weight_bits"] = pack_signs(state.pop(f"{name}.weight"))
        layers[name] = {"shape": list(conv.weight.shape)}
    return {k: v.contiguous().clone() for k, v in state.items()}, layers


def save_packed(detector: Detector, spec: BinarizeSpec | None, path: Path, classes: list[str] | None = None,
                info: dict[str, Any] | None = None) -> Path:
    """Write ``detector`` (a simulated student, or a real model with ``spec=None``) as a packed file.

    Args:
        spec: the layout the student was built with (a checkpoint's ``binarize``).
        classes: names of labels 1..K (a checkpoint's ``classes``).
        info: JSON-able extras (recipe name, source checkpoint ...).

    Returns:
        ``path``.

    Raises:
        ExportError: a binary layer whose deploy form does not reproduce its weight, or a
            module that detbin's core cannot rebuild.
    """
    student = deployed(detector)
    layout = deployed_spec(spec) if spec is not None else None
    tensors, layers = _tensors(student)
    header = {"format": FORMAT, "version": VERSION, "bit_order": "little",
              "row_padding": "zero bits to a whole byte, per output channel",
              "architecture": describe(student, layout), "binary_layers": layers, "classes": list(classes or []),
              "info": info or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"detbin": json.dumps(header, separators=(",", ":"))})
    return path


def is_packed(path: Path) -> bool:
    """Whether ``path`` is a safetensors file with detbin's packed metadata."""
    try:
        read_header(path)
    except ExportError:
        return False
    return True


def read_header(path: Path) -> dict[str, Any]:
    """The ``detbin`` metadata of a packed file.

    Raises:
        ExportError: not a safetensors file, not a detbin packed file, or another format version.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ExportError(f"{path}: not a safetensors file ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                          ) from None
    if "detbin" not in meta:
        raise ExportError(f"{path}: a safetensors file without detbin metadata (not written by detbin export)")
    header = json.loads(meta["detbin"])
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ExportError(f"{path}: format {header.get('format')} v{header.get('version')}; this detbin reads "
                          f"{FORMAT} v{VERSION} (upgrade detbin)")
    return header


def load_packed(path: Path) -> tuple[Detector, dict[str, Any]]:
    """The student of a packed file, rebuilt with detbin's core only (eval mode), and its header.

    Raises:
        ExportError: an unreadable file, or tensors that do not fit the recorded architecture.
    """
    header = read_header(path)
    detector = rebuild(header["architecture"])
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, layer in header["binary_layers"].items():
        if f"{name}.weight_bits" not in tensors:
            raise ExportError(f"{path}: {name}.weight_bits is missing; the file is damaged, export it again")
        tensors[f"{name}.weight"] = unpack_signs(tensors.pop(f"{name}.weight_bits"), tuple(layer["shape"]))
    model_state = detector.model.state_dict()
    for key, value in model_state.items():
        if key.endswith("num_batches_tracked"):
            tensors.setdefault(key, torch.zeros_like(value))
    missing, unexpected = sorted(set(model_state) - set(tensors)), sorted(set(tensors) - set(model_state))
    if missing or unexpected:
        raise ExportError(f"{path}: tensors do not fit the recorded architecture (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); the file is damaged or from another detbin")
    detector.model.load_state_dict(tensors, strict=True)
    detector.model.eval()
    return detector, header


def size_breakdown(path: Path) -> dict[str, int]:
    """Bytes of a packed file by kind: header, sign bits, scales, BN running statistics, other real tensors."""
    raw = Path(path).read_bytes()[:8]
    out = {"header": 8 + int.from_bytes(raw, "little"), "bits": 0, "scales": 0, "bn_running": 0, "real": 0}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            t = f.get_slice(k)
            n = math.prod(t.get_shape()) * _DTYPE_BYTES[t.get_dtype()]
            kind = ("bits" if k.endswith(".weight_bits") else "scales" if k.endswith(".weight_quantizer.scale")
                    else "bn_running" if k.endswith((".running_mean", ".running_var")) else "real")
            out[kind] += n
    return out


_DTYPE_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "I32": 4, "F64": 8, "I64": 8, "BOOL": 1}
