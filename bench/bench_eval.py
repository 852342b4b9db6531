"""Scoring speed of detbin's evaluators (not a test): VOC07 and COCO on a large random set.

    .venv/bin/python bench/bench_eval.py                 # 5000 images x 100 detections x 20 classes
    .venv/bin/python bench/bench_eval.py --pycocotools   # also time the pycocotools fallback

Ground truth (1 to 8 objects per image, 10% difficult, 2% crowd) and detections (jittered
copies of ground truth, a third with a wrong class, and uniform scores) are seeded, so runs
compare. A timing covers ``process`` (tensors -> arrays) and ``summarize`` (the scores), what
``detbin eval`` spends after inference. Targets: VOC07 <= 2 s, COCO <= 15 s on two CPU cores.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from detbin.evaluation.coco import CocoMAP
from detbin.evaluation.metrics import VocMAP


def random_set(images: int, detections: int, classes: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded targets and detections (continuous xyxy boxes in a 500 x 400 frame)."""
    rng = np.random.default_rng(seed)
    targets, dets = [], []
    for _ in range(images):
        n = int(rng.integers(1, 9))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(4, 200, (n, 2))], axis=1)
        labels = rng.integers(1, classes + 1, n)
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(labels),
                        "difficult": torch.tensor(rng.random(n) < 0.1), "iscrowd": torch.tensor(rng.random(n) < 0.02)})
        source = rng.integers(0, n, detections)
        boxes = gt[source] + rng.normal(0, 8, (detections, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        det_labels = np.where(rng.random(detections) < 0.67, labels[source], rng.integers(1, classes + 1, detections))
        dets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                     "scores": torch.tensor(rng.random(detections), dtype=torch.float32),
                     "labels": torch.tensor(det_labels)})
    return targets, dets


def timed(evaluator, targets: list[dict], dets: list[dict]):
    start = time.perf_counter()
    evaluator.reset()
    evaluator.process(targets, dets)
    result = evaluator.summarize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--pycocotools", action="store_true", help="also time the pycocotools fallback")
    args = parser.parse_args()
    torch.set_num_threads(2)
    targets, dets = random_set(args.images, args.detections, args.classes)
    names = [f"c{k}" for k in range(args.classes)]
    print(f"{args.images} images x {args.detections} detections x {args.classes} classes "
          f"({sum(len(t['labels']) for t in targets)} objects); {platform.processor() or platform.machine()}")
    seconds, voc = timed(VocMAP(names, use_07_metric=True), targets, dets)
    print(f"voc07  VocMAP                   {seconds:6.2f} s  mAP {voc.mAP:.6f}")
    seconds, coco = timed(CocoMAP(names, backend="faster-coco-eval"), targets, dets)
    print(f"coco   CocoMAP faster-coco-eval {seconds:6.2f} s  AP {coco.mAP:.6f}")
    if args.pycocotools:
        seconds, slow = timed(CocoMAP(names, backend="pycocotools"), targets, dets)
        diff = max(abs(slow.stats[k] - coco.stats[k]) for k in coco.stats)
        print(f"coco   CocoMAP pycocotools      {seconds:6.2f} s  AP {slow.mAP:.6f}  max |stat difference| {diff:.2e}")


if __name__ == "__main__":
    main()
