"""BiDet / AutoBiDet benchmark: the cost table beside the papers', and the synthetic benchmark runs.

    # cost rows of the real baselines and the BiDet students at the papers' input sizes (~3 min, one core)
    OMP_NUM_THREADS=1 python bench/bench_bidet.py cost [--json cost.json]

    # the synthetic benchmark: tiny teachers (detbin train), then 3 seeds of every student row, equal steps;
    # one single-threaded training process at a time; finished runs are skipped, so it can be restarted
    OMP_NUM_THREADS=1 python bench/bench_bidet.py run --data DIR --out RUNS [--rows ...] [--seeds 0 1 2]
    python bench/bench_bidet.py table --out RUNS
    # does D(G(f(x))) follow image difficulty? per autobidet run, against the per-image detection loss
    python bench/bench_bidet.py correlation --out RUNS [--seeds 0 1 2] [--images 200]

Cost counting is detbin's (:func:`detbin.profile`, fvcore checked against FlopCounterMode): FLOPs = real
MACs, BOPs = binary MACs, OPs = FLOPs + BOPs / 64, memory = 32 bit per real parameter (BN, biases, XNOR
scales included) + 1 bit per binary weight, in MiB (BiDet's "MB"). ``thop`` adds what pytorch-OpCounter
counts and the BNN convention leaves out (conv/linear biases, BN x2, ReLU, pooling: BiDet used thop,
README FAQ). ``train`` is a student as trained (8 box outputs per prior/anchor: log var, mean), ``deploy``
its inference form (:func:`detbin.inference_form`, paper §3.1.3). Faster R-CNN rows count the RoI head on
exactly ``RoIs`` pooled RoIs (the papers test with 300 proposals).

Benchmark rows (recipes/bidet, recipes/autobidet): ``ssd_noib`` / ``frcnn_noib`` the same student trained
with the task loss only; ``ssd_bidet`` / ``frcnn_bidet``; ``ssd_autobidet`` / ``frcnn_autobidet``. Each run is
``detbin binarize --recipe R --config recipes/R/FILE --teacher T --set train.seed=S --set params.sample_seed=S``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAPER = {  # TPAMI Table 2 (= CVPR Table 2 for the BiDet rows): (#Params MB, MFLOPs, VOC07 mAP)
    "ssd_real": (100.28, 31_750, 72.4), "ssd_plain": (22.06, 1_275, 52.4), "ssd_sc": (21.88, 3_215, 66.0),
    "frcnn_real": (47.35, 36_013, 74.5), "frcnn_sc": (2.39, 781, 59.5),
}
TEACHERS = {"ssd": ("teacher/tiny_synthetic_ssd300.yaml", "ssd_teacher"),
            "frcnn": ("teacher/tiny_synthetic_c4.yaml", "c4_teacher")}
ROWS = {  # name: (family, recipe, file)
    "ssd_noib": ("ssd", "bidet", "bidet/tiny_synthetic_ssd_noib.yaml"),
    "ssd_bidet": ("ssd", "bidet", "bidet/tiny_synthetic_ssd.yaml"),
    "ssd_autobidet": ("ssd", "autobidet", "autobidet/tiny_synthetic_ssd.yaml"),
    "frcnn_noib": ("frcnn", "bidet", "bidet/tiny_synthetic_frcnn_noib.yaml"),
    "frcnn_bidet": ("frcnn", "bidet", "bidet/tiny_synthetic_frcnn.yaml"),
    "frcnn_autobidet": ("frcnn", "autobidet", "autobidet/tiny_synthetic_frcnn.yaml"),
}


# ---------------------------------------------------------------------------------------------- cost
def thop_extras(model: Any, run: Any) -> int:
    """Element ops a thop-style counter adds: biases, BN (2 per element), ReLU, max/avg-pool."""
    import torch
    from torch import nn

    extra = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            extra[0] += output.numel()
        elif isinstance(module, nn.BatchNorm2d):
            extra[0] += 2 * output.numel()
        elif isinstance(module, nn.ReLU):
            extra[0] += output.numel()
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            extra[0] += inputs[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        run()
    for handle in handles:
        handle.remove()
    return extra[0]


def _runner(model: Any, size: tuple[int, int], rois: int | None) -> Any:
    import torch

    def run() -> None:
        maps = list(model.backbone(torch.zeros(1, 3, *size)).values())
        if rois is None:
            model.head(maps)
            return
        model.rpn.head(maps)
        model.roi_heads.box_predictor(model.roi_heads.box_head(torch.zeros(rois, maps[0].shape[1], 7, 7)))
    return run


def cost_row(name: str, form: str, detector: Any, size: tuple[int, int], rois: int | None) -> dict[str, Any]:
    from detbin import profile

    start = time.perf_counter()
    cost = profile(detector, size, rois or 1)
    extras = thop_extras(detector.model, _runner(detector.model, size, rois))
    return {"row": name, "form": form, "arch": detector.config.arch, "image": f"{size[0]}x{size[1]}", "rois": rois,
            "params_real": cost.params_real, "params_binary": cost.params_binary, "memory_mib": cost.memory_mib,
            "flops_m": cost.flops / 1e6, "bops_m": cost.bops / 1e6, "ops_m": cost.ops / 1e6,
            "thop_m": (cost.ops + extras) / 1e6, "check_rel_diff": cost.cross_check.rel_diff,
            "seconds": time.perf_counter() - start}


def cost_models() -> list[tuple[str, str, Any]]:
    """(paper row, form, detector): real nets; BiDet students as trained and deployed. Full size, 21 classes."""
    from detbin import DetectorConfig, build_detector, inference_form

    def both(row: str, config: DetectorConfig) -> list[tuple[str, str, Any]]:
        student = build_detector(config)
        deployed = copy.copy(student)
        deployed.model = inference_form(copy.deepcopy(student.model))
        return [(row, "train", student), (row, "deploy", deployed)]

    out = [("ssd_real", "real", build_detector(DetectorConfig("ssd300_vgg16", 21, options={"priors": "voc"})))]
    out += both("ssd_sc", DetectorConfig("bidetssd300_vgg16", 21, options={"form": "sc"}))
    out += both("ssd_plain", DetectorConfig("bidetssd300_vgg16", 21, options={"form": "plain"}))
    out.append(("frcnn_real", "real", build_detector(DetectorConfig("fasterrcnnc4_resnet18", 21))))
    out += both("frcnn_sc", DetectorConfig("fasterrcnnc4_resnet18_bidet", 21))
    return out


def cost(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    rows = []
    for name, form, detector in cost_models():
        if name.startswith("ssd"):
            rows.append(cost_row(name, form, detector, (300, 300), None))
            continue
        for size, rois in (((600, 1000), 300), ((300, 300), 300), ((300, 300), 100)):
            rows.append(cost_row(name, form, detector, size, rois))
    print(f"{'row':<11} {'form':<7} {'input':<8} {'RoIs':>4} {'MiB':>7} {'paper':>6} {'FLOPs M':>8} {'BOPs M':>8} "
          f"{'OPs M':>7} {'thop M':>7} {'paper':>6}")
    for r in rows:
        mb, mflops, _ = PAPER[r["row"]]
        print(f"{r['row']:<11} {r['form']:<7} {r['image']:<8} {r['rois'] or '-':>4} {r['memory_mib']:7.2f} {mb:6.2f} "
              f"{r['flops_m']:8,.0f} {r['bops_m']:8,.0f} {r['ops_m']:7,.0f} {r['thop_m']:7,.0f} {mflops:6,}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- runs
def _done(run: Path) -> bool:
    return (run / "weights" / "last.pt").is_file() and any(
        "voc07/mAP50" in line and '"teacher/' not in line for line in _lines(run / "metrics.jsonl"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _call(argv: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    print(f"{'ok ' if code == 0 else 'FAILED'} {log.stem} ({time.perf_counter() - start:.0f} s)", flush=True)


def run(args: argparse.Namespace) -> None:
    out, cli = Path(args.out), [sys.executable, "-m", "detbin"]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = ["--no-progress", "--data", str(args.data), "--project", str(out), "--device", "cpu", "--exist-ok"]
    teachers = {}
    for family, (file, name) in TEACHERS.items():
        teachers[family] = out / "train" / name / "weights" / "best.pt"
        if not _done(out / "train" / name):
            _call(cli + ["train", "--config", str(ROOT / "recipes" / file), "--name", name, *common],
                  out / "logs" / f"{name}.log")
    for seed in args.seeds:
        for row in args.rows:
            family, recipe, file = ROWS[row]
            name, folder = f"{row}-seed{seed}", out / "binarize" / f"{row}-seed{seed}"
            if _done(folder):
                continue
            if (folder / "weights" / "last.pt").is_file():  # interrupted: continue it (bit-identical)
                _call(cli + ["binarize", "--no-progress", "--resume", str(folder)], out / "logs" / f"{name}.resume.log")
                continue
            _call(cli + ["binarize", "--recipe", recipe, "--config", str(ROOT / "recipes" / file), "--teacher",
                         str(teachers[family]), "--name", name, "--set", f"train.seed={seed}",
                         "--set", f"params.sample_seed={seed}", *common], out / "logs" / f"{name}.log")


def final_metrics(run: Path) -> dict[str, Any]:
    """The run's final mAP, the teacher's, whether any logged value was NaN/null, and seconds per step."""
    records = [json.loads(line) for line in _lines(run / "metrics.jsonl")]
    finals = [r for r in records if "voc07/mAP50" in r]
    teacher = next((r["teacher/voc07/mAP50"] for r in records if "teacher/voc07/mAP50" in r), None)
    steps = [r for r in records if "seconds_per_iter" in r]
    bad = [k for r in steps for k, v in r.items() if v is None or (isinstance(v, float) and math.isnan(v))]
    return {"mAP": finals[-1]["voc07/mAP50"] if finals else None, "teacher": teacher, "nan": sorted(set(bad)),
            "s_per_step": statistics.mean(r["seconds_per_iter"] for r in steps) if steps else None}


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for family, (_, name) in TEACHERS.items():
        m = final_metrics(out / "train" / name)
        print(f"{name}: VOC07 mAP50 {m['mAP']}  (runs in {out / 'train' / name})")
    print(f"\n| row | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | std | NaN | s/step |")
    print("|---|" + "---|" * (len(args.seeds) + 4))
    for row in args.rows:
        metrics = [final_metrics(out / "binarize" / f"{row}-seed{s}") for s in args.seeds]
        values = [m["mAP"] for m in metrics if m["mAP"] is not None]
        cells = [f"{m['mAP']:.4f}" if m["mAP"] is not None else "-" for m in metrics]
        mean = f"{statistics.mean(values):.4f}" if values else "-"
        std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-"
        nan = "yes" if any(m["nan"] for m in metrics) else "no"
        speed = [m["s_per_step"] for m in metrics if m["s_per_step"]]
        print(f"| {row} | {' | '.join(cells)} | {mean} | {std} | {nan} | {statistics.mean(speed):.2f} |" if speed
              else f"| {row} | {' | '.join(cells)} | {mean} | {std} | {nan} | - |")


# ---------------------------------------------------------------------------------------------- correlation
def correlation(args: argparse.Namespace) -> None:
    """Does D separate easy from hard images (issue 13)? Per finished autobidet run: Pearson and Spearman of
    ``D(G(f(x)))`` against the trained student's per-image detection loss on the first ``--images`` test images
    (the paper's claim predicts both negative: an easy image has a high D and a low loss)."""
    import torch
    from detbin_bidet.ces import output_size
    from detbin_bidet.diagnostics import complexity_correlation, per_image_detection_losses
    from detbin_bidet.features import extract

    from detbin.app.build import build_dataset, build_models, build_recipe, dataset_classes
    from detbin.app.runner import resume_options
    from detbin.models import checkpoint

    torch.set_num_threads(1)
    results = {}
    for seed in args.seeds:
        folder = Path(args.out) / "binarize" / f"{args.row}-seed{seed}"
        if not _done(folder):
            print(f"{folder.name}: not finished, skipped")
            continue
        config, _, options = resume_options(folder)
        recipe = build_recipe(config, options.source)
        test_set = build_dataset(config.data.test, options.data)
        models = build_models(config, recipe, dataset_classes(test_set), "binarize", options.teacher,
                              options.teacher_arch, options.source)
        student = models.student
        recipe.prepare(student, models.teacher)
        state = checkpoint.read(folder / "weights" / "last.pt")
        checkpoint.load_state(student, state["model"], str(folder / "weights" / "last.pt"))
        recipe.load_state_dict(state["recipe_state"])
        student.model.eval()
        recipe.ces.eval()
        samples = [test_set[i] for i in range(min(args.images, len(test_set)))]
        images = [image for image, _ in samples]
        # the loss the student trained on: difficult objects left out, as in its training view
        targets = [{"boxes": t["boxes"][~t["difficult"]], "labels": t["labels"][~t["difficult"]]} for _, t in samples]
        d_values = []
        with torch.no_grad():
            for image in images:
                f, batch, _, _ = extract(student.model, [image], recipe._feature)
                d_values.append(float(recipe.ces.beta(f, output_size(tuple(batch.shape[-2:]), recipe._scale))[1][0]))
        losses = per_image_detection_losses(student.model, images, targets)
        stats = complexity_correlation(d_values, losses)
        results[folder.name] = {**stats, "d_mean": statistics.mean(d_values), "d_min": min(d_values),
                                "d_max": max(d_values)}
        print(f"{folder.name}: n {stats['n']:.0f}  pearson {stats['pearson']:+.3f}  spearman {stats['spearman']:+.3f}"
              f"  D in [{min(d_values):.3f}, {max(d_values):.3f}] mean {statistics.mean(d_values):.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--json", default=None)
    for name in ("run", "table"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        if name == "run":
            p.add_argument("--data", required=True, type=Path)
    r = sub.add_parser("correlation")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--row", default="ssd_autobidet", choices=[k for k in ROWS if "autobidet" in k])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--images", type=int, default=200, help="first N test images")
    r.add_argument("--json", default=None)
    args = parser.parse_args()
    {"cost": cost, "run": run, "table": table, "correlation": correlation}[args.command](args)


if __name__ == "__main__":
    main()
