"""``get_cfg()``: a CfgNode-like tree with the keys detbin sets."""

from __future__ import annotations

from types import SimpleNamespace


class CfgNode(SimpleNamespace):
    def merge_from_file(self, path: str) -> None:
        raise NotImplementedError("the stand-in reads no detectron2 YAML")

    def merge_from_list(self, opts: list) -> None:
        for key, value in zip(opts[0::2], opts[1::2]):
            node = self
            *parents, leaf = key.split(".")
            for part in parents:
                node = getattr(node, part)
            setattr(node, leaf, type(getattr(node, leaf))(value))


def get_cfg() -> CfgNode:
    return CfgNode(MODEL=CfgNode(META_ARCHITECTURE="GeneralizedRCNN", DEVICE="cuda",
                                 ROI_HEADS=CfgNode(NUM_CLASSES=80), RETINANET=CfgNode(NUM_CLASSES=80),
                                 PIXEL_MEAN=[103.53, 116.28, 123.675], PIXEL_STD=[57.375, 57.12, 58.395]))
