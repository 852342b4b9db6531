"""LWS-Det against reactnet, fgfi and ida-det on the synthetic benchmark, over seeds.

Every student starts from the same tiny real-valued Faster R-CNN R18-FPN teacher and trains the
same number of steps with the same optimizer (the ``tiny_synthetic`` recipe files); only the
method differs. The lws-det rows are trained here (``--out``); the baseline rows are read from the
run folders of ``bench/bench_idadet.py`` when ``--baselines DIR`` names its ``--out`` (never
written there), else trained here too. ``--sweep`` adds the seed-0 sweep behind the tiny file's
lws-det setting (lambda, the logits' learning rate, the layer losses off).

Besides mAP, each lws-det run reports what the search did: the share of binary weights whose
searched sign differs from the teacher's (``flips``) and the median over layers of the final
``|alpha|`` over its initial ``mean|w|`` (``alpha/init``; near 0 = the layer's binary branch is
switched off). Runs are cached (a finished run is not trained again). An lws-det student takes
about twice a reactnet one (teacher forward and 25 layer losses per step). Usage::

    python bench/bench_lwsdet.py [--seeds 0 1 2] [--steps 600] [--out runs/bench-lws] [--data DIR]
        [--teacher T.pt] [--baselines runs/bench] [--modes joint search_then_train] [--sweep [SLUG ...]]
        [--only-sweep] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_idadet import ALL_ROWS, Row, run_name, seconds_per_step, student, teacher

from detbin.data.synthetic import write_dataset
from detbin.models import checkpoint

LWS = {  # --modes: the tiny file's setting in both optimisation structures
    "joint": Row("lws-det (joint)", "lws-det", [], "joint"),
    "search_then_train": Row("lws-det (search_then_train)", "lws-det", ["params.lws_mode=search_then_train"], "stt"),
}
# --sweep (seed 0): lambda on the layer terms, the logits' own Adam lr, and the layer losses off
# (the lws student with L_GT + L_Lim only). Every value is explicit, so the runs keep their meaning
# whatever the tiny file says.
SWEEP = [Row(f"sweep: lambda {lam}, logits lr {lr}", "lws-det", [f"params.lambda={lam}", f"params.search_lr={lr}"],
             f"lam{lam}-slr{lr}") for lam, lr in ((1.0, 1e-3), (0.1, 1e-3), (0.01, 1e-3), (0.1, 1e-2), (0.01, 1e-2))]
SWEEP.append(Row("sweep: no layer losses (lambda 0, mu 0)", "lws-det", ["params.lambda=0.0", "params.mu=0.0"],
                 "nolayer"))
BASELINES = [ALL_ROWS[slug] for slug in ("reactnet", "fgfi", "ida-repo", "ida-box")]  # bench_idadet.py's rows


def _student(out: Path, data: Path, teacher_path: Path, row: Row, seed: int, steps: int) -> dict:
    """A run with the tiny files' own (Adam) optimizer, as bench_idadet.py's default family."""
    return student(out, data, teacher_path, row, seed, steps, "adam", 0.0, 0.0)


def baseline(baselines: Path | None, out: Path, data: Path, teacher_path: Path, row: Row, seed: int, steps: int,
             train: bool) -> dict | None:
    """A baseline row: read from ``baselines`` when finished there, else trained into ``out`` (``train``)."""
    name = run_name(row, seed, "adam", 0.0, 0.0)
    if baselines is not None:
        done = baselines / "students" / name / "result.json"
        if done.is_file():
            return {**json.loads(done.read_text()), "folder": str(done.parent)}
    if not train:
        return None
    return {**_student(out, data, teacher_path, row, seed, steps), "folder": str(out / "students" / name)}


def search_report(run: Path, teacher_path: Path) -> dict[str, float]:
    """Share of searched signs != the teacher's, and the median final |alpha| / initial mean|w| over layers."""
    state = checkpoint.read(run / "weights" / "best.pt")["model"]
    teacher_state = checkpoint.read(teacher_path)
    teacher_state = teacher_state.get("model", teacher_state)
    flipped = total = 0
    ratios = []
    for key in [k for k in state if k.endswith(".weight_quantizer.beta_plus")]:
        name = key[: -len(".weight_quantizer.beta_plus")]
        searched = (state[key] - state[f"{name}.weight_quantizer.beta_minus"]) >= 0
        w = teacher_state[f"{name}.weight"]
        if w.shape[-1] == 1 and searched.shape[-1] == 3:  # a widened lateral: the teacher's kernel is the centre
            searched = searched[..., 1:2, 1:2]
        flipped += int((searched != (w >= 0)).sum())
        total += w.numel()
        ratios.append(float(state[f"{name}.weight_quantizer.alpha"].abs().mean() / w.abs().mean()))
    return {"flips": flipped / total, "alpha/init": statistics.median(ratios)}


