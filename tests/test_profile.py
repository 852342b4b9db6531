"""Cost accounting: hand-computed toy numbers, counter agreement, the papers' rows, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from detbin.cli import app
from detbin.app.build import load_target
from detbin.models.config import DetectorConfig, tiny_config
from detbin.models.detector import build_detector
from detbin.binary.layers import BinaryConv2d, is_binary
from detbin.cost.profile import Cost, profile, profile_module

runner = CliRunner()
FAMILIES = ("fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn", "fcos_resnet18_fpn", "ssd300_vgg16",
            "ssdlite320_mobilenet_v3_large")
FULL_SIZE = (("fasterrcnn_resnet50_fpn", (160, 224)), ("retinanet_resnet50_fpn", (160, 224)),
             ("fcos_resnet50_fpn", (160, 224)), ("ssdlite320_mobilenet_v3_large", (320, 320)))


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def hook_macs(model: nn.Module, image_size: tuple[int, int], rois: int) -> dict[str, int]:
    """An independent reference: MACs per Conv2d/Linear by forward hooks on the detector's parts."""
    macs: dict[str, int] = {}

    def hook(name):
        def record(module, inputs, output):
            per_output = (module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                          if isinstance(module, nn.Conv2d) else module.in_features)
            macs[name] = macs.get(name, 0) + output.numel() * per_output
        return record

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    model.eval()
    with torch.no_grad():
        maps = list(model.backbone(torch.zeros(1, 3, *image_size)).values())
        if hasattr(model, "rpn"):
            model.rpn.head(maps)
            model.roi_heads.box_predictor(model.roi_heads.box_head(torch.zeros(rois, maps[0].shape[1], 7, 7)))
        else:
            model.head(maps)
    for h in handles:
        h.remove()
    return macs


# (a) a two-conv toy, numbers written as arithmetic ------------------------------------------------

class TwoConv(nn.Module):
    """Real 3->8 3x3 conv (bias) + BN + ReLU, then an 8->16 3x3 stride-2 conv without bias."""

    def __init__(self, activation: str | None, weight: str | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = BinaryConv2d(8, 16, 3, stride=2, padding=1, bias=False, input_quantizer=activation,
                                  weight_quantizer=weight)

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv1(x))))


CONV1_MACS = 16 * 16 * 8 * (3 * 3 * 3)       # 16x16 output, 8 channels, 3x3x3 taps each
CONV2_MACS = 8 * 8 * 16 * (8 * 3 * 3)        # stride 2: 8x8 output, 16 channels, 8x3x3 taps each
CONV1_PARAMS = 8 * 3 * 3 * 3 + 8             # weight + bias
BN_PARAMS = 8 + 8                            # affine gamma and beta
CONV2_WEIGHTS = 16 * 8 * 3 * 3


def test_toy_binary_conv_counts_bops_one_bit_weights_and_derived_scales():
    cost = profile_module(TwoConv("sign", "scaled_sign"), [torch.zeros(1, 3, 16, 16)])
    assert (cost.flops, cost.bops) == (CONV1_MACS, CONV2_MACS) == (55_296, 73_728)
    assert cost.ops == CONV1_MACS + CONV2_MACS / 64 == 56_448
    assert cost.params_binary == CONV2_WEIGHTS
    assert cost.params_real == CONV1_PARAMS + BN_PARAMS + 16  # XNOR alpha: one real scale per output channel
    assert cost.memory_bits == 32 * (224 + 16 + 16) + 1_152
    assert cost.memory_mb == pytest.approx(9_344 / 8 / 1e6) and cost.memory_mib == pytest.approx(9_344 / 8 / 2**20)
    assert cost.binary_mac_share == pytest.approx(73_728 / (55_296 + 73_728))
    assert cost.real_layers == ["conv1"] and cost.image_size == (16, 16) and cost.rois is None
    assert cost.counter == "fvcore" and cost.cross_check.rel_diff == 0 and cost.cross_check.bops == CONV2_MACS
    assert cost.not_counted["batch_norm"] == 1 and cost.not_counted["relu"] == 1


