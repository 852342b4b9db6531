"""Detectors: architectures as plain config, the detector families, the adapter, layouts, checkpoints.

Importing the package registers the built-in families (torchvision's, and detectron2's adapter).
"""

from detbin.models import detectron2_family, torchvision_families  # noqa: F401  (register themselves)
