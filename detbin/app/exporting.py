"""One ``detbin export`` as library calls: a checkpoint into packed / ONNX / OpenVINO files in a run folder.

``runs/export/<name>/`` receives, per format:

* ``packed``: ``model.packed.safetensors`` (1 bit per binary weight; loads with detbin's core);
* ``onnx``: ``model.sim.onnx``, the whole detector's *float simulation* (portable, not faster);
* ``openvino``: ``model.xml`` + ``model.bin`` (backbone + FPN + RPN head with BinaryConvolution
  layers) and the packed file, whose RoI heads run in torchvision;

and ``export.json``: what was written, the sizes beside ``detbin profile``'s accounted memory,
the BinaryConvolution count, the versions. Every format is checked after writing (the packed
file reloads to the same network and tensors; the IR compiles with the expected binary layers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detbin.app import build
from detbin.binary.layers import BinaryConv2d
from detbin.core.errors import ConfigError
from detbin.cost.profile import profile
from detbin.deploy import onnx_export, openvino_export
from detbin.deploy.forms import ExportError, deployed
from detbin.deploy.packed import is_packed, load_packed, save_packed, size_breakdown
from detbin.models.detector import Detector
from detbin.models.layout import BinarizeSpec

__all__ = ["FORMATS", "FILES", "Exported", "check_formats", "export_size", "export_model", "binary_calls",
           "read_manifest"]

FORMATS = ("packed", "onnx", "openvino")
FILES = {"packed": "model.packed.safetensors", "onnx": "model.sim.onnx", "openvino": "model.xml"}
MANIFEST = "export.json"


@dataclass
class Exported:
    """What one export wrote and measured (``to_dict`` is ``export.json``)."""

    folder: Path
    source: str
    kind: str
    recipe: str | None
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    accounted_bytes: int = 0
    packed_parts: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)
    levels: list[str] = field(default_factory=list)
    binarized_convs: int = 0
    binary_calls: int = 0
    binary_convolutions: int | None = None
    openvino_max_rel_diff: float | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "folder"}
        out["image_size"] = list(self.image_size)
        return out


def check_formats(formats: Sequence[str]) -> list[str]:
    """The requested formats, deduplicated, each known and with its optional dependency installed.

    Raises:
        ConfigError: an unknown format.
        ExportError: onnx or openvino missing (one line: the install command).
    """
    chosen = list(dict.fromkeys(formats or ["packed"]))
    for fmt in chosen:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r}: choose packed, onnx or openvino")
    if "openvino" in chosen:
        openvino_export.require_openvino()
    if "onnx" in chosen:
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ExportError(f"the onnx export needs onnx, which is not installed: {onnx_export.INSTALL_HINT}"
                              ) from None
    return chosen


def export_size(detector: Detector) -> tuple[int, int]:
    """The padded network input of a ``min_size`` x ``max_size`` image (multiples of 32): the IR's static size.

    Read from the model's transform (torchvision evaluates at the last ``min_size``).
    """
    transform = getattr(detector.model, "transform", None)
    if transform is None:
        raise ExportError(f"{detector.config.arch}: no torchvision input transform; pass --image-size H W")
    low, high = int(list(transform.min_size)[-1]), int(transform.max_size)
    return (32 * math.ceil(low / 32), 32 * math.ceil(high / 32))


def binary_calls(part: torch.nn.Module, size: tuple[int, int] = (64, 64)) -> int:
    """Binary-conv calls (binary input and weights) in one forward of ``part``; the RPN conv runs once per level."""
    calls: list[int] = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in part.modules()
             if isinstance(m, BinaryConv2d) and m.bits == (1, 1)]
    try:
        with torch.no_grad():
            part(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def _check_packed(path: Path, reference: Detector) -> None:
    """The packed file reloads to the deployed network: same modules, same tensors, same features."""
    loaded, _ = load_packed(path)
    if repr(loaded.model) != repr(reference.model):
        raise ExportError(f"{path}: the rebuilt network differs from the student's (a module the layout does not "
                          "build and the packed format cannot record); report this with the recipe's name")
    a, b = reference.model.state_dict(), loaded.model.state_dict()
    bad = [k for k in a if not k.endswith("num_batches_tracked") and not torch.equal(a[k], b[k])]
    probe = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    fa, fb = reference.features(probe), loaded.features(probe)
    if bad or any(not torch.equal(fa[k], fb[k]) for k in fa):
        raise ExportError(f"{path}: reloading does not reproduce the student ({bad[:2] or 'features differ'}); "
                          "report this with the recipe's name")


def _openvino(exported: Exported, student: Detector, folder: Path, threads: int) -> None:
    ov = openvino_export.require_openvino()
    sim, _ = openvino_export.exported_part(student, rpn=True, marked=False)
    part, names = openvino_export.exported_part(student, rpn=True)
    model = openvino_export.to_openvino(part, exported.image_size)
    ov.save_model(model, str(folder / FILES["openvino"]), compress_to_fp16=False)  # fp16 would round the scales
    compiled = openvino_export.compile_model(ov.Core().read_model(str(folder / FILES["openvino"])), threads)
    exported.binary_convolutions = openvino_export.layer_counts(compiled).get("BinaryConvolution", 0)
    exported.binarized_convs, exported.binary_calls = len(names), binary_calls(sim)
    exported.levels = list(part.levels)
    if exported.binary_convolutions != exported.binary_calls:
        raise ExportError(f"{folder / FILES['openvino']}: OpenVINO {ov.__version__} compiled "
                          f"{exported.binary_convolutions} BinaryConvolution layers for {exported.binary_calls} binary "
                          "conv calls; this OpenVINO release does not run them binary (install openvino 2026.4)")
    x = torch.rand(1, 3, *exported.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = sim(x)
    got = compiled(x.numpy())
    exported.openvino_max_rel_diff = max(float((torch.from_numpy(got[compiled.outputs[i]]) - e).abs().max()
                                               / e.abs().max().clamp(min=1e-12)) for i, e in enumerate(expected))
    exported.versions["openvino"] = ov.__version__
    exported.files["openvino_bin"] = "model.bin"
    exported.sizes["openvino"] = (folder / "model.xml").stat().st_size + (folder / "model.bin").stat().st_size


def export_model(model: Path, formats: Sequence[str], folder: Path, image_size: tuple[int, int] | None = None,
                 threads: int = 1) -> Exported:
    """Export the model file ``model`` (a teacher or student checkpoint, or a packed file) into ``folder``.

    Raises:
        ConfigError, ExportError, CheckpointError: an unknown format, a missing optional dependency, a
            model that cannot be exported or read (one line each).
    """
    chosen = check_formats(formats)
    if Path(model).suffix == ".safetensors" and is_packed(Path(model)):  # re-export a packed file: no plugin needed
        detector, header = load_packed(Path(model))
        layout = header["architecture"]["binarize"]
        meta = {**header["info"], "binarize": layout, "classes": header["classes"]}
    else:
        detector, meta = build.load_model(Path(model))
    spec = BinarizeSpec.from_dict(meta["binarize"]) if meta.get("binarize") else None
    classes = list(meta.get("classes") or [])
    size = tuple(image_size) if image_size else export_size(detector)
    exported = Exported(folder=folder, source=str(model), kind=meta.get("kind", "teacher"), recipe=meta.get("recipe"),
                        image_size=size,  # type: ignore[arg-type]
                        versions={"torch": torch.__version__})
    folder.mkdir(parents=True, exist_ok=True)
    student = deployed(detector)
    if "packed" in chosen or "openvino" in chosen:  # the OpenVINO folder runs its heads from the packed file
        exported.accounted_bytes = profile(detector, image_size=(64, 64), rois=1).memory_bits // 8
        path = save_packed(detector, spec, folder / FILES["packed"], classes,
                           {"recipe": exported.recipe, "source": str(model), "kind": exported.kind})
        _check_packed(path, student)
        exported.files["packed"], exported.sizes["packed"] = FILES["packed"], path.stat().st_size
        exported.packed_parts = size_breakdown(path)
    if "onnx" in chosen:
        path = onnx_export.export_onnx(detector, folder / FILES["onnx"], size)  # type: ignore[arg-type]
        exported.files["onnx"], exported.sizes["onnx"] = FILES["onnx"], path.stat().st_size
    if "openvino" in chosen:
        exported.files["openvino"] = FILES["openvino"]
        _openvino(exported, student, folder, threads)
    (folder / MANIFEST).write_text(json.dumps({**exported.to_dict(), "classes": classes}, indent=2) + "\n")
    return exported


def read_manifest(folder: Path) -> dict[str, Any]:
    """``export.json`` of an export folder.

    Raises:
        ExportError: the folder holds no export.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: no {MANIFEST}; pass a folder written by detbin export (or a model file)")
    return json.loads(path.read_text())
