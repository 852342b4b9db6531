"""BiDet's SSD300 students (SC and plain) as the bidetssd300 family: contract, layer lists, names, transfer, forms."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from detbin.binary.layers import is_binary
from detbin.binary.quantizers import ApproxSign, ZeroSignApprox
from detbin.models.bidet_ssd import BiDetVGGBlock, teacher_table
from detbin.models.checkpoint import infer_config
from detbin.models.config import DetectorConfig, tiny_config
from detbin.models.detector import build_detector
from detbin.models.families import family_of
from detbin.models.location import inference_form

WIDTH = 0.0625  # channels 8..64: every layer of SSD300, 300-px input
HEADS = [f"head.{h}.{k}" for h in ("loc", "conf") for k in range(6)]
EXTRAS = [f"backbone.extras.{i}" for i in range(8)]


def student(form: str = "sc", classes: int = 4, **options) -> nn.Module:
    return build_detector(tiny_config("bidetssd300_vgg16", classes, width_mult=WIDTH,
                                      options={"form": form, **options})).model


def _convs(indices):
    return [f"backbone.vgg.layers.{i}.conv" for i in indices]


def precision(model: nn.Module) -> tuple[list[str], list[str]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [n for n, m in layers if is_binary(m)], [n for n, m in layers if not is_binary(m)]


def kinds(model: nn.Module) -> list[str]:
    out = []
    for layer in model.backbone.vgg.layers:
        if isinstance(layer, BiDetVGGBlock):
            out.append("block" if not layer.shortcut else "block+id" if layer.downsample is None else "block+pool")
        elif isinstance(layer, nn.Conv2d):
            out.append("binconv" if is_binary(layer) else "conv")
        else:
            out.append({nn.BatchNorm2d: "bn", nn.MaxPool2d: "maxpool", nn.ReLU: "relu"}[type(layer)])
    return out


def test_sc_student_trains_and_detects():
    model = student()
    images = [torch.rand(3, 300, 300), torch.rand(3, 240, 280)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(images)
        sources = model.backbone(torch.zeros(1, 3, 300, 300))
    assert [s.shape[-1] for s in sources.values()] == [38, 19, 10, 5, 3, 1]
    assert set(out[0]) == {"boxes", "labels", "scores"} and out[1]["boxes"].shape[1] == 4


def test_sc_layer_lists():
    model = student(classes=21)
    binary, real = precision(model)
    assert binary == _convs(range(2, 18)) + ["backbone.vgg.layers.19"] + EXTRAS
    assert real == (["backbone.vgg.layers.0"] + [f"backbone.vgg.layers.{i}.downsample.1" for i in (3, 6, 10, 14)]
                    + ["backbone.vgg.layers.22"] + HEADS)
    assert kinds(model) == (["conv", "bn", "block+id"] + ["block+pool", "block+id", "block+id"] + ["block+pool"]
                            + ["block+id"] * 3 + ["block+pool"] + ["block+id"] * 3 + ["block+pool"] + ["block+id"] * 3
                            + ["maxpool", "binconv", "bn", "relu", "conv", "bn", "relu"])
    # C (after conv3_3, 75 -> 38 px) pools with ceil_mode, the M positions without
    assert [model.backbone.vgg.layers[i].downsample[0].ceil_mode for i in (3, 6, 10, 14)] == [False, False, True, False]
    assert len(model.backbone.extra_bns) == 8
    keep = family_of("bidetssd300_vgg16").keep_real
    from detbin.binary.surgery import matches_any
    assert [n for n in binary + real if matches_any(n, keep)] == real  # the family's keep-real globs name them


def test_plain_layer_lists():
    model = student("plain", classes=21)
    binary, real = precision(model)
    assert binary == _convs([2, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17]) + ["backbone.vgg.layers.19"] + EXTRAS
    assert real == ["backbone.vgg.layers.0", "backbone.vgg.layers.22"] + HEADS
    assert [i for i, k in enumerate(kinds(model)) if k == "maxpool"] == [3, 6, 10, 14, 18]
    assert set(kinds(model)[2:18]) == {"block", "maxpool"}  # no shortcut anywhere


def test_names_follow_the_release_and_heads_have_eight_box_outputs():
    state = build_detector(DetectorConfig("bidetssd300_vgg16", 21)).model.state_dict()
    for key in ("backbone.vgg.layers.0.weight", "backbone.vgg.layers.1.running_mean", "backbone.vgg.layers.2.conv.weight",
                "backbone.vgg.layers.3.downsample.1.weight", "backbone.vgg.layers.3.downsample.2.weight",
                "backbone.vgg.layers.19.weight", "backbone.vgg.layers.22.bias", "backbone.L2Norm.weight",
                "backbone.extras.7.weight", "backbone.extra_bns.7.running_var", "head.conf.5.bias"):
        assert key in state, key
    assert "backbone.vgg.layers.0.bias" not in state and "backbone.vgg.layers.2.conv.bias" not in state
    assert [state[f"head.loc.{k}.weight"].shape[0] for k in range(6)] == [8 * a for a in (4, 6, 6, 6, 4, 4)]
    assert state["head.loc.1.weight"].shape[1] == 1024
    assert torch.equal(state["backbone.L2Norm.weight"], torch.full((512,), 20.0))


def test_extras_read_relu_zeros_so_the_extra_sources_see_the_image():
    model = student().eval()
    assert isinstance(model.backbone.extras[0].input_quantizer, ZeroSignApprox)
    a, b = torch.rand(1, 3, 300, 300), torch.rand(1, 3, 300, 300)
    with torch.no_grad():
        assert not torch.allclose(model.backbone(a)["2"], model.backbone(b)["2"])
        # with detbin's sign (+1 at 0) the input of extras.0 would be all +1: sources 3-6 constant
        model.backbone.extras[0].input_quantizer = ApproxSign()
        assert torch.allclose(model.backbone(a)["2"], model.backbone(b)["2"])


@pytest.mark.parametrize("form", ["sc", "plain"])
def test_student_starts_from_the_real_teacher(form):
    teacher = build_detector(tiny_config("ssd300_vgg16", 4, width_mult=WIDTH, options={"priors": "voc"}))
    model = student(form)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = family_of("bidetssd300_vgg16").transfer(model, teacher)
    s, t = model.backbone, teacher.model.backbone
    assert torch.equal(s.vgg.layers[0].weight, t.features[0].weight)
    first = 3 if form == "sc" else 4  # conv2_1 goes to the stride-2 block in the SC form
    assert torch.equal(s.vgg.layers[first].conv.weight, t.features[5].weight)
    assert torch.equal(s.vgg.layers[22].weight, t.extra[0][7][3].weight)
    assert torch.equal(s.vgg.layers[22].bias, t.extra[0][7][3].bias)
    assert torch.equal(s.extras[3].weight, t.extra[2][2].weight)
    assert torch.equal(s.L2Norm.weight, t.scale_weight)
    assert torch.equal(model.head.conf[2].weight, teacher.model.head.classification_head.module_list[2].weight)
    loc, reg = model.head.loc[0], teacher.model.head.regression_head.module_list[0]  # 4 boxes
    for box in range(4):
        assert torch.equal(loc.weight[8 * box + 4:8 * box + 8], reg.weight[4 * box:4 * box + 4])  # the mean half
        assert torch.equal(loc.weight[8 * box:8 * box + 4], before["head.loc.0.weight"][8 * box:8 * box + 4])
    new_convs = sorted(k for k in before if k.endswith(".conv.weight") and k not in loaded)
    assert new_convs == ([f"backbone.vgg.layers.{i}.conv.weight" for i in (13, 17, 5, 9)] if form == "sc" else [])
    assert len(teacher_table(form)) == 1 + 16 - 4 * (form == "sc") + 2 + 8 + 6 - (0 if form == "sc" else 4)
    other = build_detector(tiny_config("fasterrcnnc4_resnet18", 4))
    assert family_of("bidetssd300_vgg16").transfer(model, other) is None  # no table from that architecture


def test_inference_form_drops_the_variance_rows_and_keeps_detections():
    model = student().eval()
    small = inference_form(copy.deepcopy(model))
    assert small.head.loc[0].weight.shape[0] == model.head.loc[0].weight.shape[0] // 2 == 4 * 4
    images = [torch.rand(3, 300, 300)]
    with torch.no_grad():
        a, b = model(images)[0], small(images)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    rebuilt = student(variance=False)  # the family builds the inference form directly
    rebuilt.load_state_dict(small.state_dict())


@pytest.mark.parametrize(("form", "variance"), [("sc", True), ("plain", False)])
def test_state_dicts_are_recognised(form, variance):
    state = student(form, classes=6, variance=variance).state_dict()
    config = infer_config(state)
    assert (config.arch, config.num_classes, config.width_mult) == ("bidetssd300_vgg16", 6, WIDTH)
    assert config.options == {"form": form, "variance": variance}
