"""Trainer throughput on the tiny CPU config, and checkpoint save/load time.

Measures, on the tiny Faster R-CNN R18-FPN of the synthetic benchmark (batch 8, 128 px):

* steps per second of the ``reactnet`` baseline (no teacher forward);
* the same with a teacher forward each step (a recipe that taps the teacher's FPN and adds no
  loss), which isolates the teacher's cost;
* ``fgfi``, ``defeat`` (teacher forward + masked feature imitation) and ``ida-det`` (teacher
  forward and proposals, discrepancy selection, entropy loss); pass ``--teacher`` with a trained
  tiny teacher (e.g. ``runs/demo/teacher/weights/best.pt``) so IDa-Det finds confident proposals
  as in a real run (a random teacher has none above 0.85 and would flatter its step time);
* the time to write ``last.pt`` (student, recipe, optimizer, RNG) atomically and read it back.

Usage: python bench/bench_train.py [--steps 30] [--warmup 5] [--rounds 3] [--teacher T.pt]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from detbin.models import checkpoint
from detbin.training import plugins
from detbin.app.build import make_student
from detbin.config import read_yaml, recipes_dir, validate
from detbin.data.datasets import TrainView, collate
from detbin.models.config import DetectorConfig
from detbin.models.detector import build_detector
from detbin.app.build import layout_spec
from detbin.data.synthetic import SyntheticDetection
from detbin.training.sampler import EpochSampler
from detbin.training.trainer import Trainer


def tiny_detector() -> DetectorConfig:
    section = read_yaml(recipes_dir() / "teacher" / "tiny_synthetic.yaml")["detector"]
    return DetectorConfig.from_dict({**section, "num_classes": 6})


def teacher_forward_recipe():
    base = plugins.load("reactnet")

    class TeacherForward(base):  # taps the FPN on both networks, adds no loss
        def tap_names(self, student):
            return ["backbone"]

    return TeacherForward


def trainer_for(recipe_cls, teacher, steps: int) -> Trainer:
    recipe = recipe_cls()
    student, _ = make_student(teacher, recipe, layout_spec(recipe, validate({"recipe": recipe_cls.name}, "bench")))
    recipe.prepare(student, teacher)
    data = TrainView(SyntheticDetection(256, seed=0), seed=0)
    loader = DataLoader(data, batch_size=8, sampler=EpochSampler(len(data)), collate_fn=collate, drop_last=True)
    optimizer = torch.optim.Adam([p for g in recipe.param_groups(student) for p in g["params"]], lr=1e-3)
    return Trainer(student, recipe, loader, optimizer, steps, teacher=teacher, clip_grad=10.0)


def steps_per_second(recipe_cls, teacher, steps: int, warmup: int) -> tuple[float, Trainer]:
    trainer = trainer_for(recipe_cls, teacher, warmup)
    trainer.train()
    trainer.max_iterations = warmup + steps
    start = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - start), trainer


def teacher_forward_ms(teacher, repeats: int = 20) -> float:
    """The teacher's backbone + FPN on one 8-image 128 px batch, no grad: the part a KD step adds."""
    images = torch.rand(8, 3, 128, 128)
    teacher.model.eval()
    with torch.no_grad():
        teacher.model.backbone(images)
        start = time.perf_counter()
        for _ in range(repeats):
            teacher.model.backbone(images)
    return (time.perf_counter() - start) / repeats * 1000


def checkpoint_times(trainer: Trainer, repeats: int = 5) -> tuple[float, float, int]:
    payload = {"model": trainer.student.model.state_dict(), "recipe_state": trainer.recipe.state_dict(),
               "trainer": trainer.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        start = time.perf_counter()
        for _ in range(repeats):
            checkpoint.save_atomic(payload, path)
        save = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            checkpoint.read(path)
        load = (time.perf_counter() - start) / repeats
        return save, load, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="runs per row, order rotated; the median is reported")
    parser.add_argument("--teacher", type=Path, default=None, help="a trained tiny teacher checkpoint")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.teacher is not None:
        from detbin.app.build import load_teacher

        teacher = load_teacher(args.teacher, None, None)
    else:
        teacher = build_detector(tiny_detector())
    print(f"tiny Faster R-CNN R18-FPN, batch 8, 128 px, {torch.get_num_threads()} threads, {args.steps} timed steps x {args.rounds} rounds, "
          f"teacher {'trained: ' + str(args.teacher) if args.teacher else 'random'}")
    rows = [("reactnet (no teacher forward)", plugins.load("reactnet")),
            ("reactnet + teacher forward", teacher_forward_recipe()),
            ("fgfi", plugins.load("fgfi")), ("defeat", plugins.load("defeat")), ("ida-det", plugins.load("ida-det"))]
    # Step time drifts by 5-10 % between runs on a shared 2-core machine (clock, allocator, other
    # processes), which is the size of the effects measured; so every row runs once per round, the
    # order rotating each round, and the median round is reported.
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    last = None
    for round_index in range(args.rounds):
        shift = round_index % len(rows)
        for label, cls in rows[shift:] + rows[:shift]:
            rate, last = steps_per_second(cls, teacher, args.steps, args.warmup)
            rates[label].append(rate)
    baseline = statistics.median(rates[rows[0][0]])
    for label, _ in rows:
        rate = statistics.median(rates[label])
        spread = f"{min(rates[label]):.2f}-{max(rates[label]):.2f}"
        print(f"{label:32s} {rate:6.2f} steps/s ({spread})  {1 / rate:6.3f} s/step  "
              f"x{baseline / rate:4.2f} of the baseline")
    print(f"teacher backbone + FPN forward alone (no grad): {teacher_forward_ms(teacher):.1f} ms per batch")
    save, load, size = checkpoint_times(last)
    print(f"last.pt ({size / 2**20:.1f} MiB): save (atomic) {save * 1000:.0f} ms, load (weights_only) {load * 1000:.0f} ms")


if __name__ == "__main__":
    main()
