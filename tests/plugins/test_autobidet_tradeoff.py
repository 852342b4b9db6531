"""beta(x) (methods.md §5.2, Eq. 10) and how it weights each image's terms (§5.3)."""

from __future__ import annotations

import math

import pytest
import torch
from detbin_bidet.ces import Discriminator, Generator
from detbin_bidet.gan import ComplexityEstimator
from detbin_bidet.tradeoff import (
    Transform,
    WeightedTerm,
    make_transform,
    tradeoff_terms,
)

from detbin import ConfigError


def test_sine_transform_hand_values() -> None:
    t = make_transform("sine")  # the paper's delta_3 = 10, theta_3 = 5
    d = torch.tensor([0.0, 1 / 3, 1.0])
    torch.testing.assert_close(t(d), torch.tensor([10.0, 10 + 5 * 0.5, 15.0]))  # sin(pi/6) = 1/2
    assert t(torch.tensor(0.0)).item() == 10.0  # exactly BiDet's beta at D = 0


def test_linear_and_exp_transforms_hand_values() -> None:
    d = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(make_transform("linear")(d), torch.tensor([10.0, 12.5, 15.0]))
    torch.testing.assert_close(make_transform("exp")(d), torch.tensor([10.0, 10 * math.sqrt(1.5), 15.0]))
    torch.testing.assert_close(Transform("linear", 2.0, 3.0)(torch.tensor(0.5)), torch.tensor(2 + 3 * 0.5))
    torch.testing.assert_close(Transform("exp", 2.0, math.log(4))(torch.tensor(0.5)), torch.tensor(2 * 2.0))
    torch.testing.assert_close(Transform("sine", 1.0, 2.0)(torch.tensor(1.0)), torch.tensor(1 + 2 * 1.0))


def test_transform_validation() -> None:
    with pytest.raises(ConfigError, match="unknown transform"):
        make_transform("cosine")
    with pytest.raises(ConfigError, match="must be > 0"):
        make_transform("linear", delta=0.0)
    assert make_transform("exp").reference == 10.0


def _estimator() -> ComplexityEstimator:
    torch.manual_seed(0)
    return ComplexityEstimator(Generator(4, 1, channels=2), Discriminator(channels=2, blocks=2), make_transform("sine"))


def test_beta_is_detached_and_in_range() -> None:
    ces = _estimator()
    features = torch.randn(5, 4, 4, 4, requires_grad=True) * 3
    beta, d = ces.beta(features, (8, 8))
    assert not beta.requires_grad and beta.grad_fn is None and not d.requires_grad
    assert beta.shape == (5,)
    assert ((beta >= 10) & (beta <= 15)).all()


def test_beta_is_ten_when_the_discriminator_says_zero() -> None:
    ces = _estimator()
    with torch.no_grad():
        ces.discriminator.linear.bias.fill_(-math.inf)  # logit -inf -> D = sigmoid(-inf) = 0
    beta, d = ces.beta(torch.randn(2, 4, 4, 4), (8, 8))
    assert d.tolist() == [0.0, 0.0]
    assert beta.tolist() == [10.0, 10.0]


def _two_images() -> tuple[torch.Tensor, dict[str, WeightedTerm], dict[str, tuple[torch.Tensor, float]], torch.Tensor]:
    beta = torch.tensor([10.0, 15.0])  # image 1: D = 0 (hard); image 2: D = 1 (easy)
    reg = {"reg": WeightedTerm(torch.tensor([2.0, 3.0]), 0.1)}  # SSD: BiDet's w_reg = 0.1 = 1/10
    prior = {"prior": (torch.tensor(0.4), 0.2)}  # gamma = 0.2
    det = torch.tensor([1.0, 0.5])  # per-image contributions to the batch detection loss 1.5
    return beta, reg, prior, det


def test_inverse_reg_weighting_two_images() -> None:
    beta, reg, prior, _ = _two_images()
    terms = tradeoff_terms(beta, reg, prior, reference=10.0)
    # mean over images of (1 / beta(x)) L_reg(x): (2 / 10 + 3 / 15) / 2 = 0.2; gamma L_CSOP = 0.2 * 0.4
    torch.testing.assert_close(terms["reg"], torch.tensor((2 / 10 + 3 / 15) / 2))
    torch.testing.assert_close(terms["prior"], torch.tensor(0.2 * 0.4))
    assert set(terms) == {"reg", "prior"}


def test_inverse_reg_weighting_both_frcnn_branches() -> None:
    beta = torch.tensor([10.0, 15.0])
    reg = {"rpn_reg": WeightedTerm(torch.tensor([1.0, 2.0]), 0.5),
           "head_reg": WeightedTerm(torch.tensor([10.0, 20.0]), 0.02)}
    terms = tradeoff_terms(beta, reg, {}, reference=10.0)
    torch.testing.assert_close(terms["rpn_reg"], torch.tensor((0.5 * 1 + 0.5 * (10 / 15) * 2) / 2))
    torch.testing.assert_close(terms["head_reg"], torch.tensor((0.02 * 10 + 0.02 * (10 / 15) * 20) / 2))


def test_literal_weighting_two_images() -> None:
    beta, reg, prior, det = _two_images()
    terms = tradeoff_terms(beta, reg, prior, reference=10.0, mode="literal", det_per_image=det)
    total = det.sum() + sum(terms.values())  # what the trainer adds: sum(task) + extra terms
    # beta L_det: 10 * 1 + 15 * 0.5 = 17.5; L_reg (weight 0.1 * 10 = 1): 2.5; gamma' = 0.2 * 10 on 0.4: 0.8
    torch.testing.assert_close(total, torch.tensor(17.5 + 2.5 + 0.8))


def test_literal_is_reference_times_default_at_d_zero() -> None:
    _, reg, prior, det = _two_images()
    beta = torch.tensor([10.0, 10.0])
    literal_terms = tradeoff_terms(beta, reg, prior, reference=10.0, mode="literal", det_per_image=det)
    literal = det.sum() + sum(literal_terms.values())
    default = det.sum() + sum(tradeoff_terms(beta, reg, prior, reference=10.0).values())
    torch.testing.assert_close(literal, 10 * default)


def test_weighting_errors() -> None:
    beta, reg, prior, _ = _two_images()
    with pytest.raises(ConfigError, match="detached"):
        tradeoff_terms(beta.clone().requires_grad_(), reg, prior, reference=10.0)
    with pytest.raises(ConfigError, match="per-image detection losses"):
        tradeoff_terms(beta, reg, prior, reference=10.0, mode="literal")


def test_weighting_keeps_the_regulariser_gradient() -> None:
    beta, _, _, _ = _two_images()
    values = torch.tensor([2.0, 3.0], requires_grad=True)
    tradeoff_terms(beta, {"reg": WeightedTerm(values, 0.1)}, {}, reference=10.0)["reg"].backward()
    torch.testing.assert_close(values.grad, torch.tensor([0.1 * 10 / 10 / 2, 0.1 * 10 / 15 / 2]))
