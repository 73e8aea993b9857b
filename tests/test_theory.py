"""Mean-field theory: closed forms, quadrature against Monte Carlo, and every correction
pinned against a measurement on the project's own networks and probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from study.analysis import meanfield, theory
from study.config import ModelConfig
from study.engine import nets
from study.engine.probes import profile_summary

from .conftest import probe_net

pytestmark = pytest.mark.numeric  # run again under other CPU capabilities: make test


def test_relu_with_he_init_keeps_the_gradient_norm():
    assert meanfield.chi("relu", q=1.7, sigma_w2=2.0) == pytest.approx(1.0, abs=1e-12)


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
    assert meanfield.chi("linear", q=0.37, sigma_w2=sigma_w2) == pytest.approx(sigma_w2, abs=1e-12)


def test_sigmoid_has_a_fixed_point_and_tanh_at_xavier_decays_to_zero():
    q_star = meanfield.fixed_point("sigmoid", sigma_w2=1.0)
    assert q_star == pytest.approx(meanfield.q_map("sigmoid", q_star, 1.0), rel=1e-10)
    assert meanfield.fixed_point("tanh", sigma_w2=1.0) is None
    q = meanfield.q_sequence("tanh", q1=1.0, sigma_w2=1.0, depth=200)
    assert np.all(np.diff(q) < 0) and q[-1] < 0.02


def test_depth_scale_is_infinite_at_the_edge_of_chaos_and_finite_off_it():
    assert meanfield.depth_scale("relu", sigma_w2=2.0) == math.inf
    ordered = meanfield.depth_scale("sigmoid", sigma_w2=1.0)
    chi_star = meanfield.chi("sigmoid", meanfield.fixed_point("sigmoid", 1.0), 1.0)
    assert ordered == pytest.approx(-1 / math.log(chi_star), rel=1e-12)
    assert 0 < meanfield.depth_scale("tanh", sigma_w2=2.0) < math.inf  # chaotic phase


# ------------------------------------------------------------- finite-batch batch norm


@pytest.mark.parametrize("batch", [4, 8, 16, 128, 1024])
def test_finite_batch_rate_of_a_linear_net_is_b_minus_2_over_b_minus_3(batch):
    assert theory.finite_batch_chi("linear", batch) == pytest.approx(
        (batch - 2) / (batch - 3), rel=1e-10
    )


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "selu"])
def test_finite_batch_rate_falls_to_the_large_batch_rate(activation):
    rates = [theory.finite_batch_chi(activation, b) for b in (8, 16, 128, 1024, 4096)]
    assert rates == sorted(rates, reverse=True)  # small batches explode faster
    assert rates[-2] == pytest.approx(theory.batchnorm_chi(activation), rel=2e-3)
    assert rates[-1] == theory.batchnorm_chi(activation)
    assert theory.finite_batch_chi(activation, 3) == math.inf


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_finite_batch_quadrature_matches_monte_carlo_over_normalized_batches(activation):
    # The same expectation by brute force: 200,000 batches of 8, normalized as batch norm
    # does, every term averaged over all entries. Standard error ~0.1%.
    b = 8
    z = np.random.default_rng(0).standard_normal((200_000, b))
    z -= z.mean(axis=1, keepdims=True)
    x = math.sqrt(b) * z / np.linalg.norm(z, axis=1, keepdims=True)
    f, d = meanfield.phi(activation)(x), meanfield.dphi(activation)(x)
    pairs = (f.sum(1) ** 2 - (f**2).sum(1)) / (b * (b - 1))
    c = np.mean(f**2) - np.mean(pairs)
    d2, s = (d**2).sum(1), d.sum(1)
    trace = d2 * (1 - 1 / b) ** 2 + (s**2 - d2) / b**2
    along_x = (x**2 * d**2).sum(1) - (x * d).sum(1) ** 2 / b
    mc = b / (c * (b - 3) * (b - 1)) * np.mean(trace - along_x / b)
    assert theory.finite_batch_chi(activation, b) == pytest.approx(mc, rel=5e-3)


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
    phi, dphi = meanfield.phi(activation)(u), meanfield.dphi(activation)(u)
    assert meanfield.q_map(activation, q, sigma_w2=1.3) == pytest.approx(
        1.3 * np.mean(phi**2), rel=MC_RTOL
    )
    assert meanfield.chi(activation, q, sigma_w2=1.3) == pytest.approx(
        1.3 * np.mean(dphi**2), rel=MC_RTOL
    )


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "selu"])
def test_normalized_rates_match_monte_carlo(activation, normal_draws):
    phi = meanfield.phi(activation)(normal_draws)
    dphi2 = np.mean(meanfield.dphi(activation)(normal_draws) ** 2)
    assert theory.batchnorm_chi(activation) == pytest.approx(dphi2 / np.var(phi), rel=MC_RTOL)
    assert theory.layernorm_chi(activation) == pytest.approx(dphi2 / np.mean(phi**2), rel=MC_RTOL)


# ------------------------------------------------------------------------ residual nets


def test_relu_residual_block_adds_the_scaled_branch_rate():
    # 1 + s^2 chi_branch with chi_branch = sigma_w^2 / 2 = 1 for ReLU + He at any variance,
    # and E[phi'^2] = 1/2 at every layer, so its ratio between layers is 1.
    for scale in (1.0, 0.5):
        factors = theory.residual_factors("relu", 1.0, sigma_w2=2.0, depth=10, scale=scale)
        assert factors[:-1] == pytest.approx(np.full(9, 1 + scale**2), abs=1e-12)


def test_residual_stream_variance_counts_the_bias_once():
    # Under PyTorch's default init, block 1 reads the stem's output: q_1 = sw2 v_0 + sb2.
    sw2, sb2, v0 = 1 / 3, 1 / (3 * 128), 0.4
    q1 = sw2 * v0 + sb2
    factors = theory.residual_factors("tanh", v0, sw2, depth=3, sigma_b2=sb2)
    stream = v0 + meanfield.q_map("tanh", q1, 1.0)
    q2 = sw2 * stream + sb2
    e1, e2 = (meanfield.chi("tanh", q, 1.0) for q in (q1, q2))
    assert factors[0] == pytest.approx((1 + sw2 * e2) * e1 / e2, rel=1e-12)


# ------------------------------------------------------------ theory against measurement


def measured_rate(mnist1d, probe_batch: int, batches: int, seeds=(0, 1), **model) -> float:
    """Mean over seeds of the measured per-layer log10 signal-gradient rate at init."""
    x, y = torch.as_tensor(mnist1d.x_train), torch.as_tensor(mnist1d.y_train)
    rates = []
    for seed in seeds:
        cfg = ModelConfig(**{k: v for k, v in model.items() if k != "scale"})
        cfg.residual.scale = model.get("scale", 1.0)
        net = nets.build(x.shape[1], 10, cfg, seed)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 7))
        chunks = [order[k * probe_batch : (k + 1) * probe_batch] for k in range(batches)]
        stats = probe_net(net, cfg, [(x[i], y[i]) for i in chunks])
        rates.append(profile_summary(stats["signal_grad_norm"])["log10_rate"])
    return float(np.mean(rates))


def predicted(mnist1d, batch: int | None = None, **model) -> float:
    p = theory.predict(model["activation"], model["init"], model.get("norm", "none"),
                       model.get("skip", "none"), model["depth"], model["width"],
                       mnist1d.num_features, batch_size=batch,
                       residual_scale=model.get("scale", 1.0))  # fmt: skip
    return p.reference


@pytest.mark.parametrize(("batch", "batches"), [(8, 8), (16, 8), (128, 4)])
def test_batch_norm_relu_explodes_at_the_finite_batch_rate(mnist1d, batch, batches):
    # Measured here at depth 32: 1.79 per layer (squared) at probe batch 8, 1.59 at 16,
    # 1.48 at 128; the large-batch pi/(pi - 1) = 1.467 misses the small batches by 20%.
    model = dict(activation="relu", init="kaiming_normal", norm="batch", depth=32, width=128)
    ratio = 10 ** (
        measured_rate(mnist1d, batch, batches, **model) - predicted(mnist1d, batch, **model)
    )
    assert ratio == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_residual_tanh_follows_the_stream_including_the_derivative_ratio(mnist1d, scale):
    model = dict(activation="tanh", init="xavier_normal", skip="residual", depth=16, width=128,
                 scale=scale)  # fmt: skip
    ratio = 10 ** (measured_rate(mnist1d, 128, 4, **model) - predicted(mnist1d, **model))
    assert ratio == pytest.approx(1.0, abs=0.02)
    # Without the E[phi'^2] ratio (the stream factors alone) the prediction is 20% low.
    stem = theory.stem_variance("xavier_normal", "tanh", mnist1d.num_features, 128, 1.0)
    q, stream = [], stem
    for _ in range(16):
        q.append(stream)  # sigma_w^2 = 1 on square layers
        stream += scale**2 * meanfield.q_map("tanh", q[-1], 1.0)
    naive = np.array([1 + scale**2 * meanfield.chi("tanh", ql, 1.0) for ql in q])
    assert predicted(mnist1d, **model) > 1.1 * theory._fitted_rate(naive, 16)


def test_orthogonal_stem_sets_the_first_variance(mnist1d):
    # A tall orthogonal stem (40 -> 128) has orthonormal columns: fan_in Var(W) = 40/128.
    net = nets.build(mnist1d.num_features, 10, ModelConfig(init="orthogonal", width=128), 0)
    with torch.no_grad():
        measured = net.stem(torch.as_tensor(mnist1d.x_train)).var().item()
    stem = theory.stem_variance("orthogonal", "tanh", mnist1d.num_features, 128, 1.0)
    assert stem == pytest.approx(mnist1d.num_features / 128)
    assert measured == pytest.approx(stem, rel=0.1)
    model = dict(activation="tanh", init="orthogonal", depth=16, width=128)
    ratio = 10 ** (measured_rate(mnist1d, 128, 4, **model) - predicted(mnist1d, **model))
    assert ratio == pytest.approx(1.0, abs=0.02)


# ---------------------------------------------- the residual ReLU excess over mean field


def test_residual_relu_excess_over_mean_field_does_not_fade_with_width():
    # Mean field predicts 1 + chi_branch = 2 per block. Independent backward weights give
    # exactly that; the real net's own weights give about 2.9 once far enough from the
    # output, at every width: a mode of the backward pass that grows faster than the
    # isotropic part and starts at a 1/width share, so a wider net only takes more blocks
    # to show it (about log(width) of them).
    independent = theory.residual_backward_factors(256, reuse_forward_weights=False)
    assert independent.mean() == pytest.approx(2.0, abs=0.05)
    narrow = theory.residual_backward_factors(128, reuse_forward_weights=True)
    wide = theory.residual_backward_factors(1024, reuse_forward_weights=True)
    far = slice(40, 64)  # blocks 40-63 from the output
    assert narrow[far].mean() > 2.6 and wide[far].mean() > 2.6
    assert abs(narrow[far].mean() - wide[far].mean()) < 0.15
    near = slice(4, 12)  # the wider net is still close to mean field here
    assert wide[near].mean() < narrow[near].mean() - 0.15
