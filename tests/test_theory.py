"""Mean-field theory: closed forms, quadrature against Monte Carlo, and every correction
pinned against a measurement on the project's own networks and probes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from study.analysis import analyze, meanfield, phase, residual, theory
from study.config import ModelConfig
from study.engine import nets
from study.engine.probes import profile_summary
from study.records import summary_column

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
    assert phase.xi_c("relu", sigma_w2=2.0) == math.inf
    ordered = phase.xi_c("sigmoid", sigma_w2=1.0)
    chi_star = meanfield.chi("sigmoid", meanfield.fixed_point("sigmoid", 1.0), 1.0)
    assert ordered == pytest.approx(-1 / math.log(chi_star), rel=1e-12)
    assert 0 < phase.xi_c("tanh", sigma_w2=2.0) < math.inf  # chaotic phase


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


def test_relu_residual_block_adds_the_scaled_branch_rate_at_infinite_width():
    # 1 + s^2 chi_branch with chi_branch = sigma_w^2 / 2 = 1 for ReLU + He at any variance,
    # and E[phi'^2] = 1/2 at every layer, so its ratio between layers is 1.
    for scale in (1.0, 0.5):
        factors = theory.residual_factors("relu", 1.0, sigma_w2=2.0, depth=10, width=math.inf,
                                          scale=scale)  # fmt: skip
        assert factors[:-1] == pytest.approx(np.full(9, 1 + scale**2), abs=1e-12)


def test_scaled_branches_grow_by_one_plus_s_squared_chi(mnist1d):
    # sqrt_depth: s = scale / sqrt(L), so scale 1 at depth 16 is constant scale 0.25; at
    # infinite width ReLU + He grows by 1 + s^2 per block: rate 0.5 log10(1 + 1/16) = 0.0132;
    # at width 128 the drifting stream's mode and the head lift it to 0.0180.
    def rate(width=128, **residual):
        return theory.predict("relu", "kaiming_normal", "none", "residual", 16, width,
                              mnist1d.num_features, **residual).log10_rate  # fmt: skip

    assert rate(residual_scaling="sqrt_depth") == pytest.approx(rate(residual_scale=0.25),
                                                                rel=1e-12)  # fmt: skip
    factors = theory.residual_factors("relu", 1.0, sigma_w2=2.0, depth=16, width=math.inf,
                                      scale=0.25)  # fmt: skip
    assert factors[:-1] == pytest.approx(np.full(15, 1 + 1 / 16), abs=1e-12)
    wide = rate(width=10**9, residual_scaling="sqrt_depth")
    assert wide == pytest.approx(0.5 * math.log10(17 / 16), abs=1e-6)
    assert rate(residual_scaling="sqrt_depth") == pytest.approx(0.0180, abs=1e-4)
    # ReZero: s = 0 at init, every block the identity: growth 1, rate 0, whatever the scale.
    p = theory.predict("relu", "kaiming_normal", "none", "residual", 16, 128, mnist1d.num_features,
                       residual_scale=3.0, residual_scaling="rezero")  # fmt: skip
    assert p.log10_rate == 0.0 and p.chi == 1.0


def test_explicit_variances_reach_the_prediction(mnist1d):
    # init gaussian with model.sigma_w2 = 1.3, model.sigma_b2 = 0.05: tanh in its ordered
    # phase, a finite xi_c (7.83); the same net without the variances is refused.
    p = theory.predict("tanh", "gaussian", "none", "none", 16, 128, mnist1d.num_features,
                       sigma_w2=1.3, sigma_b2=0.05)  # fmt: skip
    assert p.sigma_w2 == 1.3 and p.depth_scale == pytest.approx(phase.xi_c("tanh", 1.3, 0.05))
    assert p.depth_scale == pytest.approx(7.83, abs=0.01)
    with pytest.raises(ValueError, match="model.sigma_w2"):
        theory.predict("tanh", "gaussian", "none", "none", 16, 128, mnist1d.num_features)


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


def test_relu_stream_drifts_along_the_all_ones_direction():
    # ReLU + He, s = 1: with a = E[relu(z)] = sqrt(v / pi), the stream's mean and second
    # moment obey m' = m + sqrt(v / pi) and v' = v + 2 m sqrt(v / pi) + v, so m / sqrt(v)
    # settles at rho* = 0.801 and v grows by 1 + 1 + 2 rho* / sqrt(pi) = 2.904 per block:
    # the measured far-from-output growth. Without the cross term 2 m a it would be 2.
    m, v, _ = residual.stream("relu", 1.0, 2.0, depth=200)
    assert m[-1] / math.sqrt(v[-1]) == pytest.approx(0.8012, abs=1e-4)
    assert v[-1] / v[-2] == pytest.approx(2.9041, abs=1e-4)
    assert v[-1] / v[-2] == pytest.approx(2 + 2 * 0.8012 / math.sqrt(math.pi), abs=1e-4)
    # tanh is odd: no drift, and the stream is mean field's v' = v + E[tanh^2].
    m, v, _ = residual.stream("tanh", 0.4, 1.0, depth=5)
    assert np.abs(m).max() < 1e-15
    assert v[1] == pytest.approx(0.4 + meanfield.q_map("tanh", 0.4, 1.0), rel=1e-12)


def test_residual_relu_excess_is_the_drifting_stream():
    # The simulation reuses the forward weights backward (the real net); the model carries
    # the stream's mean (residual.stream_gradient_profile). Far from the output (blocks
    # 40-63) both grow by ~2.89 per block at widths 128 and 512 (simulated 2.82, 2.90),
    # near it (blocks 4-11) the wider net is closer to mean field's 2 in both (2.25 and 2.10
    # simulated, 2.28 and 2.10 modelled). Subtracting the branch's per-example mean over
    # units removes the drift, and the excess with it: ~2.0 everywhere.
    far, near = slice(40, 64), slice(4, 12)
    for width in (128, 512):
        simulated = theory.residual_backward_factors(width)
        g = residual.stream_gradient_profile("relu", 1.0, 2.0, depth=64, width=width)
        modelled = (g[:-1] / g[1:])[::-1]  # index 0 nearest the output, as simulated
        assert modelled[far].mean() == pytest.approx(2.89, abs=0.01)
        assert simulated[far].mean() == pytest.approx(modelled[far].mean(), abs=0.1)
        assert simulated[near].mean() == pytest.approx(modelled[near].mean(), abs=0.05)
        centred = theory.residual_backward_factors(width, centre_branch=True)
        assert centred[far].mean() == pytest.approx(2.0, abs=0.06)
        assert centred[near].mean() == pytest.approx(2.0, abs=0.06)
    independent = theory.residual_backward_factors(256, reuse_forward_weights=False)
    assert independent.mean() == pytest.approx(2.0, abs=0.05)


def test_head_overlaps_match_a_sampled_head():
    # E[g g'] of g = W' (softmax(W x + b) - e_y) on the all-ones direction e1 and on the
    # stream's own e2, sampled over 4,000 random heads, against the D of the module doc.
    n, m, v, classes = 128, 3.0, 12.0, 10
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    x = m + (x - x.mean()) * math.sqrt(v - m * m) / x.std()  # per-unit mean m, moment v
    e1 = np.full(n, 1 / math.sqrt(n))
    e2 = (x - m) / np.linalg.norm(x - m)
    moments = np.zeros(4)
    for _ in range(4000):
        w = rng.standard_normal((classes, n)) * math.sqrt(2.0 / n)
        r = np.exp(w @ x - (w @ x).max())
        r /= r.sum()
        r[rng.integers(classes)] -= 1
        g = w.T @ r
        moments += [(g @ e1) ** 2, (g @ e1) * (g @ e2), (g @ e2) ** 2, g @ g / n]
    sampled = (moments[0] / moments[3] - 1, moments[1] / moments[3], moments[2] / moments[3] - 1)
    d = residual.head_overlaps(residual.Head(2.0, 0.0, classes), m, v)
    assert d == pytest.approx(sampled, abs=0.1)
    assert d[0] > 0.3 and d[1] > 0.3  # it leans on both, well beyond the sampling error


@pytest.mark.parametrize(("scale", "measured_here"), [(0.25, 0.049), (1.0, 0.222)])
def test_residual_relu_rate_at_depth_64_follows_the_drifting_stream(mnist1d, scale, measured_here):
    # The theory sweep's worst case: s = 0.25, depth 64 measures 0.049 decades/layer where
    # mean field says 0.013 (2 seeds x 8 batches here: 0.049; s = 1: 0.222 against 0.151).
    model = dict(activation="relu", init="kaiming_normal", skip="residual", depth=64,
                 width=128, scale=scale)  # fmt: skip
    measured = measured_rate(mnist1d, 128, 4, **model)
    assert measured == pytest.approx(measured_here, abs=0.004)
    assert predicted(mnist1d, **model) == pytest.approx(measured, abs=0.008)
    stem = theory.stem_variance("kaiming_normal", "relu", mnist1d.num_features, 128, 1.0)
    factors = theory.residual_factors("relu", stem, 2.0, 64, width=math.inf, scale=scale)
    assert measured - theory._fitted_rate(factors, 64) > 0.03  # mean field misses by 0.036+


# ------------------------------------------------- agreement judged on the rate itself


def test_a_flat_prediction_does_not_pass_a_measured_slope():
    # 0.03 decades/layer is 1.9 decades over 64 layers: the old 10% on the ratio passed it.
    flat = analyze.rate_agreement(0.03, 0.0)
    assert flat["agrees"] is False and flat["criterion"] == "absolute"
    assert flat["agrees_ratio"] is True and flat["ratio_vs_theory"] == pytest.approx(1.0715, 1e-4)
    assert flat["rate_gap"] == pytest.approx(0.03) and flat["rate_tolerance"] == analyze.RATE_ABS
    # The theory sweep's residual ReLU at s = 0.25, depth 64, under mean field: 0.049 vs 0.013.
    assert analyze.rate_agreement(0.049, 0.013)["agrees"] is False
    assert analyze.rate_agreement(0.049, 0.013)["agrees_ratio"] is True
    assert analyze.rate_agreement(0.008, 0.0)["agrees"] is True


def test_a_steep_rate_is_judged_relative_to_itself():
    steep = analyze.rate_agreement(-0.52, -0.5)
    assert steep["agrees"] is True and steep["criterion"] == "relative"
    assert steep["rate_tolerance"] == pytest.approx(analyze.RATE_REL * 0.5)
    assert analyze.rate_agreement(-0.56, -0.5)["agrees"] is False  # 12% off
    assert analyze.rate_agreement(-0.56, -0.5)["agrees_ratio"] is False


def test_no_prediction_is_no_verdict():
    none = analyze.rate_agreement(0.1, None)
    assert none["agrees"] is pd.NA and none["criterion"] is None and np.isnan(none["rate_gap"])
    assert analyze.rate_agreement(float("nan"), 0.1)["agrees"] is pd.NA


def test_decay_rates_reports_both_measures(mnist1d):
    # Two cells of three seeds, measured flat (0.03 +- 0.001) beside a flat prediction
    # (ReLU + He), and a tanh + Xavier net at its own prediction.
    rows = []
    tanh = theory.predict("tanh", "xavier_normal", "none", "none", 16, 128,
                          mnist1d.num_features).log10_rate  # fmt: skip
    for cell, activation, init, rate in (("a", "relu", "kaiming_normal", 0.03),
                                         ("b", "tanh", "xavier_normal", tanh)):  # fmt: skip
        for seed, noise in enumerate((-0.001, 0.0, 0.001)):
            rows.append({"sweep": "init", "cell_id": cell, "status": "finished", "seed": seed,
                         "activation": activation, "init": init, "norm": "none",
                         "skip": "none", "depth": 16, "width": 128, "dataset": "mnist1d",
                         "input_scale": 1.0, "residual_scale": 1.0, "probe_batch_size": 128,
                         summary_column("signal", "log10_rate", "init"): rate + noise,
                         summary_column("weight", "log10_rate", "init"): rate,
                         summary_column("signal", "log10_first_last", "init"): 15 * rate,
                         summary_column("signal", "first_last_censored", "init"): False,
                         })  # fmt: skip
    table = analyze.decay_rates(pd.DataFrame(rows), {"mnist1d": mnist1d.num_features})
    a, b = table.set_index("cell_id").loc["a"], table.set_index("cell_id").loc["b"]
    assert a["theory_rate"] == pytest.approx(0.0, abs=1e-12)
    assert a["rate_gap"] == pytest.approx(0.03) and a["criterion"] == "absolute"
    assert not a["agrees"] and a["agrees_ratio"]
    assert b["agrees"] and b["agrees_ratio"] and b["rate_gap"] == pytest.approx(0.0, abs=1e-12)
    assert table["agrees"].dtype == "boolean" and table["agrees_ratio"].dtype == "boolean"


def test_agreement_counts_read_both_measures():
    rates = pd.DataFrame(
        {"agrees": [True, False, False, pd.NA], "agrees_ratio": [True, True, False, pd.NA]}
    ).astype("boolean")
    assert analyze.agreement_counts(rates) == {"cells": 3, "agree_rate": 1, "agree_ratio": 2}


def test_trainable_depth_gives_each_explicit_variance_its_own_finite_xi_c():
    # Two tanh configurations at sigma_b^2 = 0.05 on both sides of the edge (1.76): each its
    # own row, with 6 xi_c from its own variances; finite on both sides.
    rows = []
    for sigma_w2 in (1.3, 2.5):
        for depth in (4, 8):
            for seed in range(2):
                rows.append({"sweep": "train", "activation": "tanh", "init": "gaussian",
                             "norm": "none", "skip": "none", "depth": depth, "width": 64,
                             "dataset": "digits", "seed": seed, "lr": 0.01,
                             "status": "finished", "test_accuracy": 0.9, "val_accuracy": 0.9,
                             "sigma_w2": sigma_w2, "sigma_b2": 0.05})  # fmt: skip
    table = analyze.trainable_depth(pd.DataFrame(rows), {"digits": 64})
    assert list(table["sigma_w2"]) == [1.3, 2.5]
    expected = [6 * phase.xi_c("tanh", w, 0.05) for w in (1.3, 2.5)]
    assert list(table["six_xi_c"]) == pytest.approx(expected)
    assert np.isfinite(table["six_xi_c"]).all() and table["fails_at"].isna().all()
