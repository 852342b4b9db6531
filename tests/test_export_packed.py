"""Packed files: deploy forms by hand, the bit layout by hand, bit-exact reloads (also in a fresh process
without the training plugins), the size against ``detbin profile``'s accounted memory, and the errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from detbin.app.build import make_student
from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import DeployedSign, LearnedScaleSign, Quantizer, RSign, ScaledSign, SignSTE, get
from detbin.cost.profile import profile
from detbin.deploy.forms import ExportError, check_deploy, deployed, deployed_spec, input_spec
from detbin.deploy.packed import load_packed, pack_signs, read_header, save_packed, size_breakdown, unpack_signs
from detbin.models.detector import build_detector
from detbin.models.layout import BinarizeSpec, apply_layout
from detbin.training.recipe import Recipe
from export_support import full_config, images, perturb, student, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# two output channels of 2 weights: |W_0| = 0.5, 1.5 -> mean 1.0; |W_1| = 2, 0 -> mean 1.0 (sign(0) = +1)
W = torch.tensor([[[[0.5, -1.5]]], [[[-2.0, 0.0]]]])
SIGNS = torch.tensor([[[[1.0, -1.0]]], [[[-1.0, 1.0]]]])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("quantizer", [ScaledSign(detach_scale=True), ScaledSign(), ScaledSign(ste="identity")])
def test_scaled_sign_deploys_to_the_mean_absolute_value(quantizer):
    signs, scale = check_deploy(quantizer, W)
    assert torch.equal(signs, SIGNS)
    assert scale.shape == (2, 1, 1, 1) and scale.flatten().tolist() == [(0.5 + 1.5) / 2, (2.0 + 0.0) / 2]


def test_learned_scales_biconv_and_plain_signs():
    from detbin_idadet.biconv import BiConvWeight

    learned = LearnedScaleSign(2)
    learned.scale.data = torch.tensor([-0.25, 4.0])  # |alpha|: the sign of alpha is dropped
    assert check_deploy(learned, W)[1].flatten().tolist() == [0.25, 4.0]
    biconv = BiConvWeight(2, c=0.5)
    biconv.scale.data = torch.tensor([3.0, -0.5])
    assert check_deploy(biconv, W)[1].flatten().tolist() == [0.5 * 3.0, 0.5 * 0.5]
    assert check_deploy(SignSTE(), W)[1] is None


class _Wrong(Quantizer):
    bits = 1

    def forward(self, w):
        return 2 * torch.sign(w)

    def deploy(self, w):
        return torch.sign(w), None  # forgets the factor 2


def test_a_deploy_form_that_breaks_the_contract_is_an_error():
    with pytest.raises(ExportError, match=r"layer\.x: scale \* signs differs from the simulated weight by up to 1;"):
        check_deploy(_Wrong(), W + 0.1, "layer.x")
    with pytest.raises(ExportError, match="layer.y: Identity .* has no deploy form"):
        check_deploy(get("identity"), W, "layer.y")


def test_deployed_spec_replaces_every_one_bit_weight_and_keeps_real_ones():
    spec = BinarizeSpec(activation="rsign", weight={"name": "scaled_sign", "detach_scale": True}, rules=(
        {"match": "rpn.*", "activation": "approx_sign", "weight": "sign"}, {"match": "x.*", "weight": "identity"}))
    out = deployed_spec(spec)
    assert out.weight == {"name": "deployed_sign", "scaled": True} and out.activation == "rsign"
    assert out.rules == ({"match": "rpn.*", "activation": "approx_sign", "weight": {"name": "deployed_sign",
                                                                                     "scaled": False}},
                         {"match": "x.*", "weight": "identity"})
    assert deployed_spec(BinarizeSpec(weight="biconv")).weight == {"name": "deployed_sign", "scaled": True}
    assert input_spec(RSign(4)) == {"name": "rsign"} and input_spec(SignSTE(clip=2.0)) == {"name": "sign",
                                                                                           "clip": 2.0}


def test_bit_layout_little_endian_rows_padded_with_zeros():
    # row 0: + - - + + + - - | +  -> bits 1,0,0,1,1,1,0,0 = 1 + 8 + 16 + 32 = 57, then bit 0 set -> 1
    # row 1: - - - - - - - - | -  -> 0, 0
    signs = torch.tensor([[1, -1, -1, 1, 1, 1, -1, -1, 1], [-1] * 9], dtype=torch.float32).view(2, 1, 3, 3)
    bits = pack_signs(signs)
    assert bits.dtype == torch.uint8 and bits.tolist() == [[57, 1], [0, 0]]
    assert torch.equal(unpack_signs(bits, (2, 1, 3, 3)), signs)


def test_the_deployed_student_is_the_simulation_bit_for_bit():
    det, binarized, _ = student("ida-det", tiny_config())
    dep = deployed(det)
    convs = [m for m in dep.model.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == len(binarized) == 25 and all(isinstance(m.weight_quantizer, DeployedSign) for m in convs)
    assert all(bool(((m.weight == 1) | (m.weight == -1)).all()) for m in convs)
    x = images()
    with torch.no_grad():
        a, b = det.features(x), dep.features(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", ["reactnet", "ida-det"])
def test_reload_gives_identical_detections(tmp_path, recipe):
    det, binarized, spec = student(recipe, tiny_config())
    path = save_packed(det, spec, tmp_path / "m.safetensors", ["a", "b"], {"recipe": recipe})
    loaded, header = load_packed(path)
    assert sorted(header["binary_layers"]) == sorted(binarized) and header["classes"] == ["a", "b"]
    assert header["architecture"]["modules"] == []  # the layout rebuilds these students: no swaps to record
    assert repr(loaded.model) == repr(deployed(det).model)
    for p, q in zip(det.predict(images()), loaded.predict(images())):
        assert len(p["boxes"]) > 0 and all(torch.equal(p[k], q[k]) for k in p)


def test_fresh_process_without_the_training_plugins(tmp_path):
    det, _, spec = student("ida-det", tiny_config())
    path = save_packed(det, spec, tmp_path / "m.safetensors")
    torch.save(det.predict(images()), tmp_path / "expected.pt")
    script = (
        "import sys, json, torch\n"
        "sys.modules['detbin_idadet'] = None; sys.modules['detbin_baselines'] = None  # importing them fails\n"
        "torch.set_num_threads(1)\n"
        "from detbin.deploy import load_packed\n"
        "from export_support import images\n"
        f"det, _ = load_packed({str(path)!r})\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "same = all(torch.equal(p[k], q[k]) for p, q in zip(expected, det.predict(images())) for k in p)\n"
        "print(json.dumps({'same': same, 'plugins': sorted(m for m, v in sys.modules.items()\n"
        "                  if m.startswith('detbin_') and v is not None)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"same": True, "plugins": []}


@pytest.mark.parametrize("recipe", ["reactnet", "ida-det"])
def test_size_is_the_accounted_memory_plus_bn_statistics_and_header(tmp_path, recipe):
    det, _, spec = student(recipe, tiny_config())
    path = save_packed(det, spec, tmp_path / "m.safetensors")
    accounted = profile(det, image_size=(64, 64), rois=1).memory_bits // 8
    parts = size_breakdown(path)
    channels = sum(m.num_features for m in det.model.modules() if isinstance(m, nn.BatchNorm2d))
    # the gap, term by term: 2 float32 running statistics per BN channel (buffers, not parameters) and the
    # header; every binary row I*kh*kw of the tiny config is a multiple of 8 bits (no padding bits)
    assert parts["bn_running"] == 4 * 2 * channels
    assert path.stat().st_size == accounted + parts["bn_running"] + parts["header"]
    assert path.stat().st_size < 1.05 * accounted


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["reactnet", "ida-det"])
def test_full_size_r18_fpn_students_within_five_percent(tmp_path, recipe):
    det, _, spec = student(recipe, full_config())
    path = save_packed(det, spec, tmp_path / "m.safetensors")
    accounted = profile(det, image_size=(64, 64), rois=1).memory_bits // 8  # parameters: size-independent
    parts = size_breakdown(path)
    channels = sum(m.num_features for m in det.model.modules() if isinstance(m, nn.BatchNorm2d))
    assert path.stat().st_size == accounted + 4 * 2 * channels + parts["header"]
    assert path.stat().st_size < 1.05 * accounted


class SwapsMore(Recipe):
    """A recipe whose binarize does more than its layout: a core PReLU in place of the RPN conv's ReLU."""

    name = "swaps-more"
    layout = {"form": "reactnet", "activation": "rsign", "weight": "learned_scale_sign"}

    def binarize(self, student, spec):
        names = apply_layout(student, spec)
        student.model.rpn.head.conv[0][1] = nn.PReLU(student.model.rpn.head.conv[0][0].out_channels, init=0.1)
        return names


