"""Reproducer (not a test): OpenVINO 2026.4.1's CPU plugin computes wrong values for a BinaryConvolution that
has a fused residual add (sum post-op) *and* a fused output binarization (the next layer's 0/1
FakeQuantize). Without the add, or with the add's result also used elsewhere, the values are right. No
detbin code involved; ``detbin.deploy.openvino_export._binarization`` avoids the fused form.

    .venv/bin/python bench/openvino_fusion_bug.py
"""
import numpy as np
import openvino as ov
import openvino.opset1 as ops1
import openvino.opset13 as ops

rs = np.random.RandomState(0)
C, H = 16, 8


def u1(w):
    t = ov.Tensor(ov.Type.u1, ov.Shape(list(w.shape)))
    t.data[:] = np.packbits((w > 0).reshape(-1), bitorder="little")
    return ov.op.Constant(t)


def sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def conv_pm1(b, w):  # reference +-1 conv, 3x3, zero padding
    bp = np.pad(b, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, w.shape[0], H, H), np.float32)
    for u in range(3):
        for v in range(3):
            out += np.einsum("oc,nchw->nohw", w[:, :, u, v], bp[:, :, u:u + H, v:v + H])
    return out


w1, w2 = (np.where(rs.rand(C, C, 3, 3) > 0.5, 1.0, -1.0).astype(np.float32) for _ in range(2))
x = rs.randn(1, C, H, H).astype(np.float32)
for residual in (False, True):
    p = ops.parameter([1, C, H, H], np.float32)
    zero = np.zeros((1, 1, 1, 1), np.float32) - np.float32(1e-30)
    b1 = ops.fake_quantize(p, zero, zero, np.float32(0), np.float32(1), 2)
    y = ops1.binary_convolution(b1, u1(w1), [1, 1], [1, 1], [1, 1], [1, 1], "xnor-popcount", 0.0)
    y = ops.multiply(y, np.float32(0.01))
    if residual:
        y = ops.add(y, p)
    b2 = ops.fake_quantize(y, zero, zero, np.float32(0), np.float32(1), 2)  # fused into the first conv
    z = ops1.binary_convolution(b2, u1(w2), [1, 1], [1, 1], [1, 1], [1, 1], "xnor-popcount", 0.0)
    got = ov.Core().compile_model(ov.Model([z], [p]), "CPU", {"INFERENCE_NUM_THREADS": 1})(x)[0]
    y_ref = conv_pm1(sign(x), w1) * np.float32(0.01) + (x if residual else 0)
    ref = conv_pm1(sign(y_ref), w2)
    print(f"residual add={residual}: max |openvino - reference| = {np.abs(got - ref).max()}")
