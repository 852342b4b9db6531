"""IDa-Det against the no-KD and FGFI baselines on the synthetic benchmark, over seeds.

Every student starts from the same tiny real-valued Faster R-CNN R18-FPN teacher and trains
the same number of steps with the same optimizer (the ``tiny_synthetic`` recipe files); only
the method differs. "ida-det student, no KD" is IDa-Det's own student (BiConv, binary 3x3
laterals, PReLU, x5 L1 losses) with the distillation weight at 0, the paper's "w/o KD" row:
it separates the effect of the distillation from that of the architecture. ``--ablations`` adds
students with parts of that architecture changed (see ABLATIONS). Prints VOC07 mAP per seed, mean
and standard deviation, and the step-time overhead of ida-det over reactnet (teacher forward
included).

Runs are cached under ``--out`` (a finished run is not trained again), so the script can be
interrupted and restarted. A student takes about 3.5 minutes on two CPU cores: the 15 of the
main table about an hour, ``--ablations`` adds 18 more. Usage::

    python bench/bench_idadet.py [--seeds 0 1 2] [--steps 600] [--out runs/bench] [--ablations]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from detbin import config as cfg
from detbin.app.runner import RunOptions, run
from detbin.data.synthetic import write_dataset

METHODS = {  # label: (recipe, overrides)
    "reactnet (no KD)": ("reactnet", []),
    "fgfi": ("fgfi", []),
    "ida-det (mask repo)": ("ida-det", ["params.mask_mode=repo"]),
    "ida-det (mask box)": ("ida-det", ["params.mask_mode=box"]),
    # the paper's "w/o KD" row: the same BiRes18 student and x5 L1 losses, no distillation
    "ida-det student, no KD": ("ida-det", ["params.kd_weight=0.0"]),
}

# --ablations: which part of IDa-Det's student costs mAP in this short from-teacher schedule.
# BiConv -> XNOR's detached per-channel scale (no learned scale, no reconstruction pull mu), and the
# added neck/RPN PReLUs started at slope 1 (identity, so the copied teacher's function is kept).
_HARD = "binarize.weight={name: scaled_sign, detach_scale: true}"
ABLATIONS = {  # label: (recipe, overrides, run-name slug)
    "no KD, both": ("ida-det", ["params.kd_weight=0.0", _HARD, "params.prelu_init=1.0"], "nokd-both"),
    "KD box, both": ("ida-det", ["params.mask_mode=box", _HARD, "params.prelu_init=1.0"], "box-both"),
    "KD repo, both": ("ida-det", ["params.mask_mode=repo", _HARD, "params.prelu_init=1.0"], "repo-both"),
    "no KD, XNOR weights": ("ida-det", ["params.kd_weight=0.0", _HARD], "nokd-xnorw"),
    "no KD, PReLU slope 1": ("ida-det", ["params.kd_weight=0.0", "params.prelu_init=1.0"], "nokd-prelu1"),
    # = recipes/ida-det/tiny_synthetic_xnor_weights.yaml
    "KD box, XNOR weights": ("ida-det", ["params.mask_mode=box", _HARD], "box-xnorw"),
}


def teacher(out: Path, data: Path) -> Path:
    best = out / "teacher" / "weights" / "best.pt"
    if not best.is_file():
        path = cfg.recipes_dir() / "teacher" / "tiny_synthetic.yaml"
        config, raw = cfg.load(path)
        run(config, raw, RunOptions(verb="train", directory=out / "teacher", data=data, source=str(path)))
    return best


def run_name(recipe: str, overrides: list[str], slug: str | None, seed: int) -> str:
    return f"{recipe}-{slug or '-'.join(o.split('=')[1] for o in overrides) or 'default'}-seed{seed}"


def student(out: Path, data: Path, teacher_path: Path, recipe: str, overrides: list[str], seed: int,
            steps: int, slug: str | None = None) -> dict:
    name = run_name(recipe, overrides, slug, seed)
    done = out / "students" / name / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    path = cfg.recipes_dir() / recipe / "tiny_synthetic.yaml"
    config, raw = cfg.load(path, [*overrides, f"train.seed={seed}", f"train.max_iterations={steps}"])
    start = time.perf_counter()
    result = run(config, raw, RunOptions(verb="binarize", directory=out / "students" / name, data=data,
                                         teacher=teacher_path, source=str(path)))
    summary = {"mAP": result.metrics["voc07/mAP50"], "teacher": result.teacher_metrics["teacher/voc07/mAP50"],
               "seconds": time.perf_counter() - start}
    done.write_text(json.dumps(summary))
    return summary


def seconds_per_step(out: Path, recipe: str, overrides: list[str]) -> float:
    """Mean s/step of the finished seed-0 run, from its metrics log (steps after warm-up)."""
    name = run_name(recipe, overrides, None, 0)
    records = [json.loads(line) for line in (out / "students" / name / "metrics.jsonl").read_text().splitlines()]
    values = [r["seconds_per_iter"] for r in records if "seconds_per_iter" in r and r["iteration"] > 100]
    return statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--ablations", action="store_true", help="also the student ablations (ABLATIONS)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = write_dataset(args.out / "data", 2000, 500, seed=0)
    teacher_path = teacher(args.out, data)
    rows = {}
    for label, (recipe, overrides) in METHODS.items():
        rows[label] = [student(args.out, data, teacher_path, recipe, overrides, seed, args.steps)
                       for seed in args.seeds]
    for label, (recipe, overrides, slug) in (ABLATIONS.items() if args.ablations else []):
        rows[label] = [student(args.out, data, teacher_path, recipe, overrides, seed, args.steps, slug)
                       for seed in args.seeds]
    teacher_map = rows["reactnet (no KD)"][0]["teacher"]
    print(f"synthetic test split (500 images), VOC07 mAP; teacher {teacher_map:.4f}; {args.steps} steps per student")
    print(f"{'method':22s} " + " ".join(f"seed {s:<5d}" for s in args.seeds) + "   mean    std")
    for label, results in rows.items():
        values = [r["mAP"] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{label:22s} " + " ".join(f"{v:10.4f}" for v in values) + f"  {statistics.mean(values):.4f} "
              f"{spread:.4f}")
    base = seconds_per_step(args.out, "reactnet", [])
    for label, (recipe, overrides) in list(METHODS.items())[1:]:
        per_step = seconds_per_step(args.out, recipe, overrides)
        print(f"step time {label}: {per_step:.3f} s vs reactnet {base:.3f} s = x{per_step / base:.2f}")


if __name__ == "__main__":
    main()
