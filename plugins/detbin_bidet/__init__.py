"""BiDet and AutoBiDet: the ``bidet`` and ``autobidet`` recipes (methods.md §4, §5).

``bidet`` (:class:`BiDet`, :mod:`detbin_bidet.recipe`): BiDet's information-bottleneck feature
regulariser and sparse object prior as the released code optimizes them. ``autobidet``
(:class:`AutoBiDet`, :mod:`detbin_bidet.autobidet`): BiDet with a per-image trade-off beta(x) from
a GAN complexity estimator and the class-aware prior (C-SOP). The students' architectures are
detbin core (``bidetssd300_vgg16``, ``fasterrcnnc4_resnet18_bidet``); this package holds only
what training needs (the terms, the estimator, the phases).
"""

from detbin_bidet.autobidet import AutoBiDet
from detbin_bidet.recipe import BiDet

__all__ = ["AutoBiDet", "BiDet"]