def test_toy_real_layers_count_flops_and_32_bit_weights():
    cost = profile_module(TwoConv(None, None), [torch.zeros(1, 3, 16, 16)])
    assert (cost.flops, cost.bops, cost.ops) == (CONV1_MACS + CONV2_MACS, 0, CONV1_MACS + CONV2_MACS)
    assert (cost.params_real, cost.params_binary) == (CONV1_PARAMS + BN_PARAMS + CONV2_WEIGHTS, 0)
    assert cost.memory_bits == 32 * (224 + 16 + 1_152) and cost.real_layers == ["conv1", "conv2"]


def test_toy_weight_only_binary_conv_stores_one_bit_but_its_macs_stay_real():
    cost = profile_module(TwoConv(None, "sign"), [torch.zeros(1, 3, 16, 16)])  # W1A32: max(bits) is 32
    assert (cost.flops, cost.bops) == (CONV1_MACS + CONV2_MACS, 0)
    assert (cost.params_real, cost.params_binary) == (CONV1_PARAMS + BN_PARAMS, CONV2_WEIGHTS)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this layer refuses JIT tracing")
        return self.conv(x)


class NeedsValues(Untraceable):
    def forward(self, x):
        return self.conv(x) * float(x.abs().sum().item() >= 0)  # .item() has no meta kernel


def test_fvcore_failure_falls_back_to_flop_counter_mode_and_says_so():
    cost = profile_module(Untraceable(), [torch.zeros(2, 3, 5, 5)])
    assert cost.flops == 2 * 5 * 5 * 4 * 3
    assert cost.counter == "FlopCounterMode (fvcore failed: RuntimeError)"


def test_a_part_that_needs_values_is_cross_checked_on_real_tensors():
    cost = profile_module(NeedsValues(), [torch.zeros(2, 3, 5, 5)])
    assert cost.flops == 2 * 5 * 5 * 4 * 3 and cost.counter == "fvcore"
    assert cost.cross_check.flops == cost.flops


# (b) fvcore and FlopCounterMode agree on every family, tiny and full size -------------------------

def assert_counters_agree(cost: Cost, model: nn.Module, size: tuple[int, int], rois: int) -> None:
    assert cost.counter == "fvcore"
    assert cost.cross_check.rel_diff <= 0.01, cost.cross_check
    reference = hook_macs(model, size, rois)
    assert {m.name: m.macs for m in cost.by_module} == reference
    assert cost.unreached == []


@pytest.mark.parametrize("arch", FAMILIES)
def test_counters_agree_on_tiny_models(arch):
    detector = build_detector(tiny_config(arch))
    cost = profile(detector, rois=64)
    assert_counters_agree(cost, detector.model, cost.image_size, 64)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size"), FULL_SIZE)
def test_counters_agree_on_full_size_models(arch, size):
    detector = build_detector(DetectorConfig(arch=arch, num_classes=21))
    cost = profile(detector, size, 300)
    assert_counters_agree(cost, detector.model, size, 300)


# (c) the papers' rows for real-valued models --------------------------------------------------------

def test_ssd300_matches_bidet_memory_and_mflops():
    detector = build_detector(DetectorConfig(arch="ssd300_vgg16", num_classes=21))
    ssd300 = profile(detector)
    assert ssd300.image_size == (300, 300)
    assert_counters_agree(ssd300, detector.model, (300, 300), 0)  # full-size SSD300 for (b) too
    assert ssd300.params_real == 26_285_486 and ssd300.params_binary == 0  # performance.md §1.3, incl. L2Norm scale
    assert ssd300.memory_mib == pytest.approx(100.28, rel=0.005)  # BiDet Table: 100.28 "MB" (= MiB)
    assert ssd300.flops / 1e6 == pytest.approx(31_750, rel=0.02)  # BiDet: 31,750 MFLOPs
    assert ssd300.flops == pytest.approx(31.3735e9, abs=0.00005e9)  # our golden value (ssd.pytorch topology)


