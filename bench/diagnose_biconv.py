"""Where BiConv's latent weights went: per-stage statistics of trained ida-det students (issue 16).

For the student made from the teacher (step 0) and for each run folder of ``bench_idadet.py``,
prints per backbone stage the share of binary weights whose sign differs from the teacher's, BiConv's
relative reconstruction error ``||W - W_hat|| / ||W_hat||`` (``W_hat = c |s| o sign(W)``) and the
share of latent weights near the flip point (``|W| < 0.1 c |s|``, "near0"),
and for the FPN the ratio ``c |s| / mean|W|`` and, on widened 3x3 laterals, the off-centre
entries. Those start at 0, the teacher's 1x1 kernel sits at the centre: ``sign(0) = +1``
binarizes them to ``+c |s|``, which is also the target of the mu pull ``mu (W - W_hat)``. The
printed mean ``W / (c |s|)`` and the share below 0 say whether training moved them or the pull
held them there. Usage::

    python bench/diagnose_biconv.py --out runs/bench ida-det-0.0-seed0 ida-det-nokd-mu0-seed0 ...

Run names are folders under ``--out/students``; their ``weights/last.pt`` is read (weights only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

from detbin import config as cfg
from detbin import sign
from detbin.app.build import models


def _biconvs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if type(getattr(m, "weight_quantizer", None)).__name__ == "BiConvWeight"]


def _binarized(module: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W, c |s|)`` of one BiConv layer: latent weight ``[O, I, k, k]`` and magnitude ``[O]``."""
    weight = module.weight.detach()
    _, magnitude = module.weight_quantizer.deploy(weight)  # the deployed form: sign(W) and c|s| [O, 1, 1, 1]
    return weight, magnitude.flatten()


def stage_rows(model: nn.Module, teacher: dict[str, Tensor]) -> dict[str, str]:
    """Per backbone stage: sign flips against the teacher and the reconstruction error."""
    sums: dict[str, list[float]] = {}
    for name, module in _biconvs(model):
        if not name.startswith("backbone.body."):
            continue
        weight, magnitude = _binarized(module)
        target = magnitude.view(-1, 1, 1, 1) * sign(weight)
        acc = sums.setdefault(name.split(".")[2], [0.0, 0.0, 0.0, 0.0, 0.0])
        acc[0] += (sign(teacher[f"{name}.weight"]) != sign(weight)).sum().item()
        acc[1] += weight.numel()
        acc[2] += (weight - target).pow(2).sum().item()
        acc[3] += target.pow(2).sum().item()
        acc[4] += (weight.abs() < 0.1 * magnitude.view(-1, 1, 1, 1)).sum().item()
    return {stage: f"flips {f / n:5.1%} err {(e / t) ** 0.5:.3f} near0 {z / n:4.1%}"
            for stage, (f, n, e, t, z) in sums.items()}


def fpn_row(model: nn.Module) -> str:
    """c|s| / mean|W| of the FPN laterals and outputs; the laterals' off-centre entries if 3x3."""
    ratios: dict[str, list[float]] = {"inner_blocks": [], "layer_blocks": []}
    off_sum = off_negative = off_count = 0.0
    for name, module in _biconvs(model):
        group = next((g for g in ratios if f".fpn.{g}." in name), None)
        if group is None:
            continue
        weight, magnitude = _binarized(module)
        ratios[group].append((magnitude / weight.abs().mean(dim=(1, 2, 3))).mean().item())
        if group == "inner_blocks" and weight.shape[-1] == 3:
            centre = torch.zeros(weight.shape[-2:], dtype=torch.bool)
            centre[1, 1] = True
            off = weight[:, :, ~centre] / magnitude.view(-1, 1, 1)
            off_sum += off.sum().item()
            off_negative += (off < 0).sum().item()
            off_count += off.numel()
    text = "  ".join(f"{g} c|s|/mean|W| {sum(r) / len(r):.2f}" for g, r in ratios.items() if r)
    if off_count:
        text += f"  lateral off-centre W/(c|s|) {off_sum / off_count:+.3f}, below 0 {off_negative / off_count:.1%}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders under OUT/students")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="bench_idadet.py's --out")
    args = parser.parse_args()
    teacher = models.load_teacher(args.out / "teacher" / "weights" / "best.pt", None, None)
    teacher_weights = {k: v.detach() for k, v in teacher.model.state_dict().items()}
    path = cfg.recipes_dir() / "ida-det" / "tiny_synthetic.yaml"
    config, _ = cfg.load(path, ["params.kd_weight=0.0"])
    recipe = models.build_recipe(config, str(path))
    step0, _ = models.make_student(teacher, recipe, models.layout_spec(recipe, config))
    students = {"step 0 (from the teacher)": step0}
    for run in args.runs:
        students[run] = models.load_model(args.out / "students" / run / "weights" / "last.pt")[0]
    for label, student in students.items():
        stages = stage_rows(student.model, teacher_weights)
        print(f"{label}\n  " + "  ".join(f"{s}: {v}" for s, v in stages.items()) + f"\n  {fpn_row(student.model)}")


if __name__ == "__main__":
    main()
