"""OpenVINO export: backbone + FPN + RPN head with real BinaryConvolution layers (OpenVINO 2026.4 CPU plugin).

Construction:

1. :class:`MarkedBinaryConv` replaces every binary conv (binary input *and* weights) of the
   exported part by ``conv2d(torch.sign(x + shift), signs) * scale + bias``; ``torch.sign`` is a
   marker only (its value at 0 is 0), the zero padding stays on the conv;
2. ``ov.convert_model`` (PyTorch frontend, TorchScript trace at a small size, then reshaped to a
   static size: the CPU BinaryConvolution has no dynamic shapes). The frontend already fuses:
   the scale Multiply (and a BN) is folded into the ±1 weights;
3. :func:`insert_binarization` replaces each ``Sign(x [+ c]) -> Convolution(W)`` by
   ``FakeQuantize(levels=2) -> BinaryConvolution(sign bits of W, xnor-popcount, pad_value=0)
   -> Multiply(|W_o|)``, built directly (the plugin's ``ConvToBinaryConv`` needs exactly ±1
   weights, which the frontend's folding destroys). ``pad_value=0`` makes the kernel leave the
   pad out of the popcount: exactly the simulation's zero padding after the sign. The weight
   bits are a u1 constant built from raw bytes, lowest bit first (the plugin's order);
4. the CPU plugin fuses BN, bias, shortcut adds and RPReLU/PReLU into BinaryConvolution
   post-ops and runs ``jit_avx2_u1`` (or the SSE4.1/AVX-512 variants).

Traps (OpenVINO 2026.4.1, measured): ``FakeQuantize(t, t, -1, +1)`` (a zero-width window)
divides by zero inside the plugin and gives wrong values; a BinaryConvolution with a fused
residual add *and* a fused output binarization computes wrong values
(``bench/openvino_fusion_bug.py`` reproduces it without detbin), so :func:`_binarization` picks the form the
plugin does not fuse there; the onnxscript optimizer folds BN into the ±1 weights (this path does
not go through ONNX); the AVX2 kernel accepts zero padding <= 2 only (a dilated conv with
padding 6, SSD's conv6, fails to compile: pad it with -1 instead or keep it real).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import RSign
from detbin.deploy.forms import ExportError, check_deploy
from detbin.models.detector import Detector

__all__ = ["MarkedBinaryConv", "ExportedPart", "exported_part", "insert_binarization", "layer_counts",
           "to_openvino", "compile_model", "require_openvino", "INSTALL_HINT", "WINDOW", "PAD_BIG"]

INSTALL_HINT = "pip install 'detbin[openvino]'"
WINDOW = 2.0 ** -8  # half-width of the -1/+1 FakeQuantize input window, relative to max(1, |t|)
PAD_BIG = 3.0e38  # value before the sign that binarizes to ±1 at any threshold (±1 padding)
FLT_MIN = np.float32(np.finfo(np.float32).tiny)  # smallest normal float: the plugin flushes denormals (DAZ)


def require_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        ExportError: it is not installed (the message is the install command).
    """
    try:
        import openvino as ov
    except ImportError:
        raise ExportError(f"the openvino export needs OpenVINO, which is not installed: {INSTALL_HINT}") from None
    return ov


