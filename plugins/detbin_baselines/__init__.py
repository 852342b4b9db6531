"""The 1-bit baselines every paper table compares against, trained with the task loss only.

* ``xnor``: XNOR-Net (Rastegari et al., ECCV 2016, arXiv:1603.05279): ``sign`` activations
  with the clipped STE, weights ``alpha * sign(W)`` with ``alpha = mean|W|`` per output channel
  (gradient through alpha), one shortcut per ResNet block, BN -> sign -> conv.
* ``bireal``: Bi-Real Net (Liu et al., ECCV 2018, arXiv:1808.00278): ApproxSign activations,
  a real shortcut around every binary conv, ``HardBinaryConv`` weights (detached alpha).
* ``reactnet``: ReActNet (Liu et al., ECCV 2020, arXiv:2003.03488): Bi-Real plus RSign
  (learnable per-channel threshold) and RPReLU.

and the two generic detection-distillation methods the IDa-Det tables compare against, on a
ReActNet student distilled from the teacher's FPN through one 3x3 adaptation conv per level:

* ``fgfi``: fine-grained feature imitation (Wang et al., CVPR 2019, arXiv:1906.03609), the
  anchor-IoU mask near objects;
* ``defeat``: decoupled features (Guo et al., CVPR 2021, arXiv:2103.14475), object and
  background regions imitated with separate weights.

The layer choices follow methods.md §1.4-1.7; each class only states its layout, the platform
does the rest. These are the "1-bit baseline" and "w/ FGFI", "w/ DeFeat" rows of the BiDet,
LWS-Det and IDa-Det tables.
"""

from __future__ import annotations

from typing import Any, ClassVar

from detbin import Recipe

from detbin_baselines.imitation import DeFeat, FGFI

__all__ = ["XNOR", "BiReal", "ReActNet", "FGFI", "DeFeat"]

_HARD_BINARY_WEIGHT = {"name": "scaled_sign", "detach_scale": True, "ste": "clip"}


class XNOR(Recipe):
    """XNOR-Net baseline: sign + per-channel scale, no per-conv shortcut."""

    name = "xnor"
    paper = "Rastegari et al., XNOR-Net: ImageNet Classification Using Binary CNNs, ECCV 2016, arXiv:1603.05279"
    layout: ClassVar[dict[str, Any]] = {
        "form": "xnor", "activation": "sign", "weight": {"name": "scaled_sign", "detach_scale": False, "ste": "clip"},
    }


class BiReal(Recipe):
    """Bi-Real Net baseline: ApproxSign, a real shortcut per binary conv."""

    name = "bireal"
    paper = ("Liu et al., Bi-Real Net: Enhancing the Performance of 1-bit CNNs, ECCV 2018, arXiv:1808.00278")
    layout: ClassVar[dict[str, Any]] = {"form": "bireal", "activation": "approx_sign", "weight": _HARD_BINARY_WEIGHT}


class ReActNet(Recipe):
    """ReActNet baseline: Bi-Real plus RSign and RPReLU."""

    name = "reactnet"
    paper = ("Liu et al., ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions, "
             "ECCV 2020, arXiv:2003.03488")
    layout: ClassVar[dict[str, Any]] = {"form": "reactnet", "activation": "rsign", "weight": _HARD_BINARY_WEIGHT}
