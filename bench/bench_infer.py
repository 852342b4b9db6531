"""Inference speed of a 1-bit student (not a test): torch fp32, the torch float simulation, OpenVINO fp32 and
OpenVINO binary (BinaryConvolution), on the R18-FPN at 600x1000 or the tiny config; and ``--map``: the VOC07
mAP of the OpenVINO engine against the simulation on a trained student's test set.

Latency (``--config full`` = the papers' VOC R18-FPN, 21 classes; input 608x1024, a 600x1000 image after
torchvision's resize and padding to a multiple of 32):

* ``backbone+fpn``: the goal's number; ``backbone+fpn+rpn_head``: what the OpenVINO export runs;
* ``end_to_end``: one 600x1000 image through the whole detector, the RoI heads in torch, and where the
  time goes (stage by stage, medians);

for ``torch fp32`` (the real R18-FPN, the teacher's architecture), ``torch simulation`` (the student as
trained: binary convs in float), ``openvino fp32`` (the real R18-FPN's IR) and ``openvino binary``
(the student's IR). The runners take turns within every round (order rotated), so a load change on a
shared machine hits all of them; medians and minima over ``--rounds``. Students are untrained, with
random BN statistics and shifts (speed does not depend on the weights). Also: the BinaryConvolution
layers of the compiled IR against the binarized convs, and the packed file's size against
``detbin profile``'s accounted memory.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/bench_infer.py --threads 1 --out bench_1t.json
    OMP_NUM_THREADS=2 taskset -c 0,1 .venv/bin/python bench/bench_infer.py --threads 2 --out bench_2t.json
    .venv/bin/python bench/bench_infer.py --map runs/binarize/exp/weights/best.pt --data data/synthetic

Needs ``pip install -e ".[openvino]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.rpn import concat_box_prediction_layers

from detbin.app.build import layout_spec, load_model, make_student
from detbin.app.exporting import binary_calls, export_size
from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.binary.quantizers import RSign
from detbin.config import validate_params
from detbin.cost.profile import profile
from detbin.deploy.engine import OpenVINOEngine, detect
from detbin.deploy.openvino_export import compile_model, exported_part, layer_counts, to_openvino
from detbin.deploy.packed import load_packed, save_packed, size_breakdown
from detbin.models.config import DetectorConfig, tiny_config
from detbin.models.detector import build_detector
from detbin.models.layout import BinarizeSpec
from detbin.training import plugins

RUNNERS = ("torch_fp32", "torch_simulation", "openvino_fp32", "openvino_binary")


def full_config() -> DetectorConfig:
    """The papers' VOC R18-FPN: 21 classes, 600x1000 test size."""
    return DetectorConfig(arch="fasterrcnn_resnet18_fpn", num_classes=21, min_size=600, max_size=1000)


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine terms, RSign shifts, (R)PReLU slopes, binary conv biases: realistic values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
        elif isinstance(m, RSign):
            m.shift.normal_(0, 0.1, generator=g)
        elif isinstance(m, RPReLU):
            m.shift_in.normal_(0, 0.1, generator=g)
            m.shift_out.normal_(0, 0.1, generator=g)
        elif isinstance(m, BinaryConv2d) and m.bias is not None:
            m.bias.normal_(0, 0.05, generator=g)


def build(recipe: str, config: DetectorConfig) -> tuple[Any, Any, Any]:
    """``(real R18-FPN, untrained student of recipe, spec)``, both in eval mode."""
    torch.manual_seed(0)
    teacher = build_detector(config)
    cls = plugins.load(recipe)
    spec = layout_spec(cls)
    student, _ = make_student(teacher, cls(validate_params(cls.Params, {}, recipe)), spec)
    perturb(student.model)
    teacher.model.eval()
    student.model.eval()
    return teacher, student, spec


