"""Every detector family: build tiny, binarize, train one step, predict in torchvision's format."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from detbin.models.config import DetectorConfig, tiny_config

from detbin.models.detector import build_detector

from detbin.models.families import all_archs
from detbin.core.errors import ConfigError
from detbin.models.layout import BinarizeSpec, apply_layout
from helpers import toy_config

FAMILIES = ["fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn", "fcos_resnet18_fpn", "ssd300_vgg16",
            "ssdlite320_mobilenet_v3_large"]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("form", ["reactnet"])
def test_family_binarize_step_and_predict(arch, form, synthetic_batch):
    detector = build_detector(toy_config(arch))
    swapped = apply_layout(detector, BinarizeSpec(form=form, activation="rsign"))
    assert swapped, "something must become binary"
    images, targets = synthetic_batch
    optimizer = torch.optim.SGD(detector.model.parameters(), lr=1e-3)
    detector.model.train()
    losses = detector.losses(images, targets)
    assert losses and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    detections = detector.predict(images)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape[1:] == (4,) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        assert det["labels"].dtype == torch.int64
    assert detector.model.training  # predict restores the mode


def test_empty_targets_give_zero_box_losses():
    detector = build_detector(toy_config())
    detector.model.train()
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = detector.losses(images, targets)
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0


def test_losses_need_training_mode(synthetic_batch):
    detector = build_detector(toy_config())
    detector.model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        detector.losses(*synthetic_batch)


@pytest.mark.parametrize("arch, reference", [
    ("fasterrcnn_resnet50_fpn", torchvision.models.detection.fasterrcnn_resnet50_fpn),
    ("retinanet_resnet50_fpn", torchvision.models.detection.retinanet_resnet50_fpn),
    ("fcos_resnet50_fpn", torchvision.models.detection.fcos_resnet50_fpn),
    ("ssd300_vgg16", torchvision.models.detection.ssd300_vgg16),
    ("ssdlite320_mobilenet_v3_large", torchvision.models.detection.ssdlite320_mobilenet_v3_large),
])
def test_full_size_topology_equals_torchvision(arch, reference):
    """Same state-dict keys and shapes as torchvision's builder, so its checkpoints load."""
    ours = build_detector(DetectorConfig(arch=arch, num_classes=21)).model.state_dict()
    theirs = reference(weights=None, weights_backbone=None, num_classes=21).state_dict()
    theirs = {k: v for k, v in theirs.items()}
    # torchvision freezes BatchNorm (no counter); detbin's is trainable
    ours = {k: v for k, v in ours.items() if not k.endswith("num_batches_tracked") or k in theirs}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_resnet18_and_34_fpn_are_composed():
    for depth, blocks in ((18, [2, 2, 2, 2]), (34, [3, 4, 6, 3])):
        body = build_detector(DetectorConfig(arch=f"fasterrcnn_resnet{depth}_fpn")).model.backbone.body
        assert [len(getattr(body, f"layer{i}")) for i in range(1, 5)] == blocks
        assert body.layer4[0].conv1.out_channels == 512


def test_tiny_config_shrinks_width_images_and_proposals():
    cfg = tiny_config("fasterrcnn_resnet18_fpn", num_classes=6)
    assert (cfg.width_mult, cfg.fpn_channels, cfg.representation_size, cfg.input_size) == (0.25, 64, 256, (128, 128))
    model = build_detector(cfg).model
    assert model.backbone.body.conv1.out_channels == 16 and model.rpn._post_nms_top_n["training"] == 300


def test_unknown_arch_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown architecture 'fasterrcnn_resnet18'.*did you mean"):
        DetectorConfig(arch="fasterrcnn_resnet18")
    torchvision = {f"{f}_resnet{d}_fpn" for f in ("fasterrcnn", "retinanet", "fcos") for d in (18, 34, 50, 101)}
    assert torchvision | {"ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "detectron2_generalizedrcnn"} <= set(all_archs())