def _per_channel(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().reshape(1, -1, 1, 1).clone()


class MarkedBinaryConv(nn.Module):
    """A binary conv in the form OpenVINO converts: sign marker, ±1 weights, scale and bias after.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H_out, W_out]``. In torch, ``torch.sign`` maps 0 to
    0, so this module is only meant to be traced; it is not the simulation.
    """

    def __init__(self, conv: BinaryConv2d, name: str = "") -> None:
        super().__init__()
        signs, scale = check_deploy(conv.weight_quantizer, conv.weight, name)
        self.register_buffer("signs", signs.detach().clone())
        self.register_buffer("scale", _per_channel(scale))
        self.register_buffer("bias", _per_channel(conv.bias))
        shift = conv.input_quantizer.shift if isinstance(conv.input_quantizer, RSign) else None
        self.register_buffer("shift", _per_channel(shift))
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.pad_value = conv.pad_value
        if self.pad_value not in (0.0, 1.0, -1.0):
            raise ExportError(f"{name}: pad_value {self.pad_value}; a binary conv pads with 0 or ±1")

    def forward(self, x: Tensor) -> Tensor:
        if self.shift is not None:
            x = x + self.shift
        padding = self.padding
        if self.pad_value != 0.0 and any(padding):
            # ±1 padding of the *binary* input = a huge ±value before the sign; keeps FQ -> Conv adjacent
            ph, pw = padding  # type: ignore[misc]
            x = F.pad(x, (pw, pw, ph, ph), value=PAD_BIG * self.pad_value)
            padding = (0, 0)
        y = F.conv2d(torch.sign(x), self.signs, None, self.stride, padding, self.dilation, self.groups)
        if self.scale is not None:
            y = y * self.scale
        return y if self.bias is None else y + self.bias


_BINARY_INPUTS = ("SignSTE", "ApproxSign", "RSign")


def _mark(module: nn.Module) -> list[str]:
    """Swap binary-input binary-weight convs for :class:`MarkedBinaryConv` in place; returns their names."""
    convs = {n: m for n, m in module.named_modules() if isinstance(m, BinaryConv2d)}
    for name, conv in convs.items():
        if conv.bits != (1, 1) or type(conv.input_quantizer).__name__ not in _BINARY_INPUTS:
            raise ExportError(f"{name}: bits {conv.bits} with {type(conv.input_quantizer).__name__}; OpenVINO runs "
                              "binary input *and* binary weights as BinaryConvolution (keep the layer real or "
                              "binarize both)")
    for name, conv in convs.items():
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, MarkedBinaryConv(conv, name))
    return list(convs)


class ExportedPart(nn.Module):
    """Backbone (+FPN) and the RPN head of a Faster R-CNN, returning a flat tuple.

    Output: ``(*levels, *objectness, *deltas)`` (objectness and deltas only with the RPN head),
    levels in the FPN's order (:attr:`levels`, e.g. ``0, 1, 2, 3, pool``).
    """

    def __init__(self, backbone: nn.Module, rpn_head: nn.Module | None, levels: Sequence[str]) -> None:
        super().__init__()
        self.backbone, self.rpn_head, self.levels = backbone, rpn_head, list(levels)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        maps = list(self.backbone(x).values())
        if self.rpn_head is None:
            return tuple(maps)
        objectness, deltas = self.rpn_head(maps)
        return (*maps, *objectness, *deltas)


def exported_part(detector: Detector, rpn: bool = True, marked: bool = True) -> tuple[ExportedPart, list[str]]:
    """A copy of the part OpenVINO runs (eval mode) and the names of its binary convs.

    Args:
        rpn: include the RPN head (its 3x3 conv runs on every level; at P2 it is as large as a backbone stage).
        marked: swap binary convs for :class:`MarkedBinaryConv`; False keeps the modules as they are
            (a real teacher, or the float simulation run in torch).

    Raises:
        ExportError: the detector is not a Faster R-CNN with a feature-map backbone and an RPN.
    """
    model = detector.model
    if not (hasattr(model, "backbone") and hasattr(model, "rpn") and hasattr(model, "roi_heads")):
        raise ExportError(f"{detector.config.arch}: the openvino export runs a two-stage detector's backbone, neck "
                          "and RPN head (Faster R-CNN); use --format packed or onnx for this architecture")
    backbone = copy.deepcopy(model.backbone).eval()
    with torch.no_grad():
        levels = list(backbone(torch.zeros(1, 3, 64, 64)).keys())
    part = ExportedPart(backbone, copy.deepcopy(model.rpn.head) if rpn else None, levels).eval()
    names = _mark(part) if marked else []
    return part, names