def interleaved(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Median and min milliseconds per runner, the runners taking turns in every round (order rotated)."""
    for fn in runners.values():
        fn()  # warm-up: first-call allocations, OpenVINO's lazy init
    times: dict[str, list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            runners[key]()
            times[key].append(time.perf_counter() - start)
    return {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "rounds": rounds}
            for k, v in times.items()}


def median_ms(fn: Callable[[], Any], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def speedups(times: dict[str, dict[str, float]], fast: str) -> list[dict[str, Any]]:
    """``slow / fast`` for every other runner, both sides named, on medians and on minima."""
    return [{"fast": fast, "slow": slow, "fast_median_ms": times[fast]["median_ms"],
             "slow_median_ms": times[slow]["median_ms"],
             "speedup_median": times[slow]["median_ms"] / times[fast]["median_ms"],
             "speedup_min": times[slow]["min_ms"] / times[fast]["min_ms"]} for slow in times if slow != fast]


def torch_runner(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return module(x)
    return run


def ov_runner(compiled: Any, x: np.ndarray) -> Callable[[], Any]:
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def parts(teacher: Any, student: Any, rpn: bool, size: tuple[int, int], rounds: int, threads: int) -> dict[str, Any]:
    """Latency of backbone + FPN (+ RPN head) for the four runners, and the binary layer counts."""
    real, _ = exported_part(teacher, rpn=rpn, marked=False)
    sim, _ = exported_part(student, rpn=rpn, marked=False)
    marked, names = exported_part(student, rpn=rpn)
    ov_binary = compile_model(to_openvino(marked, size), threads)
    ov_fp32 = compile_model(to_openvino(real, size, binarize=False), threads)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    times = interleaved({"torch_fp32": torch_runner(real, x), "torch_simulation": torch_runner(sim, x),
                         "openvino_fp32": ov_runner(ov_fp32, x.numpy()),
                         "openvino_binary": ov_runner(ov_binary, x.numpy())}, rounds)
    counts = layer_counts(ov_binary)
    return {**times, "binary_convolutions": counts.get("BinaryConvolution", 0), "binarized_convs": len(names),
            "binary_conv_calls": binary_calls(sim), "float_convolutions_left": counts.get("Convolution", 0),
            "speedups": speedups(times, "openvino_binary")}


def breakdown(student: Any, engine: OpenVINOEngine, images: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """Milliseconds per stage of :func:`detect` (medians), timed one stage after the other."""
    model, stages = student.model, {}
    image_list, _ = model.transform(images)
    stages["transform (normalize, resize)"] = median_ms(lambda: model.transform(images), rounds)
    outputs = engine(image_list.tensors)
    stages["openvino backbone+fpn+rpn_head"] = median_ms(lambda: engine(image_list.tensors), rounds)
    n, rpn, heads = len(engine.levels), model.rpn, model.roi_heads
    features = dict(zip(engine.levels, outputs[:n]))
    maps = list(features.values())

    def proposals() -> Any:
        anchors = rpn.anchor_generator(image_list, maps)
        per_level = [o[0].numel() for o in outputs[n:2 * n]]
        objectness, deltas = concat_box_prediction_layers(outputs[n:2 * n], outputs[2 * n:])
        boxes = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        return rpn.filter_proposals(boxes, objectness, image_list.image_sizes, per_level)[0]

    with torch.no_grad():
        boxes = proposals()
        stages["rpn anchors+decode+nms"] = median_ms(proposals, rounds)
        pooled = heads.box_roi_pool(features, boxes, image_list.image_sizes)
        stages["roi_align"] = median_ms(lambda: heads.box_roi_pool(features, boxes, image_list.image_sizes), rounds)
        flat = heads.box_head(pooled)
        stages["box_head (2 real FC layers)"] = median_ms(lambda: heads.box_head(pooled), rounds)
        logits, regression = heads.box_predictor(flat)
        stages["box_predictor"] = median_ms(lambda: heads.box_predictor(flat), rounds)
        stages["postprocess (decode+nms)"] = median_ms(
            lambda: heads.postprocess_detections(logits, regression, boxes, image_list.image_sizes), rounds)
    stages["rois"] = float(sum(len(b) for b in boxes))
    return stages


def end_to_end(teacher: Any, student: Any, image: tuple[int, int], size: tuple[int, int], rounds: int,
               threads: int) -> dict[str, Any]:
    images = [torch.rand(3, *image, generator=torch.Generator().manual_seed(0))]
    ov_fp32 = OpenVINOEngine.from_detector(teacher, size, threads, binarize=False)
    ov_binary = OpenVINOEngine.from_detector(student, size, threads)
    times = interleaved({"torch_fp32": lambda: teacher.predict(images),
                         "torch_simulation": lambda: student.predict(images),
                         "openvino_fp32": lambda: detect(teacher, ov_fp32, images),
                         "openvino_binary": lambda: detect(student, ov_binary, images)}, rounds)
    return {**times, "note": "openvino_* run backbone+FPN+RPN head on OpenVINO, the RoI heads in torch",
            "speedups": speedups(times, "openvino_binary"),
            "where_the_time_goes_openvino_binary_ms": breakdown(student, ov_binary, images, rounds)}


def sizes(student: Any, spec: Any) -> dict[str, Any]:
    accounted = profile(student, image_size=(64, 64), rois=1).memory_bits // 8
    with tempfile.TemporaryDirectory() as tmp:
        path = save_packed(student, spec, Path(tmp) / "m.safetensors")
        size, parts_ = path.stat().st_size, size_breakdown(path)
    return {"packed_bytes": size, "accounted_bytes": accounted, "ratio": size / accounted, "packed_parts": parts_}


def latency(args: argparse.Namespace) -> dict[str, Any]:
    config = full_config() if args.config == "full" else tiny_config()
    teacher, student, spec = build(args.recipe, config)
    size = export_size(student)
    image = (600, 1000) if args.config == "full" else (128, 128)
    import openvino as ov

    result: dict[str, Any] = {"recipe": args.recipe, "config": args.config, "input": list(size), "image": list(image),
                              "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
                              "openvino": ov.__version__, "affinity": sorted(os.sched_getaffinity(0)),
                              "load_before": os.getloadavg(), "sizes": sizes(student, spec)}
    print(json.dumps(result), flush=True)
    for name in args.parts:
        if name == "e2e":
            result["end_to_end"] = end_to_end(teacher, student, image, size, args.rounds, args.threads)
        else:
            key = "backbone+fpn" if name == "backbone" else "backbone+fpn+rpn_head"
            result[key] = parts(teacher, student, name == "rpn", size, args.rounds, args.threads)
        print(json.dumps({k: v for k, v in result.items() if k in ("backbone+fpn", "backbone+fpn+rpn_head",
                                                                     "end_to_end")}, indent=None), flush=True)
    result["load_after"] = os.getloadavg()
    return result


def map_check(args: argparse.Namespace) -> dict[str, Any]:
    """VOC07 mAP of the simulation, its packed reload and the OpenVINO engine on the test split, and their agreement."""
    from detbin.data.datasets import VocDetection
    from detbin.evaluation.metrics import VocMAP

    sim, meta = load_model(Path(args.map))
    classes = meta["classes"]
    spec = BinarizeSpec.from_dict(meta["binarize"]) if meta.get("binarize") else None
    with tempfile.TemporaryDirectory() as tmp:
        packed, _ = load_packed(save_packed(sim, spec, Path(tmp) / "m.safetensors", classes))
    engine = OpenVINOEngine.from_detector(packed, export_size(packed), args.threads)
    data = VocDetection(Path(args.data), "test")
    n = min(len(data), args.max_images or len(data))
    scorers = {k: VocMAP(classes, use_07_metric=True) for k in ("simulation", "packed", "openvino")}
    seconds = dict.fromkeys(scorers, 0.0)
    identical, same_labels = 0, 0
    for i in range(n):
        image, target = data[i]
        out = {}
        runs = {"simulation": lambda x: sim.predict(x)[0], "packed": lambda x: packed.predict(x)[0],
                "openvino": lambda x: detect(packed, engine, x)[0]}
        for key, fn in runs.items():
            start = time.perf_counter()
            out[key] = fn([image])
            seconds[key] += time.perf_counter() - start
            scorers[key].process([target], [out[key]])
        identical += all(torch.equal(out["simulation"][k], out["packed"][k]) for k in out["simulation"])
        same_labels += torch.equal(out["simulation"]["labels"], out["openvino"]["labels"])
    result = {"checkpoint": args.map, "data": args.data, "images": n, "threads": args.threads,
              "packed_identical_images": identical, "openvino_same_label_sequence_images": same_labels,
              "seconds": seconds, "load": os.getloadavg()}
    for key, scorer in scorers.items():
        result[f"{key}_voc07_mAP"] = scorer.summarize().mAP
    result["openvino_minus_simulation_points"] = 100 * (result["openvino_voc07_mAP"] - result["simulation_voc07_mAP"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--recipe", default="reactnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=("backbone", "rpn", "e2e"), default=["backbone", "rpn", "e2e"])
    parser.add_argument("--map", metavar="CKPT", help="a trained student: mAP of the engine vs the simulation")
    parser.add_argument("--data", help="its VOC-layout data set (the test split is scored)")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = map_check(args) if args.map else latency(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
