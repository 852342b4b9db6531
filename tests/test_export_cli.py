"""``detbin export`` through typer's CliRunner: run folders, the size beside the accounted memory, what is
written, and one-line errors (a missing OpenVINO says how to install it)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from detbin.cli import app
from detbin.cost.profile import profile
from detbin.deploy.packed import load_packed, size_breakdown
from export_support import save_student, tiny_config
from test_cli import assert_one_line_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["export", *map(str, args)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("export") / "student.pt"
    det = save_student(path, "ida-det", tiny_config(num_classes=3), ("cat", "dog"))
    return path, profile(det, image_size=(64, 64), rois=1).memory_bits // 8


def test_packed_export_into_a_run_folder(checkpoint, tmp_path):
    path, accounted = checkpoint
    result = invoke(path, "--name", "s")
    assert result.exit_code == 0, result.stdout + result.stderr
    folder = tmp_path / "runs/export/s"
    manifest = json.loads((folder / "export.json").read_text())
    size = (folder / "model.packed.safetensors").stat().st_size
    assert manifest["files"] == {"packed": "model.packed.safetensors"} and manifest["sizes"]["packed"] == size
    assert manifest["accounted_bytes"] == accounted and manifest["recipe"] == "ida-det"
    assert f"packed {size / 1e6:.3f} MB = {size / 2**20:.3f} MiB vs detbin profile's accounted memory " \
           f"{accounted / 1e6:.3f} MB = {accounted / 2**20:.3f} MiB: {size / accounted:.3f}x" in result.stdout
    parts = size_breakdown(folder / "model.packed.safetensors")
    assert size == accounted + parts["bn_running"] + parts["header"]
    assert load_packed(folder / "model.packed.safetensors")[1]["classes"] == ["cat", "dog"]
    # a packed file exports again (no plugin needed): the same architecture and tensors
    assert invoke(folder / "model.packed.safetensors", "--name", "again").exit_code == 0
    again = tmp_path / "runs/export/again/model.packed.safetensors"
    first, second = load_packed(folder / "model.packed.safetensors"), load_packed(again)
    assert first[1]["architecture"] == second[1]["architecture"] and second[1]["info"]["recipe"] == "ida-det"
    assert all(torch.equal(v, second[0].model.state_dict()[k]) for k, v in first[0].model.state_dict().items())


def test_onnx_is_labelled_the_float_simulation(checkpoint, tmp_path):
    pytest.importorskip("onnx", reason="the onnx export needs onnx: pip install -e '.[test,onnx]'")
    result = invoke(checkpoint[0], "--format", "onnx", "--name", "o")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "float SIMULATION" in result.stdout and (tmp_path / "runs/export/o/model.sim.onnx").is_file()
    assert not (tmp_path / "runs/export/o/model.packed.safetensors").exists()


def test_errors_are_one_line(checkpoint, tmp_path, monkeypatch):
    assert_one_line_error(invoke(checkpoint[0], "--format", "tflite"), "--format 'tflite': choose packed, onnx or "
                                                                       "openvino")
    assert_one_line_error(invoke(tmp_path / "missing.pt"), "missing.pt: no such checkpoint file")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    result = invoke(checkpoint[0], "--format", "openvino")
    assert_one_line_error(result, "the openvino export needs OpenVINO, which is not installed: "
                                  "pip install 'detbin[openvino]'")
    assert not (tmp_path / "runs/export").exists()  # it failed before writing anything
