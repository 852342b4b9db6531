"""Faster R-CNN R18-C4, real and BiDet, as the fasterrcnnc4 family: contract, layer lists, heads, RPN taps, transfer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from detbin.binary.layers import is_binary
from detbin.models.checkpoint import infer_config
from detbin.models.config import tiny_config
from detbin.models.detector import build_detector
from detbin.models.families import family_of
from detbin.models.location import inference_form
from detbin.models.taps import record

# every code path, 128-px images, 8x8 C4 map
TINY = dict(width_mult=0.125, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50, box_batch_size_per_image=16)
BLOCKS = [f"{stage}.{b}.conv{c}" for stage in ("layer1", "layer2", "layer3") for b in (0, 1) for c in (1, 2)]


def c4(bidet: bool, **overrides) -> nn.Module:
    arch = "fasterrcnnc4_resnet18_bidet" if bidet else "fasterrcnnc4_resnet18"
    return build_detector(tiny_config(arch, 4, **{**TINY, **overrides})).model


@pytest.fixture
def batch():
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 40.0, 120.0, 110.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


def precision(model: nn.Module) -> tuple[list[str], list[str]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [n for n, m in layers if is_binary(m)], [n for n, m in layers if not is_binary(m)]


def test_student_trains_and_detects(batch):
    model = c4(bidet=True)
    losses = model(*batch)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(batch[0])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    assert model.backbone(torch.zeros(1, 3, 128, 128))["0"].shape == (1, 32, 8, 8)  # stride 16, 256 x 1/8


def test_student_layer_lists():
    model = c4(bidet=True)
    binary, real = precision(model)
    layer4 = [f"roi_heads.box_head.layer4.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]
    assert binary == [f"backbone.body.{n}" for n in BLOCKS] + ["rpn.head.conv"] + layer4
    assert real == ["backbone.body.conv1", "backbone.body.layer2.0.downsample.0", "backbone.body.layer3.0.downsample.0",
                    "rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_head.layer4.0.downsample.0",
                    "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
    block = model.backbone.body.layer2[0]  # Bi-Real: AvgPool(2, ceil) -> 1x1 -> BN shortcut, no ReLU
    assert isinstance(block.downsample.pool, nn.AvgPool2d) and block.downsample.pool.ceil_mode
    conv, norm = getattr(block.downsample, "0"), getattr(block.downsample, "1")
    assert conv.stride == (1, 1) and conv.kernel_size == (1, 1) and isinstance(norm, nn.BatchNorm2d)
    assert isinstance(model.backbone.body.relu, nn.Identity)  # stem: conv -> BN -> max-pool
    head = model.rpn.head
    assert head.conv.bias is not None and isinstance(head.bn, nn.BatchNorm2d) and head.conv.pad_value == -1.0
    assert (head.cls_logits.out_channels, head.bbox_pred.out_channels) == (9, 72)  # 1 logit, 8 per anchor
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 8  # class-agnostic (log var, mean)
    from detbin.binary.surgery import matches_any
    assert [n for n in binary + real if matches_any(n, family_of("fasterrcnnc4_resnet18").keep_real)] == real


def test_teacher_is_real_and_regresses_per_class():
    model = c4(bidet=False)
    assert precision(model)[0] == []
    assert isinstance(model.backbone.body.relu, nn.ReLU)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4 * 4
    assert model.rpn.head.bbox_pred.out_channels == 36
    assert model.rpn.anchor_generator.sizes[0] == (32, 64, 128) and model.rpn.anchor_generator.aspect_ratios[0] == (
        0.5, 1.0, 2.0)


def test_release_settings():
    model = c4(bidet=True, anchor_sizes=None, min_size=None, max_size=None, score_thresh=None, nms_thresh=None)
    rpn, roi = model.rpn, model.roi_heads
    assert rpn.nms_thresh == 0.7 and rpn.box_beta == 1 / 9 and roi.box_beta == 1.0  # smooth-L1 sigma 3 / 1
    assert rpn.fg_bg_sampler.batch_size_per_image == 256 and rpn.fg_bg_sampler.positive_fraction == 0.5
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert roi.fg_bg_sampler.positive_fraction == 0.25 and roi.proposal_matcher.low_threshold == 0.5
    assert roi.box_coder.weights == (10.0, 10.0, 5.0, 5.0)  # target stds (0.1, 0.1, 0.2, 0.2)
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.01, 0.3, 100)
    assert rpn.anchor_generator.sizes[0] == (128, 256, 512)  # VOC scales 8, 16, 32 x 16 px
    assert (model.transform.min_size, model.transform.max_size) == ((600,), 1000)


@pytest.mark.parametrize("prior_grad", [False, True])
def test_rpn_prior_scores_released_detached_or_with_gradient(batch, prior_grad):
    model = c4(bidet=True)
    model.rpn.prior_grad = prior_grad
    with record(model, ["rpn.proposal_scores", "roi_heads.sampled_proposals"]) as taps:
        model(*batch)
    scores = taps["rpn.proposal_scores"][0]
    assert len(scores) == 2 and all(0 < len(s) <= 100 for s in scores)
    assert all(s.requires_grad == prior_grad for s in scores)
    assert [len(p) for p in taps["roi_heads.sampled_proposals"][0]] == [16, 16]


def test_grad_mode_keeps_torchvision_selection(batch):
    torch.manual_seed(1)
    detached = c4(bidet=True)
    with_grad = copy.deepcopy(detached)
    with_grad.rpn.prior_grad = True
    runs = []
    for model in (detached, with_grad):
        model.rpn.head.sampler.sample_sigma = 0.0
        images, targets = model.transform(*batch)
        with record(model, ["rpn.proposal_scores"]) as taps:
            boxes, _ = model.rpn(images, model.backbone(images.tensors), targets)
        runs.append((boxes, taps["rpn.proposal_scores"][0]))
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.allclose(a, b.detach())
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))


def test_student_starts_from_the_real_teacher():
    teacher = build_detector(tiny_config("fasterrcnnc4_resnet18", 4, **TINY))
    model = c4(bidet=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = family_of("fasterrcnnc4_resnet18_bidet").transfer(model, teacher)
    t, s = teacher.model.state_dict(), model.state_dict()
    for key in ("backbone.body.layer2.0.conv1.weight", "backbone.body.layer2.0.downsample.0.weight",
                "roi_heads.box_head.layer4.1.bn2.running_var", "rpn.head.conv.weight", "rpn.head.cls_logits.bias",
                "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(s[key], t[key]) and key in loaded, key
    rows = (torch.arange(9)[:, None] * 8 + 4 + torch.arange(4)).flatten()
    assert torch.equal(s["rpn.head.bbox_pred.weight"][rows], t["rpn.head.bbox_pred.weight"])
    for key in ("roi_heads.box_predictor.bbox_pred.weight", "rpn.head.bn.weight"):  # no counterpart: kept
        assert torch.equal(s[key], before[key]) and key not in loaded


def test_inference_form_and_state_dict_recognition(batch):
    model = c4(bidet=True).eval()
    small = inference_form(copy.deepcopy(model))
    assert small.rpn.head.bbox_pred.out_channels == 36 and small.roi_heads.box_predictor.bbox_pred.out_features == 4
    with torch.no_grad():
        a, b = model(batch[0])[0], small(batch[0])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    for state, bidet, variance in ((model.state_dict(), True, True), (small.state_dict(), True, False),
                                   (c4(bidet=False).state_dict(), False, None)):
        config = infer_config(state)
        assert config.arch == ("fasterrcnnc4_resnet18_bidet" if bidet else "fasterrcnnc4_resnet18")
        assert (config.num_classes, config.width_mult, config.options.get("variance")) == (4, 0.125, variance)
        assert config.options["class_agnostic"] == bidet and config.options["rpn_channels"] == 512
