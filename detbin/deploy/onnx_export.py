"""ONNX export of the float simulation: portable, runs in float everywhere (no 1-bit speed-up).

Every binary conv is exported in its deploy form, computed in float exactly as the simulation:
``conv2d(where(x + shift >= 0, 1, -1), scale * signs) + bias`` (border padded with 0 or ±1
*after* the sign, as :class:`~detbin.binary.layers.BinaryConv2d` does). ONNX has no 1-bit
convolution, so the file stores the ±scale weights as float32 (the size of the real model) and
a runtime runs them as float convs: it is the *simulation*, only the OpenVINO export runs
binary kernels. The whole detector (transform, RPN, RoI heads, NMS) is exported with torch's
TorchScript exporter, which handles the data-dependent NMS that ``torch.export`` stops at.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import RSign
from detbin.deploy.forms import ExportError, check_deploy
from detbin.models.detector import Detector

__all__ = ["FloatBinaryConv", "float_model", "export_onnx", "run_onnx", "INSTALL_HINT", "OUTPUTS"]

INSTALL_HINT = "pip install 'detbin[onnx]'"
OUTPUTS = ("boxes", "labels", "scores")


class FloatBinaryConv(nn.Module):
    """A binary conv's simulated forward with its deploy weight: ±1 input, ``scale * signs`` weight, in float.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H_out, W_out]``; equal to the ``BinaryConv2d`` it
    replaces bit for bit in torch (up to the summation order of another backend).
    """

    def __init__(self, conv: BinaryConv2d, name: str = "") -> None:
        super().__init__()
        if conv.bits[1] == 1:
            signs, scale = check_deploy(conv.weight_quantizer, conv.weight, name)
            weight = signs if scale is None else scale * signs
        else:
            weight = conv.weight_quantizer(conv.weight)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        shift = conv.input_quantizer.shift if isinstance(conv.input_quantizer, RSign) else None
        self.register_buffer("shift", None if shift is None else shift.detach().clone())
        if conv.bits[0] == 1 and type(conv.input_quantizer).__name__ not in ("SignSTE", "ApproxSign", "RSign"):
            raise ExportError(f"{name}: input quantizer {type(conv.input_quantizer).__name__} has no ONNX form")
        self.binary_input = conv.bits[0] == 1
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.pad_value = conv.pad_value

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_input:
            if self.shift is not None:
                x = x + self.shift
            x = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # detbin's sign: +1 at 0
        padding = self.padding
        if self.pad_value != 0.0 and any(padding):
            ph, pw = padding  # type: ignore[misc]
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            padding = (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def float_model(detector: Detector) -> nn.Module:
    """A copy of ``detector.model`` (eval mode) with every binary conv as :class:`FloatBinaryConv`."""
    model = copy.deepcopy(detector.model).eval()
    for name in [n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, FloatBinaryConv(owner.get_submodule(child), name))
    return model


def export_onnx(detector: Detector, path: Path, size: tuple[int, int], opset: int = 17) -> Path:
    """Write the whole detector's float simulation to ONNX.

    Input ``image``: float32 ``[3, H, W]`` in 0..1, any H, W (dynamic; traced at ``size``).
    Outputs ``boxes [K, 4]`` (xyxy, input pixels), ``labels [K]`` int64, ``scores [K]``.

    Raises:
        ExportError: onnx is not installed (the message is the install command).
    """
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
    except ImportError:
        raise ExportError(f"the onnx export needs onnx, which is not installed: {INSTALL_HINT}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = float_model(detector)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(model, ([image],), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=list(OUTPUTS),
                          dynamic_axes={"image": {1: "height", 2: "width"}, **{k: {0: "detections"} for k in OUTPUTS}})
    return path


def run_onnx(path: Path, image: Tensor, threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs of an exported detector under onnxruntime's CPU provider: ``{boxes, labels, scores}``.

    Raises:
        ExportError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"running an ONNX file needs onnxruntime: {INSTALL_HINT}") from None
    options: Any = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": image.numpy()})
    return dict(zip(OUTPUTS, outputs))
