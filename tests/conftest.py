"""Shared fixtures: tiny real objects, no mocks, no downloads (CPU only)."""

from __future__ import annotations

import pytest
import torch

from detbin.models.detector import build_detector
from helpers import toy_config


@pytest.fixture(autouse=True)
def _seed_threads_and_cwd(tmp_path, monkeypatch):
    """Seeded, two threads, and run from a temporary folder so no test writes into the repo."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def toy_detector():
    return build_detector(toy_config())


@pytest.fixture
def synthetic_batch():
    """Two images: one with two boxes, one with none (torchvision's negative-sample case)."""
    images = [torch.rand(3, 96, 112), torch.rand(3, 90, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [55.0, 40.0, 90.0, 85.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets
