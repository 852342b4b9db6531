"""``detbin predict``: detections drawn on images and saved as COCO results, with torch or OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from detbin.cli.common import ExistOkOpt, JsonOpt, NoProgressOpt, ProjectOpt, app, err, handles_errors, out
from detbin.core.errors import ConfigError

__all__ = ["predict_command"]

EXAMPLES = """
Examples:

  detbin predict runs/binarize/exp/weights/best.pt data/synthetic/JPEGImages

  detbin predict runs/export/exp --engine openvino photo.jpg --conf 0.5

  detbin eval --detections runs/predict/exp/detections.json --dataset synthetic --data data/synthetic
"""


@app.command("predict", epilog=EXAMPLES)
@handles_errors
def predict_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint (teacher or student), a packed .safetensors file, or "
                                                "a detbin export folder.")],
    sources: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    engine: Annotated[str, typer.Option(help="torch (the model as it is, binary convs simulated in float) or openvino "
                                             "(BinaryConvolution; pip install 'detbin[openvino]').")] = "torch",
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Keep detections with at least this score.")] = 0.25,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: the engine's).")] = None,
    project: ProjectOpt = Path("runs"),
    name: Annotated[str, typer.Option("--name", help="Run folder name (auto-incremented if taken).")] = "exp",
    exist_ok: ExistOkOpt = False,
    as_json: JsonOpt = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Detect objects in images: drawn boxes (PNG) and detections.json into runs/predict/NAME/."""
    import torch

    from detbin.app.predicting import image_files, load_predictor, predict_images
    from detbin.app.runner import next_run_dir

    if not sources:
        raise ConfigError("predict needs at least one image file or folder after MODEL")
    if threads:
        torch.set_num_threads(threads)
    total = len(image_files(sources))  # missing sources fail before the model loads
    predictor = load_predictor(model, engine, threads)
    folder = next_run_dir(project, "predict", name, exist_ok)
    quiet = no_progress or as_json

    printed = [0]

    def progress(done: int) -> None:  # a line per tenth of the images
        decile = done * 10 // total
        if not quiet and decile > printed[0]:
            printed[0] = decile
            err.print(f"predict: {done}/{total} images", soft_wrap=True)

    summary = predict_images(predictor, sources, folder, conf, progress)
    if as_json:
        out.print_json(json.dumps({k: v for k, v in summary.items() if k != "images"}))
        return
    out.print(f"{total} images, {summary['detections']} detections with score >= {conf} ({predictor.label}) "
              f"-> {folder}: drawings <stem>.png, detections.json (COCO results), predictions.json", soft_wrap=True,
              markup=False)
