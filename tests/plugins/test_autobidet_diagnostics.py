"""The correlation of D(G(f(x))) with the per-image detection loss (issue 13's diagnostic)."""

from __future__ import annotations

import math

import pytest
import torch
from detbin_bidet.diagnostics import (
    complexity_correlation,
    pearson,
    per_image_detection_losses,
    rankdata,
    spearman,
)

from detbin import ConfigError, build_detector, tiny_config


def test_rankdata_averages_ties() -> None:
    assert rankdata([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert rankdata([5.0, 5.0, 5.0]).tolist() == [2.0, 2.0, 2.0]
    assert rankdata([0.2, -1.0, 7.0]).tolist() == [2.0, 1.0, 3.0]


def test_pearson_hand_value() -> None:
    # deviations (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): covariance sum 4, variance sums 5 and 5
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 5, abs=1e-15)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0, abs=1e-15)


def test_spearman_hand_values() -> None:
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / (4 * 15)
    assert spearman([10, 20, 30, 40], [1, 9, 4, 16]) == pytest.approx(1 - 6 * 2 / (4 * 15), abs=1e-15)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): covariance sum 4.5, variance sums 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5), abs=1e-15)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == 1.0  # monotone, not linear


def test_undefined_and_invalid_inputs() -> None:
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # a constant D (collapsed discriminator) has no correlation
    with pytest.raises(ConfigError, match="equal length"):
        pearson([1, 2], [1, 2, 3])


def test_complexity_correlation() -> None:
    d = torch.tensor([0.9, 0.8, 0.5, 0.1])  # easy -> hard
    losses = torch.tensor([1.0, 2.0, 2.5, 9.0])
    result = complexity_correlation(d, losses)
    assert result["spearman"] == -1.0 and result["n"] == 4.0
    assert -1.0 < result["pearson"] < -0.9


def test_per_image_losses_do_not_depend_on_batch_mates() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config("ssd300_vgg16", num_classes=3)).model.eval()
    images = [torch.rand(3, 96, 96) for _ in range(3)]
    box = torch.tensor([[10.0, 12.0, 60.0, 70.0]])
    targets = [{"boxes": box, "labels": torch.tensor([1 + i % 2])} for i in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = per_image_detection_losses(model, images, targets)
    swapped = per_image_detection_losses(model, images[::-1], targets[::-1])
    assert losses.shape == (3,) and (losses > 0).all()
    torch.testing.assert_close(swapped, losses.flip(0), rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    assert not model.training  # modes restored
