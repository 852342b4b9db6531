"""Deployment: packed 1-bit files, the ONNX float simulation, and OpenVINO with real BinaryConvolution.

* :mod:`~detbin.deploy.forms`: a student in its deploy form (signs + scales, core quantizers only);
* :mod:`~detbin.deploy.structure`: its architecture as JSON, rebuilt from core code;
* :mod:`~detbin.deploy.packed`: the packed safetensors file (1 bit per binary weight);
* :mod:`~detbin.deploy.onnx_export`: the whole detector's float simulation as ONNX;
* :mod:`~detbin.deploy.openvino_export` and :mod:`~detbin.deploy.engine`: backbone + FPN + RPN head
  as OpenVINO IR with BinaryConvolution layers, the rest of the detector in torchvision.

A layer beside ``cost``/``evaluation``: it imports models, binary and core only (never the
training layer, so nothing here can need a recipe plugin). ``openvino`` and ``onnx`` are
optional and imported inside the functions that need them.
"""

from __future__ import annotations

from detbin.deploy.forms import ExportError, check_deploy, deployed, deployed_spec
from detbin.deploy.packed import is_packed, load_packed, read_header, save_packed

__all__ = ["ExportError", "check_deploy", "deployed", "deployed_spec", "is_packed", "load_packed", "read_header",
           "save_packed"]
