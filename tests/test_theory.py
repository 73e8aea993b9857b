"""Mean-field theory: closed forms, and Monte Carlo checks of the quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study import theory


def test_relu_with_he_init_keeps_the_gradient_norm():
    assert theory.chi("relu", q=1.7, sigma_w2=2.0) == pytest.approx(1.0, abs=1e-12)


def test_relu_with_xavier_on_square_layers_halves_the_squared_gradient():
    p = theory.predict("relu", "xavier_normal", "none", "none", depth=32, width=128,
                       num_features=128)  # fmt: skip
    assert p.sigma_w2 == 1.0
    assert p.chi == pytest.approx(0.5, abs=1e-12)
    assert p.log10_rate == pytest.approx(0.5 * math.log10(0.5), abs=1e-12)


def test_batch_norm_relu_rate_is_pi_over_pi_minus_one():
    assert theory.batchnorm_chi("relu") == pytest.approx(math.pi / (math.pi - 1), abs=1e-12)


def test_layer_norm_relu_rate_is_one():
    assert theory.layernorm_chi("relu") == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma_w2", [0.5, 1.0, 2.3])
def test_linear_activation_rate_is_sigma_w2(sigma_w2):
    assert theory.chi("linear", q=0.37, sigma_w2=sigma_w2) == pytest.approx(sigma_w2, abs=1e-12)


def test_relu_residual_block_adds_the_branch_rate():
    # 1 + chi_branch, with chi_branch = sigma_w^2 / 2 for ReLU at any variance.
    chis = theory.residual_chis("relu", q1=1.0, sigma_w2=2.0, depth=10)
    assert chis == pytest.approx(np.full(10, 2.0), abs=1e-12)


def test_sigmoid_has_a_fixed_point_and_tanh_at_xavier_decays_to_zero():
    q_star = theory.fixed_point("sigmoid", sigma_w2=1.0)
    assert q_star == pytest.approx(theory.q_map("sigmoid", q_star, 1.0), rel=1e-10)
    assert theory.fixed_point("tanh", sigma_w2=1.0) is None
    q = theory.q_sequence("tanh", q1=1.0, sigma_w2=1.0, depth=200)
    assert np.all(np.diff(q) < 0) and q[-1] < 0.02


def test_depth_scale_is_infinite_at_the_edge_of_chaos_and_finite_off_it():
    assert theory.depth_scale("relu", sigma_w2=2.0) == math.inf
    ordered = theory.depth_scale("sigmoid", sigma_w2=1.0)
    chi_star = theory.chi("sigmoid", theory.fixed_point("sigmoid", 1.0), 1.0)
    assert ordered == pytest.approx(-1 / math.log(chi_star), rel=1e-12)
    assert 0 < theory.depth_scale("tanh", sigma_w2=2.0) < math.inf  # chaotic phase


# Monte Carlo with 4 million standard normal draws (seeded): the standard error of each
# expectation below is under 0.1% of its value, so 0.5% is a 5-sigma tolerance.
MC_DRAWS = 4_000_000
MC_RTOL = 5e-3


@pytest.fixture(scope="module")
def normal_draws():
    return np.random.default_rng(0).standard_normal(MC_DRAWS)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "selu"])
@pytest.mark.parametrize("q", [0.3, 1.0, 2.5])
def test_quadrature_matches_monte_carlo(activation, q, normal_draws):
    u = math.sqrt(q) * normal_draws
    phi, dphi = theory.phi(activation)(u), theory.dphi(activation)(u)
    assert theory.q_map(activation, q, sigma_w2=1.3) == pytest.approx(
        1.3 * np.mean(phi**2), rel=MC_RTOL
    )
    assert theory.chi(activation, q, sigma_w2=1.3) == pytest.approx(
        1.3 * np.mean(dphi**2), rel=MC_RTOL
    )


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "selu"])
def test_normalized_rates_match_monte_carlo(activation, normal_draws):
    phi = theory.phi(activation)(normal_draws)
    dphi2 = np.mean(theory.dphi(activation)(normal_draws) ** 2)
    assert theory.batchnorm_chi(activation) == pytest.approx(dphi2 / np.var(phi), rel=MC_RTOL)
    assert theory.layernorm_chi(activation) == pytest.approx(dphi2 / np.mean(phi**2), rel=MC_RTOL)
