"""Detections drawn on an image: boxes with a readable ``class score`` label, for ``detbin predict``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from detbin.core.types import Detections

__all__ = ["draw_detections", "PALETTE"]

# Tableau's 10 colours: distinct, and dark enough for white label text
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_detections(image: Tensor, detections: Detections, classes: Sequence[str], min_side: int = 512) -> Image.Image:
    """``image`` (``FloatTensor[3, H, W]`` in 0..1) with every box of ``detections`` drawn and labelled.

    Small images are enlarged by a whole factor (nearest neighbour) until the long side is at
    least ``min_side`` pixels, so a label stays legible; boxes (``xyxy`` pixels of ``image``) are
    scaled with it. Labels read ``<class> <score>`` on a box-coloured band above the box (inside
    it at the top border); higher scores are drawn last, on top.
    """
    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    height, width = pixels.shape[:2]
    factor = max(1, math.ceil(min_side / max(height, width)))
    canvas = Image.fromarray(pixels).resize((width * factor, height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font_size = max(12, round(0.025 * max(canvas.size)))
    font, line = _font(font_size), max(2, round(font_size / 7))
    order = detections["scores"].argsort().tolist()
    for i in order:
        x1, y1, x2, y2 = (float(v) * factor for v in detections["boxes"][i])
        label = int(detections["labels"][i])
        colour = PALETTE[(label - 1) % len(PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        name = classes[label - 1] if 0 < label <= len(classes) else f"class {label}"
        text = f"{name} {float(detections['scores'][i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * line, bottom - top + 2 * line
        tx = min(max(x1, 0), canvas.size[0] - w)
        ty = y1 - h if y1 - h >= 0 else y1  # above the box, or inside it at the image's top border
        draw.rectangle((tx, ty, tx + w, ty + h), fill=colour)
        draw.text((tx + line - left, ty + line - top), text, fill=_text_colour(colour), font=font)
    return canvas