@pytest.mark.slow
def test_faster_rcnn_r50_fpn_matches_ida_det_gflops():
    cost = profile(build_detector(DetectorConfig(arch="fasterrcnn_resnet50_fpn", num_classes=21)), (600, 1000), 1000)
    assert cost.flops / 1e9 == pytest.approx(127.76, rel=0.015)  # IDa-Det supplement, Table 1
    # performance.md's golden 127.321e9 is mmdet's head (80 box outputs); torchvision's predictor
    # regresses 4 x 21 = 84 outputs, i.e. 1000 RoIs x 1024 x 4 MACs more.
    assert cost.flops - 1000 * 1024 * 4 == pytest.approx(127.321e9, abs=0.0005e9)
    assert cost.cross_check.rel_diff <= 0.01 and cost.rois == 1000


# (d) binary layouts: the real-layer list and the formulas ----------------------------------------

R50_REAL = ["backbone.body.conv1", *(f"backbone.body.layer{i}.0.downsample.0" for i in range(1, 5)),
            "rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_head.fc6", "roi_heads.box_head.fc7",
            "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
SSD_REAL = ["backbone.features.0", "backbone.extra.0.7.3",
            *(f"head.{h}_head.module_list.{i}" for h in ("classification", "regression") for i in range(6))]


def assert_formulas(cost: Cost, model: nn.Module) -> None:
    modules = dict(model.named_modules())
    binary = [n for n, m in modules.items() if is_binary(m)]
    assert sorted(m.name for m in cost.by_module if m.binary) == sorted(binary)
    assert cost.bops == sum(m.macs for m in cost.by_module if m.binary) > 0
    assert cost.flops == sum(m.macs for m in cost.by_module if not m.binary) > 0
    assert cost.ops == cost.flops + cost.bops / 64
    weights = sum(modules[n].weight.numel() for n in binary)
    scales = sum(modules[n].out_channels for n in binary)  # every layout here uses alpha = mean|W| per channel
    assert cost.params_binary == weights
    assert cost.params_real == sum(p.numel() for p in model.parameters()) - weights + scales
    assert cost.memory_bits == 32 * cost.params_real + cost.params_binary
    assert cost.memory_mb == cost.memory_bits / 8 / 1e6 and cost.memory_mib == cost.memory_bits / 8 / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["xnor", "bireal", "reactnet"])
def test_recipe_layouts_on_r50_fpn_keep_the_papers_real_layers(recipe):
    detector = load_target("fasterrcnn_resnet50_fpn", recipe)
    cost = profile(detector, (128, 160), 300)
    assert cost.real_layers == R50_REAL
    assert_formulas(cost, detector.model)
    assert_counters_agree(cost, detector.model, (128, 160), 300)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["xnor", "bireal", "reactnet"])
def test_recipe_layouts_on_ssd300_keep_stem_fc7_and_heads_real(recipe):
    detector = load_target("ssd300_vgg16", recipe)
    cost = profile(detector)
    assert cost.real_layers == SSD_REAL
    assert_formulas(cost, detector.model)
    assert cost.cross_check.rel_diff <= 0.01 and cost.cross_check.differing == ()


def test_cli_prints_the_real_layer_list_and_flags_the_roi_fc_head():
    result = invoke("profile", "fasterrcnn_resnet18_fpn", "--recipe", "reactnet", "--image-size", "96", "128",
                    "--rois", "10")
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())  # rich wraps titles and notes at the console width
    for fragment in ("1 MAC = 1 FLOP; OPs = FLOPs + BOPs/64; MB = 10^6 B, MiB = 2^20 B", "counter: fvcore",
                     "RoI head counted for exactly 10 RoIs", "layers kept real (10 of 35", "backbone.body.conv1",
                     "RoI FC head", "the real RoI FC head holds", "roi_align (MultiScaleRoIAlign)"):
        assert fragment in text, fragment