def lws_row(out: Path, data: Path, teacher_path: Path, row: Row, seed: int, steps: int) -> dict:
    result = _student(out, data, teacher_path, row, seed, steps)
    folder = out / "students" / run_name(row, seed, "adam", 0.0, 0.0)
    return {**result, **search_report(folder, teacher_path), "folder": str(folder)}


def table(rows: dict[str, list[dict | None]], seeds: list[int]) -> list[str]:
    lines = [f"{'method':36s} " + " ".join(f"seed {s:<4d}" for s in seeds) + "    mean     std"]
    for label, results in rows.items():
        values = [r["mAP"] for r in results if r is not None]
        cells = " ".join(f"{r['mAP']:9.4f}" if r is not None else f"{'pending':>9s}" for r in results)
        summary = (f"  {statistics.mean(values):.4f}  {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"
                   if values else "")
        extra = [r for r in results if r is not None and "flips" in r]
        search = ("   flips " + " ".join(f"{r['flips']:.3f}" for r in extra) + "  alpha/init "
                  + " ".join(f"{r['alpha/init']:.2f}" for r in extra)) if extra else ""
        lines.append(f"{label:36s} {cells}{summary}{search}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lws"))
    parser.add_argument("--data", type=Path, help="the synthetic set (default: written under --out)")
    parser.add_argument("--teacher", type=Path, help="the tiny teacher (default: trained under --out)")
    parser.add_argument("--baselines", type=Path, help="bench_idadet.py's --out: finished baseline rows are read there")
    parser.add_argument("--train-baselines", action="store_true", help="train baseline rows not found in --baselines")
    parser.add_argument("--sweep", nargs="*", metavar="SLUG", help="also the seed-0 sweep (SWEEP; slugs pick rows)")
    parser.add_argument("--only-sweep", action="store_true", help="the sweep alone")
    parser.add_argument("--modes", nargs="+", choices=list(LWS), default=list(LWS),
                        help="lws_mode rows to train (default: both)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = write_dataset(args.data or args.out / "data", 2000, 500, seed=0)  # an existing set is only checked
    teacher_path = args.teacher or teacher(args.out, data)
    rows: dict[str, list[dict | None]] = {}
    if args.sweep is not None:
        for row in SWEEP:
            if not args.sweep or row.slug in args.sweep:
                rows[row.label] = [lws_row(args.out, data, teacher_path, row, 0, args.steps)]
    if not args.only_sweep:
        for mode in args.modes:
            row = LWS[mode]
            rows[row.label] = [lws_row(args.out, data, teacher_path, row, seed, args.steps) for seed in args.seeds]
        for row in BASELINES:
            rows[row.label] = [baseline(args.baselines, args.out, data, teacher_path, row, seed, args.steps,
                                        args.train_baselines) for seed in args.seeds]
    first = next(r for results in rows.values() for r in results if r is not None)
    print(f"synthetic test split (500 images), VOC07 mAP; teacher {first['teacher']:.4f}; {args.steps} steps per student")
    print("\n".join(table(rows, args.seeds if not args.only_sweep else [0])))
    reference = next((r for r in rows.get("reactnet (no KD)", []) if r is not None), None)
    for label, results in rows.items():
        done = [r for r in results if r is not None and "folder" in r]
        if done and reference is not None and label != "reactnet (no KD)":
            ratio = seconds_per_step(Path(done[0]["folder"])) / seconds_per_step(Path(reference["folder"]))
            print(f"step time {label}: x{ratio:.2f} reactnet's (seed {args.seeds[0]} runs; shared machine)")
    (args.out / "bench_lwsdet.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