def _threshold(t: np.ndarray) -> np.ndarray:
    """The plugin binarizes ``x > thr``, the simulation ``x >= t``: thr is the float just below t.

    Where that is 0 or denormal it becomes ``-FLT_MIN`` (the plugin treats denormals as 0), so
    the decisions differ only for denormal x.
    """
    thr = np.nextafter(t.astype(np.float32), np.float32(-np.inf))
    return np.where(np.abs(thr) < FLT_MIN, -FLT_MIN, thr).astype(np.float32)


def _split_weight(w: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``W = m_o * B`` with ``B`` in {-1, +1}: the sign bits (u1, lowest bit first) and ``m [1, O, 1, 1]``.

    The frontend folds per-channel factors (the scale, a BN) into the ±1 weights, so each row
    is ``±m_o``; anything else is not a binary weight.
    """
    magnitude = np.abs(w.reshape(w.shape[0], -1))
    if not np.all(magnitude.max(axis=1) == magnitude.min(axis=1)):
        raise ExportError(f"{name}: weight rows are not ±m_o (not a scaled sign); cannot binarize")
    # the CPU plugin reads u1 bits lowest first (ConvToBinaryConv's binarize_weights), not in
    # Constant(u1, values)'s order (highest first): build the constant from raw bytes
    return np.packbits((w >= 0).reshape(-1), bitorder="little"), magnitude[:, :1].reshape(1, -1, 1, 1)


def _u1_constant(packed: np.ndarray, shape: Sequence[int]) -> Any:
    import openvino as ov

    tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(shape)))
    tensor.data[:] = packed
    return ov.op.Constant(tensor)


def _source_and_threshold(sign: Any) -> tuple[Any, np.ndarray, Any]:
    """``Sign(Add(x, c))`` with a constant c (RSign): ``(x, -c, add)``; any other ``Sign(x)``: ``(x, 0, None)``."""
    source = sign.input_value(0)
    producer = source.get_node()
    if producer.get_type_name() == "Add":
        kinds = [producer.input_value(i).get_node().get_type_name() for i in range(2)]
        if "Constant" in kinds:
            c = kinds.index("Constant")
            threshold = -producer.input_value(c).get_node().get_data().astype(np.float32)
            return producer.input_value(1 - c), threshold, producer
    return source, np.zeros((1, 1, 1, 1), np.float32), None


def _binarization(sign: Any, source: Any, t: np.ndarray, bypassed: Any) -> Any:
    """The FakeQuantize that binarizes ``source`` at ``t`` (+1 where ``x >= t``).

    Where ``source`` feeds other layers too, ``FQ(thr, thr, 0, 1)``: the plugin's exact ``x > thr``
    compare, run standalone. Where the FakeQuantize would be its only consumer, the plugin fuses
    that binarization into the producing layer, and a BinaryConvolution with a fused residual add
    *and* a fused binarization computes wrong values: there ``FQ(t - w, t + w, -1, +1)``, which is
    not fused as a binarization and decides ``x >= t`` to about an ulp (ties at ``x == t`` go to -1).
    """
    import openvino.opset13 as ops

    name = sign.get_friendly_name()
    markers = {sign.get_name()} | ({bypassed.get_name()} if bypassed is not None else set())
    others = [c.get_node() for c in source.get_target_inputs() if c.get_node().get_name() not in markers]
    if others:
        thr = _threshold(t)
        return ops.fake_quantize(source, thr, thr, np.float32(0), np.float32(1), 2, name=name)
    t64 = t.astype(np.float64)
    w = WINDOW * np.maximum(1.0, np.abs(t64))
    low, high = (t64 - w).astype(np.float32), (t64 + w).astype(np.float32)
    return ops.fake_quantize(source, low, high, np.float32(-1), np.float32(1), 2, name=name)


def _binary_conv(fq: Any, conv: Any, max_pad: int) -> Any:
    """``BinaryConvolution(fq, bits, pad_value=0) * m`` standing in for ``conv`` (a Convolution with ±m weights)."""
    import openvino.opset1 as ops1
    import openvino.opset13 as ops

    name = conv.get_friendly_name()
    weight = conv.input_value(1).get_node()
    if conv.get_type_name() != "Convolution" or weight.get_type_name() != "Constant":
        raise ExportError(f"{name}: a binarization feeds {conv.get_type_name()} with {weight.get_type_name()} "
                          "weights; expected a Convolution with constant weights")
    pads = [*conv.get_pads_begin(), *conv.get_pads_end()]
    if max(pads) > max_pad:
        raise ExportError(f"{name}: zero padding {max(pads)} > {max_pad}, which the CPU binary kernel rejects; "
                          "pad the binary input with -1 (binarize.pad_value: -1) or keep the layer real")
    w = weight.get_data().astype(np.float32)
    bits, magnitude = _split_weight(w, name)
    out = ops1.binary_convolution(fq, _u1_constant(bits, w.shape), list(conv.get_strides()),
                                  list(conv.get_pads_begin()), list(conv.get_pads_end()), list(conv.get_dilations()),
                                  "xnor-popcount", 0.0, name=name)
    return out if np.all(magnitude == 1.0) else ops.multiply(out, magnitude)


def insert_binarization(model: Any, max_pad: int = 2) -> int:
    """Replace every ``Sign -> Convolution`` of ``model`` (an ``ov.Model``) by a real binary layer.

    Returns:
        The number of BinaryConvolution nodes made (a conv shared by several inputs, as the RPN
        conv over the FPN levels, counts once per call).

    Raises:
        ExportError: a sign that does not feed a constant-weight Convolution, a weight that is not
            a scaled sign, or a zero padding above ``max_pad`` (2 for the AVX2 kernel).
    """
    count = 0
    for sign in [n for n in model.get_ordered_ops() if n.get_type_name() == "Sign"]:
        fq = _binarization(sign, *_source_and_threshold(sign))
        for target in list(sign.output(0).get_target_inputs()):
            conv = target.get_node()
            new = _binary_conv(fq.output(0), conv, max_pad)
            for consumer in list(conv.output(0).get_target_inputs()):
                consumer.replace_source_output(new.output(0))
            count += 1
    model.validate_nodes_and_infer_types()
    return count


def layer_counts(compiled: Any) -> dict[str, int]:
    """Layer types of a compiled model's runtime graph (``BinaryConvolution``, ``Convolution`` ...) and their counts."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        kind = str(op.get_rt_info()["layerType"].astype(str))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def to_openvino(part: nn.Module, example: Tensor | Sequence[int], binarize: bool = True,
                trace_size: Sequence[int] | None = (64, 64)) -> Any:
    """``ov.Model`` of ``part`` for the static input ``example`` (a tensor, or ``(H, W)`` of ``[1, 3, H, W]``).

    The TorchScript trace runs the model once, so it is taken at the small ``trace_size`` (shape
    arithmetic such as the FPN's upsampling stays symbolic) and the model is then reshaped to
    ``example``'s shape: 5 s instead of 50 s for R18-FPN at 608x1024. A tensor example with other
    than 3 channels (one layer) is traced as is. With ``binarize`` every Sign marker becomes a real
    binary layer; the count is in the model's rt_info ``detbin/binary_convolutions``.

    Raises:
        ExportError: openvino is not installed, or a binary layer cannot be converted.
    """
    ov = require_openvino()
    shape = list(example.shape) if isinstance(example, Tensor) else [1, 3, *example]
    as_is = (isinstance(example, Tensor) and shape[1] != 3) or trace_size is None
    trace = example if as_is else torch.zeros(*shape[:2], *trace_size)
    with torch.no_grad():
        model = ov.convert_model(part, example_input=trace)
    model.reshape(shape)  # static: the CPU BinaryConvolution has no dynamic-shape implementation
    made = insert_binarization(model) if binarize else 0
    model.set_rt_info(made, ["detbin", "binary_convolutions"])
    return model


def compile_model(model: Any, threads: int | None = 1) -> Any:
    """Compile for the CPU plugin: f32 inference (no bf16 on AMX/AVX-512-bf16 machines), one stream, latency.

    Args:
        threads: inference threads (None: OpenVINO's default, every core).
    """
    ov = require_openvino()
    config: dict[str, Any] = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(model, "CPU", config)