def test_cli_json_with_compare_gives_the_keys_and_the_ratios():
    result = invoke("profile", "fasterrcnn_resnet18_fpn", "--recipe", "xnor", "--image-size", "96", "128",
                    "--rois", "10", "--compare", "fasterrcnn_resnet18_fpn", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("flops", "bops", "ops", "memory_mb", "memory_mib", "params_real", "params_binary",
                "binary_mac_share", "image_size", "rois", "counter", "real_layers", "by_part", "by_module",
                "not_counted", "cross_check"):
        assert key in report, key
    assert report["image_size"] == [96, 128] and report["rois"] == 10
    assert report["not_counted"]["nms (postprocess)"] is None and report["not_counted"]["batch_norm"] > 0
    other = report["compare"]["other"]
    assert other["bops"] == 0 and other["image_size"] == [96, 128]
    assert other["flops"] == report["flops"] + report["bops"]  # same convs, all real in OTHER
    assert report["compare"]["memory_ratio"] == pytest.approx(other["memory_bits"] / report["memory_bits"])
    assert report["compare"]["ops_ratio"] == pytest.approx(other["ops"] / report["ops"])


# (e) one-line errors ---------------------------------------------------------------------------------

def test_checkpoint_of_a_classifier_is_not_a_detector(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    assert_one_line_error(invoke("profile", str(path)), "matches no known detector")


def test_checkpoint_holding_non_tensors_is_not_a_detector(tmp_path):
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    assert_one_line_error(invoke("profile", str(path)), "notes.pt: neither a detbin checkpoint nor a state dict")


def test_unknown_architecture_lists_close_names():
    assert_one_line_error(invoke("profile", "fasterrcnn_resnet50_fpm"),
                          "unknown architecture 'fasterrcnn_resnet50_fpm'", "did you mean: fasterrcnn_resnet50_fpn")


def test_missing_checkpoint_file(tmp_path):
    assert_one_line_error(invoke("profile", str(tmp_path / "student.pt")), "student.pt: no such checkpoint file")


@pytest.mark.parametrize("size", [("0", "600"), ("600", "-8")])
def test_image_size_must_be_positive(size):
    assert_one_line_error(invoke("profile", "ssd300_vgg16", "--image-size", *size), "both sides must be positive")


def test_unknown_recipe():
    assert_one_line_error(invoke("profile", "ssd300_vgg16", "--recipe", "reactnt"), "unknown recipe 'reactnt'",
                          "did you mean: reactnet?")


def test_student_checkpoint_is_profiled_as_is_and_refuses_a_second_layout(tmp_path):
    from detbin.training import plugins
    from detbin.models.layout import BinarizeSpec

    detector = build_detector(tiny_config("fasterrcnn_resnet18_fpn"))
    recipe = plugins.load("xnor")
    spec = BinarizeSpec.from_dict({**BinarizeSpec().to_dict(), **recipe.layout})
    recipe().binarize(detector, spec)
    path = tmp_path / "student.pt"  # checkpoint format 1 (detbin/checkpoint.py)
    torch.save({"format": "detbin", "format_version": 1, "kind": "student", "detector": detector.config.to_dict(),
                "binarize": spec.to_dict(), "recipe": "xnor", "recipe_params": {},
                "model": detector.model.state_dict()}, path)
    result = invoke("profile", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["bops"] == profile(detector).bops > 0
    assert_one_line_error(invoke("profile", str(path), "--recipe", "bireal"), "already has binary layers",
                          "drop it")


def test_the_default_roi_count_is_the_model_s_own_test_time_proposal_count():
    """One convention for `profile`, `profile --compare` and the demo: rpn_post_nms_top_n_test."""
    tiny = build_detector(tiny_config("fasterrcnn_resnet18_fpn", 6))
    assert tiny.config.rpn_post_nms_top_n_test == 150 and profile(tiny).rois == 150
    assert profile(tiny, rois=7).rois == 7
    full = build_detector(DetectorConfig(arch="fasterrcnn_resnet18_fpn", num_classes=3))
    assert profile(full, (64, 64)).rois == 1000  # torchvision's and the papers' test setting
