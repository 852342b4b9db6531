"""``detbin export``: a checkpoint as a packed 1-bit file, the ONNX float simulation, or OpenVINO IR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from detbin.cli.common import ExistOkOpt, JsonOpt, ProjectOpt, app, handles_errors, out

__all__ = ["export_command"]

EXAMPLES = """
Examples:

  detbin export runs/binarize/exp/weights/best.pt                      # packed: 1 bit per binary weight

  detbin export best.pt --format openvino --name r18                   # BinaryConvolution on the CPU

  detbin export best.pt --format onnx                                  # float simulation, portable
"""

_WHAT = {
    "packed": "packed 1-bit weights (loads with detbin's core only)",
    "onnx": "ONNX, float SIMULATION of the binary convs (portable; not 1-bit, not faster)",
    "openvino": "OpenVINO IR: backbone + FPN + RPN head with real BinaryConvolution layers",
}


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f} MB = {n / 2**20:.3f} MiB"


@app.command("export", epilog=EXAMPLES)
@handles_errors
def export_command(
    model: Annotated[Path, typer.Argument(help="A student or teacher checkpoint (a student needs its recipe plugin), "
                                                "or a packed .safetensors file (needs nothing but detbin).")],
    formats: Annotated[list[str] | None, typer.Option(
        "--format", help="packed, onnx or openvino (repeatable; default packed).")] = None,
    image_size: Annotated[tuple[int, int] | None, typer.Option(
        help="Static network input H W of the OpenVINO IR and the ONNX trace (default: the model's padded "
             "min_size x max_size; OpenVINO recompiles for other sizes).")] = None,
    project: ProjectOpt = Path("runs"),
    name: Annotated[str, typer.Option("--name", help="Run folder name (auto-incremented if taken).")] = "exp",
    exist_ok: ExistOkOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export MODEL into runs/export/NAME/: packed 1-bit safetensors, ONNX (float simulation) or OpenVINO."""
    from detbin.app.exporting import check_formats, export_model
    from detbin.app.runner import next_run_dir

    chosen = check_formats(formats or ["packed"])  # a missing openvino/onnx fails here, before any work
    folder = next_run_dir(project, "export", name, exist_ok)
    done = export_model(model, chosen, folder, image_size)
    if as_json:
        out.print_json(json.dumps({**done.to_dict(), "run_dir": str(folder)}))
        return
    out.print(f"{model} ({done.kind}{', ' + done.recipe if done.recipe else ''}) -> {folder}", markup=False,
              highlight=False)
    for fmt in chosen:
        where = folder / done.files[fmt]
        files = f"{where} + {where.with_suffix('.bin').name}" if fmt == "openvino" else str(where)
        out.print(f"  {fmt:9s} {files}  {_mb(done.sizes[fmt])}  {_WHAT[fmt]}", soft_wrap=True, markup=False)
    if "packed" in done.sizes:
        parts = done.packed_parts
        out.print(f"packed {_mb(done.sizes['packed'])} vs detbin profile's accounted memory "
                  f"{_mb(done.accounted_bytes)}: {done.sizes['packed'] / done.accounted_bytes:.3f}x "
                  f"(beyond it: BN running statistics {parts['bn_running'] / 1e3:.1f} kB, header "
                  f"{parts['header'] / 1e3:.1f} kB)", soft_wrap=True, markup=False)
    if done.binary_convolutions is not None:
        out.print(f"openvino: {done.binary_convolutions} BinaryConvolution layers for {done.binarized_convs} binary "
                  f"convs ({done.binary_calls} calls: the RPN conv runs once per FPN level) at input "
                  f"{done.image_size[0]}x{done.image_size[1]}; outputs vs the torch simulation: max relative "
                  f"difference {done.openvino_max_rel_diff:.1e}", soft_wrap=True, markup=False)
    if "onnx" in chosen:
        out.print("onnx: binary convs are stored and run as float convs (the simulation); only the OpenVINO "
                  "export runs 1-bit kernels", soft_wrap=True, markup=False)
