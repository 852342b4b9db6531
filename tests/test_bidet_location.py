"""Reparameterised locations (methods.md §4.4): the formula, the seeded noise, the heads' column layouts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from detbin.core.errors import ConfigError
from detbin.models.bidet_ssd import BiDetSSDHead
from detbin.models.c4_heads import BiDetRPNHead, BoxPredictor
from detbin.models.location import LocationSampler, fill_mean_half, mean_half_of, mean_rows, sample_location


def test_sample_location_formula():
    log_var = torch.tensor([2 * math.log(2.0), 0.0])  # sigma 2 and 1
    mean, eps = torch.tensor([1.0, -3.0]), torch.tensor([0.3, -1.0])
    out = sample_location(log_var, mean, 0.5, eps)
    assert torch.allclose(out, torch.tensor([1.0 + 0.5 * 2.0 * 0.3, -3.0 + 0.5 * 1.0 * -1.0]))
    assert sample_location(log_var, mean, 0.0, eps) is mean  # SSD: sample_sigma 0 -> the mean


def test_sampler_noise_is_fixed_by_seed_and_iteration():
    raw = torch.randn(2, 5, 8)
    a, b = LocationSampler(0.001), LocationSampler(0.001)
    a.reseed(3, 7)
    b.reseed(3, 7)
    out_a = a(raw)
    assert torch.equal(out_a, b(raw))
    eps = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
    assert torch.allclose(out_a, raw[..., 4:] + 0.001 * torch.exp(raw[..., :4] / 2) * eps)
    b.reseed(3, 8)
    assert not torch.equal(b(raw), out_a)


def test_no_noise_in_eval_or_with_sigma_zero():
    raw = torch.randn(3, 8)
    assert torch.equal(LocationSampler(0.5).eval()(raw), raw[:, 4:])
    zero = LocationSampler(0.0)
    state = zero.generator.get_state()
    assert torch.equal(zero(raw), raw[:, 4:])
    assert torch.equal(zero.generator.get_state(), state)  # nothing drawn
    twin = copy.deepcopy(LocationSampler(0.001, seed=5))
    assert torch.equal(twin(torch.ones(4, 8)), LocationSampler(0.001, seed=5)(torch.ones(4, 8)))


def test_ssd_head_columns_are_log_var_then_mean():
    head = BiDetSSDHead([4], [2], num_classes=3)
    feature = torch.randn(1, 4, 2, 3)
    out = head([feature])
    raw = head.loc[0](feature)  # [1, 2 boxes * 8, 2, 3]
    y, x, box = 1, 2, 1
    prior = (y * 3 + x) * 2 + box  # location-major, box-minor; column j of box b is channel 8 b + j
    assert torch.equal(out["bbox_log_var"][0, prior], raw[0, 8 * box:8 * box + 4, y, x])
    assert torch.equal(out["bbox_regression"][0, prior], raw[0, 8 * box + 4:8 * box + 8, y, x])


def test_rpn_head_returns_the_mean_half_in_torchvision_layout():
    head = BiDetRPNHead(nn.Conv2d(4, 8, 3, padding=1), anchors=3, sample_sigma=0.0)
    feature = torch.randn(2, 4, 5, 5)
    objectness, deltas = head([feature])
    raw = head.bbox_pred(head.bn(head.conv(feature)))  # [2, 24, 5, 5]
    assert objectness[0].shape == (2, 3, 5, 5) and deltas[0].shape == (2, 12, 5, 5)
    for a in range(3):  # torchvision: channel 4a + k is coordinate k of anchor a
        assert torch.equal(deltas[0][:, 4 * a:4 * a + 4], raw[:, 8 * a + 4:8 * a + 8])


def test_agnostic_predictor_repeats_the_sampled_deltas_for_every_class():
    predictor = BoxPredictor(6, num_classes=4, class_agnostic=True, variance=True, sample_sigma=0.001)
    predictor.sampler.reseed(0, 1)
    x = torch.randn(5, 6)
    logits, deltas = predictor(x)
    assert logits.shape == (5, 4) and deltas.shape == (5, 16)
    per_class = deltas.view(5, 4, 4)
    assert torch.equal(per_class, per_class[:, :1].expand(-1, 4, -1))
    raw = predictor.bbox_pred(x)
    eps = torch.randn(5, 1, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(per_class[:, 0], raw[:, 4:] + 0.001 * torch.exp(raw[:, :4] / 2) * eps[:, 0])


def test_mean_rows_and_their_copies():
    assert mean_rows(2).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    eight = nn.Conv2d(3, 16, 1)
    four = mean_half_of(eight)
    assert torch.equal(four.weight, eight.weight[[4, 5, 6, 7, 12, 13, 14, 15]]) and four.out_channels == 8
    real = nn.Linear(3, 8)
    target = nn.Linear(3, 16)
    log_var = target.weight[[0, 1, 2, 3]].clone()
    fill_mean_half(target, real, "box")
    assert torch.equal(target.weight[mean_rows(2)], real.weight) and torch.equal(target.weight[:4], log_var)
    with pytest.raises(ConfigError, match="mean half"):
        fill_mean_half(nn.Linear(3, 12), real, "box")
