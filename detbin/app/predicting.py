"""One ``detbin predict`` as library calls: any model file, images or folders in, drawings and detections out.

Models: a teacher or a simulated student checkpoint (``.pt``; a student needs its recipe plugin
to be rebuilt), a packed file (``.safetensors``; detbin's core only), or an export folder /
its ``model.xml`` (``detbin export``). Engines: ``torch`` (the model as it is: real, or the
float simulation of the binary convs) and ``openvino`` (backbone + FPN + RPN head on OpenVINO with
BinaryConvolution layers, converted on the fly unless the folder has the IR; the rest in torch).

``runs/predict/<name>/`` receives ``<stem>.png`` per image (boxes with ``class score`` labels,
detections with score >= ``conf``), ``detections.json`` (COCO results of those detections,
scored by ``detbin eval --detections``), and ``predictions.json`` (per image: file, image id,
size and detections with class names). Image ids follow the data sets of ``detbin eval``: a
numeric file stem is the id (VOC07, the synthetic set, COCO's ``000000397133.jpg``), else the
image's position among the inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detbin.app import build
from detbin.app.drawing import draw_detections
from detbin.app.exporting import export_size, read_manifest
from detbin.core.errors import ConfigError, DataError
from detbin.core.types import Detections
from detbin.data.datasets import load_image
from detbin.deploy.engine import OpenVINOEngine, detect
from detbin.deploy.forms import deployed
from detbin.deploy.packed import is_packed, load_packed
from detbin.evaluation.detections import ImageIndex, write_coco_results
from detbin.models.detector import Detector

__all__ = ["ENGINES", "IMAGE_SUFFIXES", "Predictor", "load_predictor", "image_files", "image_ids", "predict_images"]

ENGINES = ("torch", "openvino")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Predictor:
    """A loaded model and how it runs: ``predictor(image) -> Detections``."""

    detector: Detector
    classes: list[str]
    label: str
    engine: OpenVINOEngine | None = None

    def __call__(self, image: torch.Tensor) -> Detections:
        if self.engine is not None:
            return detect(self.detector, self.engine, [image])[0]
        return self.detector.predict([image])[0]


def _load(model: Path) -> tuple[Detector, list[str], str, Path | None]:
    """``(detector, classes, what it is, OpenVINO IR or None)`` of any model path."""
    if model.is_dir() or model.suffix == ".xml":
        folder = model if model.is_dir() else model.parent
        manifest = read_manifest(folder)
        if "packed" not in manifest["files"]:
            raise ConfigError(f"{folder}: holds no packed model ({', '.join(manifest['files'])}); export it with "
                              "--format packed or openvino")
        detector, header = load_packed(folder / manifest["files"]["packed"])
        ir = folder / manifest["files"]["openvino"] if "openvino" in manifest["files"] else None
        return detector, header["classes"], "packed", ir
    if model.suffix == ".safetensors" and is_packed(model):
        detector, header = load_packed(model)
        return detector, header["classes"], "packed", None
    detector, meta = build.load_model(model)
    kind = "simulated student" if meta.get("kind") == "student" else "real"
    return detector, list(meta.get("classes") or []), kind, None


def load_predictor(model: Path, engine: str = "torch", threads: int | None = None) -> Predictor:
    """The model at ``model`` ready to run on ``engine`` (``torch`` or ``openvino``).

    Raises:
        ConfigError: an unknown engine or a folder without a packed model.
        ExportError: openvino missing (the install command), or a model OpenVINO cannot run.
        CheckpointError: a model file detbin cannot read.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose torch or openvino")
    if engine == "openvino":
        from detbin.deploy.openvino_export import require_openvino

        require_openvino()  # before loading anything: the one-line install hint
    detector, classes, kind, ir = _load(Path(model))
    if engine == "torch":
        return Predictor(detector, classes, f"torch ({kind})")
    if ir is not None:
        runner = OpenVINOEngine.from_file(ir, read_manifest(ir.parent)["levels"], threads)
    else:
        binary = kind != "real"
        runner = OpenVINOEngine.from_detector(deployed(detector), export_size(detector), threads, binarize=binary)
    what = "binary" if kind != "real" else "fp32"
    return Predictor(detector, classes, f"openvino {what} backbone+FPN+RPN head, torch RoI heads ({kind})", runner)


def image_files(sources: Sequence[Path]) -> list[Path]:
    """Image files of ``sources`` (files, or folders read non-recursively, sorted), in order.

    Raises:
        DataError: a missing source, or no image at all.
    """
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif source.is_file():
            files.append(source)
        else:
            raise DataError(f"{source}: no such image file or folder")
    if not files:
        raise DataError(f"{', '.join(map(str, sources))}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_ids(files: Sequence[Path]) -> list[int]:
    """COCO ``image_id`` of each file: its numeric stem (as ``detbin eval``'s VOC and COCO sets), else its position.

    Raises:
        DataError: two files with the same id.
    """
    ids = [int(p.stem) if p.stem.isdigit() else i for i, p in enumerate(files)]
    seen: dict[int, Path] = {}
    for image_id, path in zip(ids, files):
        if image_id in seen:
            raise DataError(f"{path}: image id {image_id} is also the id of {seen[image_id]}; predict them in "
                            "separate runs")
        seen[image_id] = path
    return ids


def _keep(det: Detections, conf: float) -> Detections:
    keep = det["scores"] >= conf
    return {k: v[keep] for k, v in det.items()}


def _out_name(path: Path, used: set[str]) -> str:
    name, n = f"{path.stem}.png", 2
    while name in used:
        name, n = f"{path.stem}_{n}.png", n + 1
    used.add(name)
    return name


def predict_images(predictor: Predictor, sources: Sequence[Path], folder: Path, conf: float = 0.25,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``predictor`` on every image of ``sources`` and write the run files into ``folder``.

    Returns:
        The summary written to ``predictions.json`` (model, engine, per-image results).
    """
    files = image_files(sources)
    ids = image_ids(files)
    folder.mkdir(parents=True, exist_ok=True)
    classes = predictor.classes or [f"class {k}" for k in range(1, predictor.detector.config.num_classes)]
    used: set[str] = set()
    per_image, detections = [], []
    with torch.no_grad():
        for n, (path, image_id) in enumerate(zip(files, ids)):
            image = load_image(path)
            det = _keep({k: v.detach().cpu() for k, v in predictor(image).items()}, conf)
            detections.append(det)
            name = _out_name(path, used)
            draw_detections(image, det, classes).save(folder / name)
            per_image.append({"file": str(path), "image_id": image_id, "drawing": name,
                              "height": int(image.shape[1]), "width": int(image.shape[2]),
                              "detections": [{"class": classes[int(label) - 1], "label": int(label),
                                              "score": float(score), "box_xyxy": [float(v) for v in box]}
                                             for box, label, score in zip(det["boxes"], det["labels"],
                                                                          det["scores"])]})
            if progress is not None:
                progress(n + 1)
    index = ImageIndex(tuple(ids), tuple(p.stem for p in files), tuple(classes),
                       tuple(range(1, len(classes) + 1)), "predict", str(sources[0]))
    write_coco_results(folder / "detections.json", detections, index)
    summary = {"engine": predictor.label, "conf": conf, "classes": classes, "images": per_image,
               "detections": sum(len(d["scores"]) for d in detections), "run_dir": str(folder)}
    (folder / "predictions.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
