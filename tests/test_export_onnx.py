"""ONNX export of the float simulation: the float form is the simulation bit for bit in torch, and the
exported detector runs in onnxruntime with the same detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detbin.binary.layers import BinaryConv2d
from detbin.deploy.onnx_export import FloatBinaryConv, float_model
from export_support import images, student, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("recipe", ["reactnet", "ida-det"])
def test_float_form_is_the_simulation_bit_for_bit(recipe):
    det, _, _ = student(recipe, tiny_config())
    model = float_model(det)
    assert not any(isinstance(m, BinaryConv2d) for m in model.modules())
    with torch.no_grad():
        for p, q in zip(det.predict(images()), model(images())):
            assert all(torch.equal(p[k], q[k]) for k in p)


def test_pad_value_minus_one_pads_after_the_sign():
    conv = BinaryConv2d(4, 4, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="scaled_sign",
                        pad_value=-1.0).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(conv(x), FloatBinaryConv(conv)(x))


def test_the_exported_detector_runs_in_onnxruntime_at_any_size(tmp_path):
    pytest.importorskip("onnx", reason="the onnx export needs onnx: pip install -e '.[test,onnx]'")
    pytest.importorskip("onnxruntime", reason="running the file needs onnxruntime: pip install -e '.[test,onnx]'")
    from detbin.deploy.onnx_export import export_onnx, run_onnx

    det, _, _ = student("reactnet", tiny_config())
    path = export_onnx(det, tmp_path / "m.onnx", (128, 128))
    for image in images():  # 128x160 and 96x128: the input size is dynamic
        expected = det.predict([image])[0]
        got = run_onnx(path, image)
        assert len(got["boxes"]) == len(expected["boxes"]) > 0
        assert np.array_equal(got["labels"], expected["labels"].numpy())
        assert np.abs(got["boxes"] - expected["boxes"].numpy()).max() < 1e-3  # pixels
        assert np.abs(got["scores"] - expected["scores"].numpy()).max() < 1e-5
