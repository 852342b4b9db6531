"""Checkpoints: atomic writes, weights-only loads, architecture inference, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torchvision

from detbin.models import checkpoint
from detbin.models.detector import build_detector
from detbin.core.errors import CheckpointError
from helpers import toy_config


@pytest.mark.parametrize("builder, arch, classes", [
    (torchvision.models.detection.fasterrcnn_resnet50_fpn, "fasterrcnn_resnet50_fpn", 21),
    (torchvision.models.detection.retinanet_resnet50_fpn, "retinanet_resnet50_fpn", 91),
    (torchvision.models.detection.fcos_resnet50_fpn, "fcos_resnet50_fpn", 21),
    (torchvision.models.detection.ssd300_vgg16, "ssd300_vgg16", 21),
    (torchvision.models.detection.ssdlite320_mobilenet_v3_large, "ssdlite320_mobilenet_v3_large", 91),
])
def test_infer_torchvision_state_dicts(builder, arch, classes):
    state = builder(weights=None, weights_backbone=None, num_classes=classes).state_dict()
    config = checkpoint.infer_config(state)
    assert (config.arch, config.num_classes, config.width_mult) == (arch, classes, 1.0)


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "ssd300_vgg16",
                                  "ssdlite320_mobilenet_v3_large"])
def test_infer_scaled_detbin_models(arch):
    cfg = toy_config(arch)
    inferred = checkpoint.infer_config(build_detector(cfg).model.state_dict())
    assert (inferred.arch, inferred.num_classes, inferred.width_mult) == (cfg.arch, cfg.num_classes, cfg.width_mult)


def test_plain_state_dict_roundtrip_through_a_file(tmp_path):
    source = build_detector(toy_config())
    torch.save(source.model.state_dict(), tmp_path / "teacher.pt")
    shape_keys = {"arch", "num_classes", "width_mult", "fpn_channels", "representation_size"}
    runtime = {k: v for k, v in source.config.to_dict().items() if k not in shape_keys}  # not in the weights
    loaded, meta = checkpoint.load_detector(tmp_path / "teacher.pt", **runtime)
    assert loaded.config == source.config
    assert meta == {} and not loaded.model.training
    x = [torch.rand(3, 96, 96)]
    source.model.eval()
    ours, theirs = loaded.predict(x)[0], source.predict(x)[0]
    assert torch.equal(ours["boxes"], theirs["boxes"])


def test_wrong_arch_hint_is_refused():
    state = build_detector(toy_config()).model.state_dict()
    with pytest.raises(CheckpointError, match="does not fit the state dict, which looks like fasterrcnn_resnet18_fpn"):
        checkpoint.infer_config(state, arch="fasterrcnn_resnet50_fpn")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        checkpoint.read(tmp_path / "missing.pt")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    torch.save({"a": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        checkpoint.read(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "reference.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)  # torchvision references' format
    with pytest.raises(CheckpointError, match="pickled Python objects.*weights_only=True"):
        checkpoint.read(path)


def test_state_dict_of_no_known_architecture(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="matches no known detector"):
        checkpoint.load_detector(path)


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"step": torch.tensor(1)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert checkpoint.read(path)["step"].item() == 1
    assert [p.name for p in Path(tmp_path).iterdir()] == ["last.pt"]  # no temporary file left
