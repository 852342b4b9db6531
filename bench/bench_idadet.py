"""IDa-Det against the no-KD and FGFI baselines on the synthetic benchmark, over seeds.

Every student starts from the same tiny real-valued Faster R-CNN R18-FPN teacher and trains
the same number of steps with the same optimizer (the ``tiny_synthetic`` recipe files); only
the method differs. "ida-det student, no KD" is IDa-Det's own student (BiConv, binary 3x3
laterals, PReLU, x5 L1 losses) with the distillation weight at 0, the paper's "w/o KD" row:
it separates the effect of the distillation from that of the architecture. ``--ablations`` adds
students with parts of that architecture changed (ABLATIONS); ``--isolation`` the rows that take
BiConv apart on the no-KD student (ISOLATION: learned vs detached scale, the mu pull, the weight
gradient's scale, the released init, the scale-gradient form). ``--rows SLUG ...`` runs only
those rows. Prints VOC07 mAP per seed, mean and standard deviation, and the step-time overhead of
ida-det over reactnet (teacher forward included).

Two optimizer families (``--optimizer``): ``adam`` is the tiny recipe files' own setting (Adam 1e-3,
cosine, 100 warm-up steps, clip 10); ``sgd`` is the paper's family (methods.md §2.10: SGD momentum 0.9,
weight decay 1e-4, clip 35, linear warm-up from 0.001, lr x0.1 at 2/3 and 8/9 of the run, i.e. the
paper's epochs 8 and 11 of 12) at the paper's lr scaled linearly to the tiny batch: 0.004 for 4
images -> 0.008 for 8 (``--lr``, ``--clip`` to change them), one setting for every method. An SGD
step is lr x gradient and the students' gradients differ in scale (BiConv's |s| G, IDa-Det's x5
losses), so one shared lr favours one student: ``--lr tuned`` runs each recipe at the best lr of
its seed-0 sweep (TUNED_SGD_LR).

Runs are cached under ``--out`` (a finished run is not trained again), so the script can be
interrupted and restarted. A student takes 5-8 minutes on one CPU thread. Usage::

    python bench/bench_idadet.py [--seeds 0 1 2] [--steps 600] [--out runs/bench] [--optimizer adam|sgd]
        [--lr 0.008|tuned] [--ablations] [--isolation] [--rows SLUG ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from detbin import config as cfg
from detbin.app.runner import RunOptions, run
from detbin.data.synthetic import write_dataset

TRAIN_IMAGES, TEST_IMAGES = 2000, 500
SGD_LR = 0.008  # --optimizer sgd: the released lr 0.004 for 4 images, scaled linearly to the tiny batch of 8
SGD_CLIP = 35.0  # --optimizer sgd: the released grad-clip max-norm (methods.md §2.10)
# --lr tuned: the best lr of each recipe's seed-0 sweep (600 steps, VOC07 mAP; teacher 0.668):
#   reactnet         0.008: 0.145  0.04: 0.578  0.1: 0.667  0.2: 0.603  1.0: 0.000 (its BN statistics diverge)
#   ida-det (no KD)  0.002: 0.341  0.008: 0.521 (the released lr)  0.016: 0.634  0.04: 0.183
TUNED_SGD_LR = {"reactnet": 0.1, "ida-det": 0.016}
# --optimizer adam: the tiny recipe files' trainer section, set explicitly so that the family does not
# change with a file
ADAM_OVERRIDES = ["train.optimizer={name: adam, lr: 1.0e-3, weight_decay: 0.0}",
                  "train.schedule={name: cosine, warmup_iters: 100, warmup_factor: 0.01}", "train.clip_grad=10.0"]


# every ida-det row is the paper's BiConv (mu 1e-4) unless the row says otherwise: the default tiny file
# sets mu 0 since issue 16, and the cached runs of the paper's rows were trained with the pull
RECIPE_BASE = {"ida-det": ["params.mu=1.0e-4"]}


class Row(NamedTuple):
    label: str
    recipe: str
    overrides: list[str]
    slug: str  # run folder: <recipe>-<slug>[-sgd<lr>]-seed<seed>


METHODS = [
    Row("reactnet (no KD)", "reactnet", [], "default"),
    Row("fgfi", "fgfi", [], "default"),
    Row("ida-det (mask repo)", "ida-det", ["params.mask_mode=repo"], "repo"),
    Row("ida-det (mask box)", "ida-det", ["params.mask_mode=box"], "box"),
    # the paper's "w/o KD" row: the same BiRes18 student and x5 L1 losses, no distillation
    Row("ida-det student, no KD", "ida-det", ["params.kd_weight=0.0"], "0.0"),
]

# --ablations: which part of IDa-Det's student costs mAP in this short from-teacher schedule.
# BiConv -> XNOR's detached per-channel scale (no learned scale, no reconstruction pull mu), and the
# added neck/RPN PReLUs started at slope 1 (identity, so the copied teacher's function is kept).
_HARD = "binarize.weight={name: scaled_sign, detach_scale: true}"
_NOKD = "params.kd_weight=0.0"
ABLATIONS = [
    Row("no KD, both", "ida-det", [_NOKD, _HARD, "params.prelu_init=1.0"], "nokd-both"),
    Row("KD box, both", "ida-det", ["params.mask_mode=box", _HARD, "params.prelu_init=1.0"], "box-both"),
    Row("KD repo, both", "ida-det", ["params.mask_mode=repo", _HARD, "params.prelu_init=1.0"], "repo-both"),
    Row("no KD, XNOR weights", "ida-det", [_NOKD, _HARD], "nokd-xnorw"),
    Row("no KD, PReLU slope 1", "ida-det", [_NOKD, "params.prelu_init=1.0"], "nokd-prelu1"),
    # = recipes/ida-det/tiny_synthetic_xnor_weights.yaml
    Row("KD box, XNOR weights", "ida-det", ["params.mask_mode=box", _HARD], "box-xnorw"),
]

# --isolation: BiConv taken apart on the no-KD student, one change from the paper's BiConv per row
# (plugins/detbin_idadet/biconv.py documents each option).
ISOLATION = [
    Row("no KD, BiConv mu=0", "ida-det", [_NOKD, "params.mu=0.0"], "nokd-mu0"),
    # Adam divides each step by the gradient's running RMS, so the mu pull's share of a weight's step is
    # its share of the gradient, not lr x mu x (W - W_hat) as under SGD: the KD row at mu = 0 tests it
    Row("KD box, BiConv mu=0", "ida-det", ["params.mask_mode=box", "params.mu=0.0"], "box-mu0"),
    # the widened 3x3 laterals embed the teacher's 1x1 kernel among zeros, which sign(0) = +1 binarizes to
    # +c|s| and the mu pull then holds there; 1x1 laterals have no embedded zeros
    Row("no KD, 1x1 laterals", "ida-det", [_NOKD, "binarize.fpn_lateral_kernel=1"], "nokd-lat1"),
    Row("no KD, BiConv grad c|s|G (plain STE)", "ida-det", [_NOKD, "params.weight_grad=forward"], "nokd-gforward"),
    Row("no KD, BiConv grad G (identity)", "ida-det", [_NOKD, "params.weight_grad=identity"], "nokd-gidentity"),
    Row("no KD, BiConv scale frozen at init", "ida-det", [_NOKD, "params.scale_mode=frozen"], "nokd-sfrozen"),
    Row("no KD, BiConv scale = detached mean|W| (XNOR's)", "ida-det", [_NOKD, "params.scale_mode=mean_abs"],
        "nokd-smeanabs"),
    Row("no KD, BiConv exact scale grad", "ida-det", [_NOKD, "params.scale_grad=exact"], "nokd-sexact"),
    # under Adam c only sets how fast the learned scale moves (s = alpha / c): c = 1 moves it 50x faster
    Row("no KD, BiConv c=1", "ida-det", [_NOKD, "params.scale_c=1.0"], "nokd-c1"),
    Row("no KD, BiConv randn init", "ida-det", [_NOKD, "params.scale_init=randn"], "nokd-randn"),
    Row("no KD, task weight 1", "ida-det", [_NOKD, "params.task_weight=1.0"], "nokd-tw1"),
    Row("no KD, XNOR weights, task weight 1", "ida-det", [_NOKD, _HARD, "params.task_weight=1.0"], "nokd-xnorw-tw1"),
    # under SGD a step is lr x gradient. reactnet's weight gradient is G; BiConv's is |s| G with
    # |s| = mean|W| / 0.02 = 1.6-5 on the tiny teacher, and the x5 losses scale every gradient: at one lr
    # the paper's student takes weight steps ~8-25x and head steps 5x reactnet's. Task weight 1 and the
    # identity weight gradient give it reactnet's scale on every parameter; the learned scale, mu and the
    # layout still differ
    Row("no KD, BiConv grad G, task weight 1", "ida-det", [_NOKD, "params.weight_grad=identity",
                                                           "params.task_weight=1.0"], "nokd-gidentity-tw1"),
    # ... and XNOR's detached mean|W| for the learned scale: then the weight binarizer is reactnet's
    Row("no KD, BiConv grad G, task weight 1, scale mean|W|", "ida-det",
        [_NOKD, "params.weight_grad=identity", "params.task_weight=1.0", "params.scale_mode=mean_abs"],
        "nokd-gidentity-tw1-smeanabs"),
]

ALL_ROWS = {**dict(zip(["reactnet", "fgfi", "ida-repo", "ida-box", "nokd"], METHODS)),
            **{row.slug: row for row in [*ABLATIONS, *ISOLATION]}}


def teacher(out: Path, data: Path) -> Path:
    best = out / "teacher" / "weights" / "best.pt"
    if not best.is_file():
        path = cfg.recipes_dir() / "teacher" / "tiny_synthetic.yaml"
        config, raw = cfg.load(path)
        run(config, raw, RunOptions(verb="train", directory=out / "teacher", data=data, source=str(path)))
    return best


def optimizer_overrides(family: str, lr: float, clip: float, steps: int, batch_size: int) -> list[str]:
    """``--set`` keys of the optimizer family: ``adam`` the tiny files' own setting (ADAM_OVERRIDES).

    ``sgd``: milestones at 2/3 and 8/9 of the run, in epochs (``build_scheduler`` multiplies by
    the iterations per epoch, ``TRAIN_IMAGES // batch_size`` with drop-last batches).
    """
    if family == "adam":
        return list(ADAM_OVERRIDES)
    per_epoch = TRAIN_IMAGES // batch_size
    milestones = [round(steps * 2 / 3 / per_epoch, 6), round(steps * 8 / 9 / per_epoch, 6)]
    schedule = f"{{name: step, warmup_iters: 100, warmup_factor: 0.001, milestones: {milestones}, gamma: 0.1}}"
    return [f"train.optimizer={{name: sgd, lr: {lr}, momentum: 0.9, weight_decay: 1.0e-4}}",
            f"train.schedule={schedule}", f"train.clip_grad={clip}"]


def run_name(row: Row, seed: int, family: str, lr: float, clip: float) -> str:
    suffix = "" if family == "adam" else f"-sgd{lr:g}" + ("" if clip == SGD_CLIP else f"-clip{clip:g}")
    return f"{row.recipe}-{row.slug}{suffix}-seed{seed}"


def row_lr(row: Row, lr: float | str) -> float:
    """The SGD learning rate of ``row``: ``lr`` itself, or with ``"tuned"`` its recipe's TUNED_SGD_LR."""
    if lr != "tuned":
        return float(lr)
    if row.recipe not in TUNED_SGD_LR:
        raise SystemExit(f"--lr tuned: no swept lr for recipe {row.recipe!r} (swept: {', '.join(TUNED_SGD_LR)}); "
                         "give --lr VALUE")
    return TUNED_SGD_LR[row.recipe]


def lr_argument(text: str) -> float | str:
    if text == "tuned":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'tuned', got {text!r}") from None


def student(out: Path, data: Path, teacher_path: Path, row: Row, seed: int, steps: int, family: str, lr: float,
            clip: float, train: bool = True) -> dict | None:
    """The finished run's summary; trained first when missing (``train``), else None."""
    directory = out / "students" / run_name(row, seed, family, lr, clip)
    done = directory / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not train:
        return None
    path = cfg.recipes_dir() / row.recipe / "tiny_synthetic.yaml"
    batch_size = cfg.load(path)[0].train.batch_size
    overrides = [*RECIPE_BASE.get(row.recipe, []), *row.overrides,
                 *optimizer_overrides(family, lr, clip, steps, batch_size), f"train.seed={seed}",
                 f"train.max_iterations={steps}"]
    config, raw = cfg.load(path, overrides)
    start = time.perf_counter()
    result = run(config, raw, RunOptions(verb="binarize", directory=directory, data=data, teacher=teacher_path,
                                         source=str(path)))
    summary = {"mAP": result.metrics["voc07/mAP50"], "teacher": result.teacher_metrics["teacher/voc07/mAP50"],
               "seconds": time.perf_counter() - start, "overrides": overrides}
    done.write_text(json.dumps(summary))
    return summary


def seconds_per_step(directory: Path) -> float:
    """Mean s/step of a finished run, from its metrics log (steps after warm-up)."""
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    values = [r["seconds_per_iter"] for r in records if "seconds_per_iter" in r and r["iteration"] > 100]
    return statistics.mean(values)


def selected_rows(args: argparse.Namespace) -> list[Row]:
    if args.rows:
        unknown = [s for s in args.rows if s not in ALL_ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; valid: {', '.join(ALL_ROWS)}")
        return [ALL_ROWS[s] for s in args.rows]
    return [*METHODS, *(ABLATIONS if args.ablations else []), *(ISOLATION if args.isolation else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=lr_argument, default=SGD_LR,
                        help="learning rate of --optimizer sgd, or 'tuned' (each recipe's swept best, TUNED_SGD_LR)")
    parser.add_argument("--clip", type=float, default=SGD_CLIP, help="gradient-norm clip of --optimizer sgd")
    parser.add_argument("--ablations", action="store_true", help="also the student ablations (ABLATIONS)")
    parser.add_argument("--isolation", action="store_true", help="also BiConv's isolation rows (ISOLATION)")
    parser.add_argument("--rows", nargs="+", help=f"only these rows: {', '.join(ALL_ROWS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--table", action="store_true", help="print the finished runs only; train nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = write_dataset(args.out / "data", TRAIN_IMAGES, TEST_IMAGES, seed=0)
    teacher_path = teacher(args.out, data)

    def lr_of(row: Row) -> float:  # Adam ignores it
        return row_lr(row, args.lr) if args.optimizer == "sgd" else SGD_LR

    rows = [(row, [student(args.out, data, teacher_path, row, seed, args.steps, args.optimizer,
                           lr_of(row), args.clip, train=not args.table) for seed in args.seeds])
            for row in selected_rows(args)]
    lr_text = "lr per recipe (TUNED_SGD_LR)" if args.lr == "tuned" else f"{args.lr:g}"
    family = "Adam 1e-3 cosine" if args.optimizer == "adam" else f"SGD {lr_text} step, clip {args.clip:g}"
    finished = [r for _, results in rows for r in results if r is not None]
    teacher_map = f"{finished[0]['teacher']:.4f}" if finished else "-"
    print(f"synthetic test split ({TEST_IMAGES} images), VOC07 mAP; teacher {teacher_map}; "
          f"{args.steps} steps per student, {family}")
    print(f"{'method':48s} " + " ".join(f"seed {s:<5d}" for s in args.seeds) + "   mean    std")
    for row, results in rows:
        values = [r["mAP"] for r in results if r is not None]
        cells = " ".join(f"{r['mAP']:10.4f}" if r is not None else f"{'pending':>10s}" for r in results)
        summary = (f"  {statistics.mean(values):.4f} {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"
                   if values else "")
        label = row.label + (f" @{lr_of(row):g}" if args.optimizer == "sgd" and args.lr == "tuned" else "")
        print(f"{label:48s} {cells}{summary}")
    base = ALL_ROWS["reactnet"]
    if not args.table and any(row == base for row, _ in rows):
        folder = args.out / "students" / run_name(base, args.seeds[0], args.optimizer, lr_of(base), args.clip)
        base_step = seconds_per_step(folder)
        for row in [r for r, _ in rows if r.recipe != "reactnet"]:
            per_step = seconds_per_step(folder.parent / run_name(row, args.seeds[0], args.optimizer,
                                                                  lr_of(row), args.clip))
            print(f"step time {row.label}: {per_step:.3f} s vs reactnet {base_step:.3f} s "
                  f"= x{per_step / base_step:.2f}")


if __name__ == "__main__":
    main()