def _swapping_student(module: nn.Module | None = None):
    spec = BinarizeSpec.from_dict({**BinarizeSpec().to_dict(), **SwapsMore.layout})
    det, _ = make_student(build_detector(tiny_config()), SwapsMore(), spec)
    if module is not None:
        det.model.backbone.body.layer1[0].act1 = module
    perturb(det.model)
    det.model.eval()
    return det, spec


def test_swaps_beyond_the_layout_are_recorded_and_replayed(tmp_path):
    det, spec = _swapping_student()
    path = save_packed(det, spec, tmp_path / "m.safetensors")
    header = read_header(path)
    assert header["architecture"]["modules"] == [{"path": "rpn.head.conv.0.1", "type": "PReLU",
                                                  "args": {"num_parameters": 64}}]
    assert header["architecture"]["binarize"]["weight"] == {"name": "deployed_sign", "scaled": True}
    loaded, _ = load_packed(path)
    for p, q in zip(det.predict(images()), loaded.predict(images())):
        assert all(torch.equal(p[k], q[k]) for k in p)


class Custom(nn.Module):
    def forward(self, x):
        return x


def test_errors_name_the_file_or_the_module(tmp_path):
    det, spec = _swapping_student(Custom())
    with pytest.raises(ExportError, match="backbone.body.layer1.0.act1: Custom is not a core module"):
        save_packed(det, spec, tmp_path / "m.safetensors")
    torch.save({"x": torch.ones(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ExportError, match="bad.safetensors: not a safetensors file"):
        read_header(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ExportError, match="plain.safetensors: a safetensors file without detbin metadata"):
        load_packed(tmp_path / "plain.safetensors")
    import detbin_idadet  # noqa: F401  (registers biconv)

    with pytest.raises(ExportError, match="binarize.activation: activation quantizer BiConvWeight comes from a plugin"):
        deployed_spec(dataclasses.replace(spec, activation="biconv"))
