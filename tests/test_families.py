"""Detector families: the open table, a third-party family through ``detbin.detectors``, the detectron2 adapter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detbin.core.errors import ConfigError, DetectorLoadError
from detbin.cost.profile import profile
from detbin.models import families
from detbin.models.config import DetectorConfig, tiny_config
from detbin.models.detector import build_detector
from detbin.models.layout import BinarizeSpec, apply_layout
from helpers import install_distribution

STANDINS = Path(__file__).resolve().parent / "standins"

TOYDET = """
    from collections import OrderedDict

    from torch import nn
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from detbin import DetectorFamily


    class Backbone(nn.Module):
        out_channels = 16

        def __init__(self, width):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, stride=4, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.body = nn.Conv2d(width, 16, 3, stride=2, padding=1)

        def forward(self, x):
            return OrderedDict([("0", self.body(self.relu(self.bn(self.stem(x)))))])


    def build(config):
        anchors = AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))
        return RetinaNet(Backbone(int(config.width_mult * 32)), config.num_classes, min_size=config.input_size[0],
                         max_size=config.input_size[1], anchor_generator=anchors)


    def infer(shapes):
        if "backbone.stem.weight" in shapes and "head.classification_head.cls_logits.weight" in shapes:
            return {"arch": "toydet_tiny", "num_classes": shapes["head.classification_head.cls_logits.weight"][0] // 6}
        return None


    FAMILY = DetectorFamily("toydet", ("toydet_tiny",), build, keep_real=("backbone.stem", "head.*"),
                            default_size=(64, 64), tiny={"width_mult": 0.5, "min_size": 64, "max_size": 64},
                            infer=infer, description="a third party's tiny RetinaNet")
"""


@pytest.fixture
def toydet(tmp_path, monkeypatch):
    """``detbin-toydet 0.3`` installed, shipping family ``toydet`` and a broken family ``brokendet``."""
    site = tmp_path / "site"
    install_distribution(site, "detbin-toydet", "0.3",
                         {families.GROUP: {"toydet": "toydet_family:FAMILY", "brokendet": "broken_family:FAMILY"}},
                         {"toydet_family": TOYDET, "broken_family": "import not_a_module_anywhere\n"})
    monkeypatch.syspath_prepend(str(site))
    yield {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "OMP_NUM_THREADS": "1"}
    families._REGISTRY.pop("toydet", None)  # the table is per process; leave it as the other tests expect


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "detbin", *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_third_party_family_is_listed_builds_trains_and_profiles(toydet):
    listed = cli(toydet, "detectors", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"family": "toydet"' in listed.stdout and "detbin-toydet 0.3" in listed.stdout  # not imported to list
    config = tiny_config("toydet_tiny", num_classes=4)
    assert (config.width_mult, config.input_size) == (0.5, (64, 64))  # the family's tiny overrides
    detector = build_detector(config)
    assert detector.keep_real == ("backbone.stem", "head.*")
    binary = apply_layout(detector, BinarizeSpec(form="bireal"))
    assert binary == ["backbone.body"]  # the family keeps its stem and heads real
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    detector.model.train()
    losses = detector.losses(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    cost = profile(detector, (64, 64))
    assert cost.bops > 0 and cost.flops > 0 and "backbone.body" in {m.name for m in cost.by_module if m.binary}
    profiled = cli(toydet, "profile", "toydet_tiny", "--num-classes", "4", "--json")
    assert profiled.returncode == 0, profiled.stderr


def test_a_state_dict_of_a_plugin_family_is_recognised(toydet):
    from detbin.models.checkpoint import infer_config

    build_detector(DetectorConfig(arch="toydet_tiny", num_classes=4))  # loads the plugin
    state = build_detector(DetectorConfig(arch="toydet_tiny", num_classes=4)).model.state_dict()
    assert infer_config(state).arch == "toydet_tiny"


def test_a_broken_family_breaks_only_the_run_that_asks_for_it(toydet):
    assert "brokendet" in families.available_plugins()  # discovery imports nothing
    assert families.family_of("fasterrcnn_resnet18_fpn").name == "fasterrcnn"
    with pytest.raises(DetectorLoadError, match=r"detector family 'brokendet' from detbin-toydet failed to import: "
                                                r"ModuleNotFoundError"):
        DetectorConfig(arch="brokendet_x")
    done = cli(toydet, "profile", "brokendet_x")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "detbin-toydet" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_families_and_architectures_list_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown architecture 'fasterrcnn_resnet19_fpn' \(did you mean: "
                                          r"fasterrcnn_resnet18_fpn"):
        DetectorConfig(arch="fasterrcnn_resnet19_fpn")
    with pytest.raises(ConfigError, match=r"unknown architecture 'yolo_v8'.*valid: fasterrcnn_resnet18_fpn"):
        DetectorConfig(arch="yolo_v8")


def test_detectron2_family_needs_detectron2():
    if STANDINS.as_posix() in sys.path:
        pytest.skip("the stand-in is importable in this process")  # never: the stand-in fixture is function-scoped
    with pytest.raises(ConfigError, match="the detectron2 family needs detectron2"):
        build_detector(DetectorConfig(arch="detectron2_generalizedrcnn", num_classes=6))


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    yield
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        del sys.modules[name]


def test_the_detectron2_adapter_speaks_detectron2s_interface(standin):
    detector = build_detector(DetectorConfig(arch="detectron2_generalizedrcnn", num_classes=6))
    seen = []
    detector.model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image = torch.rand(3, 64, 64)
    detector.model.train()
    losses = detector.losses([image], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([3])}])
    sum(losses.values()).backward()
    item = seen[0][0]
    assert torch.equal(item["image"], image.flip(0) * 255.0)  # BGR, 0..255
    assert (item["height"], item["width"]) == (64, 64) and item["instances"].gt_classes.tolist() == [2]  # 0-based
    assert all(torch.isfinite(v) for v in losses.values())
    (out,) = detector.predict([image])
    assert set(out) == {"boxes", "scores", "labels"} and out["boxes"].shape[1] == 4
    assert ((out["labels"] >= 1) & (out["labels"] <= 5)).all()  # detbin's labels 1..K again
    assert set(detector.features([image])) == {"res2"}
    binary = apply_layout(detector, BinarizeSpec(form="bireal"))
    assert binary == ["backbone.bottom_up.res2.1", "proposal_generator.rpn_head.conv"]  # stem, predictors stay real
    detector.model.train()
    assert all(torch.isfinite(v) for v in detector.losses([image], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
                                                                      "labels": torch.tensor([3])}]).values())
