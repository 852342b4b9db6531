"""Detectors: architectures as plain config, the detector families, the adapter, layouts, checkpoints.

Importing the package registers the built-in families (torchvision's, then detectron2's adapter).
"""

from detbin.models import torchvision_families  # noqa: F401, I001  (registers itself; listed first)
from detbin.models import detectron2_family  # noqa: F401  (registers itself)
from detbin.models import bidet_ssd, c4  # noqa: F401  (BiDet's SSD300 students; Faster R-CNN C4)
