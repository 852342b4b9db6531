"""ssd.pytorch's SSD300 priors (VOC/COCO) against the release's PriorBox formula; the ssd300_vgg16 option."""

from __future__ import annotations

from itertools import product
from math import sqrt

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from detbin.core.errors import ConfigError
from detbin.models import ssd_priors
from detbin.models.config import tiny_config
from detbin.models.detector import build_detector

VOC = dict(feature_maps=[38, 19, 10, 5, 3, 1], steps=[8, 16, 32, 64, 100, 300], min_sizes=[30, 60, 111, 162, 213, 264],
           max_sizes=[60, 111, 162, 213, 264, 315], aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]])


def _ssd_pytorch_priors(cfg: dict, image: int = 300) -> torch.Tensor:
    """``layers/functions/prior_box.py`` of the release: (cx, cy, w, h) relative, clipped to [0, 1]."""
    mean = []
    for k, f in enumerate(cfg["feature_maps"]):
        for i, j in product(range(f), repeat=2):
            f_k = image / cfg["steps"][k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = cfg["min_sizes"][k] / image
            mean += [cx, cy, s_k, s_k]
            s_k_prime = sqrt(s_k * (cfg["max_sizes"][k] / image))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in cfg["aspect_ratios"][k]:
                mean += [cx, cy, s_k * sqrt(ar), s_k / sqrt(ar)]
                mean += [cx, cy, s_k / sqrt(ar), s_k * sqrt(ar)]
    return torch.tensor(mean).view(-1, 4).clamp(0, 1)


def test_scales_are_min_sizes_over_300():
    assert ssd_priors.scales("voc") == [30 / 300, 60 / 300, 111 / 300, 162 / 300, 213 / 300, 264 / 300, 315 / 300]
    assert [round(s, 2) for s in ssd_priors.scales("voc")] == [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]
    assert [round(s, 2) for s in ssd_priors.scales("coco")] == [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    assert ssd_priors.BOXES_PER_LOCATION == [4, 6, 6, 6, 4, 4]
    with pytest.raises(ConfigError, match="priors"):
        ssd_priors.scales("vco")


def test_default_boxes_equal_ssd_pytorch_priors():
    generator = ssd_priors.default_boxes("voc")
    features = [torch.zeros(1, 1, f, f) for f in VOC["feature_maps"]]
    boxes = generator(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), features)[0]  # xyxy pixels
    centre_size = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / 300
    assert boxes.shape == (38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 4 + 4, 4) == (8732, 4)
    assert torch.allclose(centre_size, _ssd_pytorch_priors(VOC), atol=1e-5)


def test_torchvision_alone_leaves_114_centres_outside_the_image():
    plain = DefaultBoxGenerator(ssd_priors.ASPECT_RATIOS, scales=ssd_priors.scales("voc"), steps=ssd_priors.STEPS,
                                clip=True)
    centres = plain._grid_default_boxes([[f, f] for f in VOC["feature_maps"]], [300, 300])[:, :2]
    outside = (centres > 1).any(1)
    assert int(outside.sum()) == 19 * 6  # the 10x10 source's last row and column (9.5 / 9.375 > 1), 6 boxes each
    assert torch.allclose(centres[outside].max(), torch.tensor(9.5 / 9.375))


def test_ssd300_vgg16_takes_the_voc_priors_as_an_option():
    voc = build_detector(tiny_config("ssd300_vgg16", options={"priors": "voc"})).model
    default = build_detector(tiny_config("ssd300_vgg16")).model
    assert isinstance(voc.anchor_generator, ssd_priors.SSDPytorchBoxes)
    assert voc.anchor_generator.scales == ssd_priors.scales("voc")
    assert not isinstance(default.anchor_generator, ssd_priors.SSDPytorchBoxes)  # unset: torchvision's own
    assert default.anchor_generator.scales == [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    with pytest.raises(ConfigError, match="unknown key"):
        build_detector(tiny_config("ssd300_vgg16", options={"prior": "voc"}))


def test_the_real_baseline_has_torchvision_s_parameter_count():
    model = build_detector(tiny_config("ssd300_vgg16", num_classes=21, width_mult=1.0, options={"priors": "voc"})).model
    assert sum(p.numel() for p in model.parameters()) == 26_285_486  # performance.md §1.3 golden value
