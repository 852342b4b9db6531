"""PASCAL VOC layout: annotation XML (parsed with defusedxml), image sets, layout checks.

VOC boxes are 1-based inclusive pixel indices ``xmin..xmax``. detbin's continuous boxes
(:mod:`detbin.types`) are ``(xmin - 1, ymin - 1, xmax, ymax)``; :func:`to_continuous` and
:func:`to_devkit` convert, nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from detbin.core.errors import DataError
from detbin.data.files import inside_root, read_text

__all__ = [
    "VOC_CLASSES", "VocObject", "VocAnnotation", "parse_annotation", "write_annotation", "find_root",
    "read_split", "read_classes", "to_continuous", "to_devkit", "EXPECTED_SPLIT_SIZES",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# Images per official split, to tell a user when a local copy is incomplete.
EXPECTED_SPLIT_SIZES: dict[tuple[str, str], int] = {
    ("VOC2007", "test"): 4952, ("VOC2007", "trainval"): 5011, ("VOC2007", "train"): 2501, ("VOC2007", "val"): 2510,
    ("VOC2012", "trainval"): 11540, ("VOC2012", "train"): 5717, ("VOC2012", "val"): 5823,
}


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: class name, devkit box ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class VocAnnotation:
    """One annotation file: image file name, size and objects."""

    filename: str
    width: int
    height: int
    objects: tuple[VocObject, ...]


def to_continuous(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Devkit ``(xmin, ymin, xmax, ymax)`` -> continuous xyxy ``(xmin - 1, ymin - 1, xmax, ymax)``."""
    return (box[0] - 1, box[1] - 1, box[2], box[3])


def to_devkit(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Continuous xyxy -> devkit ``(x1 + 1, y1 + 1, x2, y2)``."""
    return (box[0] + 1, box[1] + 1, box[2], box[3])


def _text(node, tag: str, path: Path, required: bool = True) -> str | None:
    found = node.find(tag)
    if found is None or found.text is None:
        if required:
            raise DataError(f"{path}: <{tag}> is missing; every VOC annotation needs it (fix or remove the file)")
        return None
    return found.text.strip()


def _number(node, tag: str, path: Path) -> float:
    value = _text(node, tag, path)
    try:
        number = float(value)  # type: ignore[arg-type]
    except ValueError:
        raise DataError(f"{path}: <{tag}> is {value!r}, not a number") from None
    if not math.isfinite(number):  # float() accepts "nan", "inf" and overflows "1e999" to inf
        raise DataError(f"{path}: <{tag}> is {value!r}, not a finite number; write the pixel value")
    return number


def parse_annotation(path: Path) -> VocAnnotation:
    """Parse one VOC annotation XML (defusedxml: no entity expansion, no external fetches).

    Raises:
        DataError: unreadable XML, a missing ``<size>``/``<bndbox>`` field, or a box that
            is empty or outside the image.
    """
    try:
        root = ElementTree.parse(str(path)).getroot()
    except (ElementTree.ParseError, DefusedXmlException, OSError) as exc:
        raise DataError(f"{path}: cannot parse annotation XML ({exc})") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: <size> is missing; VOC annotations need <size><width/><height/></size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: <size> is {width}x{height}; an image needs a positive <width> and <height>")
    objects = []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{path}: object {name!r} has no <bndbox>")
        box = tuple(_number(bnd, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height):
            raise DataError(f"{path}: box {box} of {name!r} is empty or outside the {width}x{height} image "
                            "(VOC boxes are 1-based: 1 <= xmin <= xmax <= width)")
        difficult = (_text(obj, "difficult", path, required=False) or "0") == "1"
        truncated = (_text(obj, "truncated", path, required=False) or "0") == "1"
        objects.append(VocObject(str(name), box, difficult, truncated))  # type: ignore[arg-type]
    filename = _text(root, "filename", path, required=False) or f"{path.stem}.jpg"
    return VocAnnotation(filename, width, height, tuple(objects))


def write_annotation(path: Path, annotation: VocAnnotation, folder: str = "VOC2007") -> None:
    """Write ``annotation`` as VOC XML (integer devkit coordinates)."""
    lines = ["<annotation>", f"  <folder>{escape(folder)}</folder>", f"  <filename>{escape(annotation.filename)}</filename>",
             "  <size>", f"    <width>{annotation.width}</width>", f"    <height>{annotation.height}</height>",
             "    <depth>3</depth>", "  </size>", "  <segmented>0</segmented>"]
    for obj in annotation.objects:
        xmin, ymin, xmax, ymax = (int(round(v)) for v in obj.box)
        lines += ["  <object>", f"    <name>{escape(obj.name)}</name>", "    <pose>Unspecified</pose>",
                  f"    <truncated>{int(obj.truncated)}</truncated>", f"    <difficult>{int(obj.difficult)}</difficult>",
                  "    <bndbox>", f"      <xmin>{xmin}</xmin>", f"      <ymin>{ymin}</ymin>",
                  f"      <xmax>{xmax}</xmax>", f"      <ymax>{ymax}</ymax>", "    </bndbox>", "  </object>"]
    lines.append("</annotation>")
    path.write_text("\n".join(lines) + "\n")


def find_root(path: Path, year: str | None = None) -> Path:
    """The folder holding ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/``.

    Accepts that folder itself, ``VOCdevkit/`` or its parent (then ``year``, e.g. ``VOC2007``,
    picks the sub-folder).

    Raises:
        DataError: no such folder, or not a VOC layout (the message says what is missing).
    """
    path = Path(path)
    candidates = [path]
    if year:
        candidates += [path / year, path / "VOCdevkit" / year]
    for candidate in candidates:
        if all((candidate / sub).is_dir() for sub in ("JPEGImages", "Annotations", "ImageSets/Main")):
            return candidate
    if not path.exists():
        raise DataError(f"{path}: no such folder; pass --data with a VOC folder (or make one with "
                        "`detbin data synthetic --out DIR`)")
    missing = [sub for sub in ("JPEGImages", "Annotations", "ImageSets/Main") if not (path / sub).is_dir()]
    where = f" or {path}/VOCdevkit/{year}" if year else ""
    raise DataError(f"{path}: not a VOC layout folder (missing {', '.join(m + '/' for m in missing)}{where}); "
                    "point --data at VOCdevkit/VOC2007 or make one with `detbin data synthetic --out DIR`")


def read_split(root: Path, split: str, allow_outside: bool = False) -> list[str]:
    """Image stems listed in ``ImageSets/Main/<split>.txt``.

    A stem names ``JPEGImages/<stem>.jpg`` and ``Annotations/<stem>.xml``; one that leads outside
    the root (``../../etc/passwd``) is refused unless ``allow_outside``
    (:func:`~detbin.data.files.inside_root`).
    """
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path}: no such split; available: {', '.join(available) or 'none'}")
    lines = read_text(path, "VOC image set file").splitlines()
    return [inside_root(line.split()[0], f"{path}:{n}", allow_outside) for n, line in enumerate(lines, start=1)
            if line.strip()]


def read_classes(root: Path) -> tuple[str, ...]:
    """Class names: ``labels.txt`` in the root if present (synthetic and custom sets), else VOC's 20."""
    labels = root / "labels.txt"
    if labels.is_file():
        names = tuple(line.strip() for line in read_text(labels, "class list").splitlines() if line.strip())
        if not names:
            raise DataError(f"{labels}: empty; write one class name per line")
        return names
    return VOC_CLASSES
