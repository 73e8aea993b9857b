"""The Jacobian probe (study.engine.jacobian) and its free-probability prediction
(study.analysis.isometry): the spectrum is the module's own Jacobian's, the estimate is
unbiased and exact with W directions, plain nets at small sizes match the theory, and the
statistics reach run.json, MLflow's metrics and runs.parquet."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from study import records
from study.analysis import checks, collect, isometry, meanfield
from study.config import (
    JACOBIAN_STATS,
    Activation,
    Init,
    ModelConfig,
    Norm,
    ProbeConfig,
    Skip,
    as_dict,
)
from study.engine import jacobian, nets
from study.engine.stack import Stack

from .conftest import compose_config

pytestmark = pytest.mark.numeric  # run again under other CPU capabilities: make test

FEATURES = 7


@pytest.fixture(autouse=True)
def one_thread():
    # As a cell runs (train.threads = 1): LAPACK's threads on a busy machine make a 128 x 128
    # orthogonal init take 0.3 s instead of 1 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stack_of(cfg: ModelConfig, seeds=(0, 1)) -> Stack:
    return Stack([nets.initial_state(FEATURES, 3, cfg, s) for s in seeds], cfg, torch.device("cpu"))


def module_jacobian(cfg: ModelConfig, seed: int, h0: torch.Tensor) -> torch.Tensor:
    """dh_L/dh_0 of the nets.MLP module's own layers, by autograd, in float64: (W_L, W)."""
    model = nets.build(FEATURES, 3, cfg, seed).double().eval()

    def hidden(h: torch.Tensor) -> torch.Tensor:
        for layer in model.layers:
            h = layer(h)
        return h

    return torch.autograd.functional.jacobian(hidden, h0[None])[0, :, 0]


SHAPES = [
    (Activation.tanh, Norm.none, Skip.none),
    (Activation.prelu, Norm.layer, Skip.residual),
    (Activation.gelu, Norm.none, Skip.highway),
    (Activation.elu, Norm.layer, Skip.dense),
]


@pytest.mark.parametrize(("activation", "norm", "skip"), SHAPES, ids=str)
def test_singular_values_are_those_of_the_modules_jacobian(activation, norm, skip):
    cfg = ModelConfig(depth=3, width=12, activation=activation, norm=norm, skip=skip)
    cfg.dense.growth, cfg.residual.scale = 5, 0.7
    stack = stack_of(cfg)
    h0 = torch.randn(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = jacobian.singular_values(stack, h0)
    for g in range(2):
        want = torch.linalg.svdvals(module_jacobian(cfg, g, h0[g]))
        torch.testing.assert_close(got[g], want, rtol=1e-9, atol=1e-12)


def test_statistics_of_known_singular_values():
    eig = np.array([4.0, 1.0, 1.0, 0.25])
    stats = jacobian.exact_statistics(torch.tensor(np.sqrt(eig)))
    assert stats["jacobian_eig_mean"] == pytest.approx(eig.mean())
    assert stats["jacobian_eig_var"] == pytest.approx(eig.var())
    assert stats["jacobian_log10_cond"] == pytest.approx(math.log10(4.0))
    assert stats["jacobian_singular"] is False
    zero = jacobian.exact_statistics(torch.tensor([1.0, 1.0, 1e-17], dtype=torch.float64))
    assert zero["jacobian_log10_cond"] == math.inf and zero["jacobian_singular"] is True


def test_the_estimate_is_exact_with_as_many_directions_as_units_and_unbiased_with_fewer():
    cfg = ModelConfig(depth=4, width=24, activation=Activation.tanh, init=Init.xavier_normal)
    stack = stack_of(cfg, seeds=(3, 4))
    h0 = torch.randn(2, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = [jacobian.exact_statistics(s) for s in jacobian.singular_values(stack, h0)]
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        full = jacobian.estimated_statistics(stack, h0, 24, gens)
        few = [jacobian.estimated_statistics(stack, h0, 4, gens) for _ in range(400)]
    for g in range(2):
        assert math.isnan(full[g]["jacobian_log10_cond"]) and full[g]["jacobian_singular"] is None
        for key in ("jacobian_eig_mean", "jacobian_eig_var"):
            assert full[g][key] == pytest.approx(exact[g][key], rel=1e-10)
            draws = np.array([f[g][key] for f in few])
            assert (draws >= 0).all()
            # Unbiased: 400 draws of 4 directions average to the exact value (the variance
            # is a difference of two unbiased estimates: close, not unbiased itself).
            sem = draws.std() / math.sqrt(len(draws))
            bound = 4 * sem if key == "jacobian_eig_mean" else 0.05 * exact[g][key]
            assert abs(draws.mean() - exact[g][key]) < bound, (key, draws.mean(), exact[g][key])


def test_measure_averages_examples_and_switches_to_the_estimate_above_the_exact_width():
    cfg = ModelConfig(depth=3, width=16, activation=Activation.tanh, init=Init.gaussian)
    cfg.sigma_w2, cfg.sigma_b2 = 1.2, 0.1  # a stem with biases
    stack = stack_of(cfg)
    x = torch.randn(2, 8, FEATURES, generator=torch.Generator().manual_seed(2))
    probe = ProbeConfig(jacobian=True, jacobian_examples=3)
    got = jacobian.measure(stack, x, probe, seeds=[0, 1])
    with torch.no_grad():  # h_0: the module's own stem, on the first 3 examples
        h0 = torch.stack([nets.build(FEATURES, 3, cfg, g).stem(x[g, :3]) for g in (0, 1)])
        s = torch.stack([jacobian.singular_values(stack, h0[:, k].double()) for k in range(3)])
    eig = s.square()
    assert got["jacobian_eig_mean"] == pytest.approx(eig.mean(dim=-1).mean(dim=0).tolist())
    assert got["jacobian_eig_var"] == pytest.approx(eig.var(-1, correction=0).mean(0).tolist())
    cond = torch.log10(s.amax(-1) / s.amin(-1)).mean(dim=0)
    assert got["jacobian_log10_cond"] == pytest.approx(cond.tolist())
    assert got["jacobian_singular"] == [False, False]
    probe.jacobian_exact_width, probe.jacobian_vectors = 15, 16  # 16 of 16 units: exact
    estimated = jacobian.measure(stack, x, probe, seeds=[0, 1])
    assert estimated["jacobian_eig_var"] == pytest.approx(got["jacobian_eig_var"], rel=1e-9)
    assert np.isnan(estimated["jacobian_log10_cond"]).all()
    assert estimated["jacobian_singular"] == [None, None]


def test_relu_jacobians_are_singular_and_batch_norm_has_none():
    x = torch.randn(2, 4, FEATURES, generator=torch.Generator().manual_seed(3))
    relu = jacobian.measure(stack_of(ModelConfig(depth=3, width=16)), x, ProbeConfig(), [0, 1])
    assert relu["jacobian_singular"] == [True, True]  # a dead unit of h_L: a zero row of J
    assert relu["jacobian_log10_cond"] == [math.inf, math.inf]
    # One example of three saturates every tanh unit (phi' = 0 in float64): that one is enough.
    tanh = stack_of(ModelConfig(depth=3, width=16, activation=Activation.tanh))
    x[:, 0] *= 1e4
    one = jacobian.measure(tanh, x, ProbeConfig(jacobian_examples=3), [0, 1])
    assert one["jacobian_singular"] == [True, True] and one["jacobian_log10_cond"][0] == math.inf
    rest = jacobian.measure(tanh, x[:, 1:], ProbeConfig(jacobian_examples=2), [0, 1])
    assert rest["jacobian_singular"] == [False, False]
    bn = ModelConfig(depth=3, width=16, norm=Norm.batch)
    got = jacobian.measure(stack_of(bn), x, ProbeConfig(), [0, 1])
    assert np.isnan(got["jacobian_eig_mean"]).all() and got["jacobian_singular"] == [None, None]


# ------------------------------------------------------------------------- the theory


def test_the_spectrum_formulas_in_closed_form():
    for depth in (1, 3, 8):
        # ReLU with He weights: chi = 1, mu_2 / mu_1^2 = 2, so 2L (Gaussian) or L (orthogonal).
        gaussian = isometry.spectrum("relu", 2.0, 0.0, depth, 1.0, orthogonal=False)
        assert gaussian == pytest.approx((1, 2 * depth))
        orthogonal = isometry.spectrum("relu", 2.0, 0.0, depth, 1.0, orthogonal=True)
        assert orthogonal == pytest.approx((1, depth))
        # A linear net: the mean is sigma_w^(2L), the relative variance L (Marchenko-Pastur).
        mean, var = isometry.spectrum("linear", 1.3, 0.0, depth, 0.7, orthogonal=False)
        assert (mean, var) == pytest.approx((1.3**depth, depth * 1.3 ** (2 * depth)))
        _, var = isometry.spectrum("linear", 1.3, 0.0, depth, 0.7, orthogonal=True)
        assert var == pytest.approx(0, abs=1e-9)


def test_critical_tanh_reference_point_and_its_prediction_by_gauss_hermite():
    # The issue's critical tanh: q* = 1/64 with sigma_w^2 = 1.0306 needs sigma_b^2 = 4.0e-6.
    sigma_w2, sigma_b2 = 1.0306, 4.0073e-6
    assert meanfield.fixed_point("tanh", sigma_w2, sigma_b2) == pytest.approx(1 / 64, rel=1e-4)
    assert meanfield.chi("tanh", 1 / 64, sigma_w2) == pytest.approx(1.0, abs=1e-4)
    z, w = np.polynomial.hermite_e.hermegauss(80)  # an independent quadrature
    d2 = 1.0 / np.cosh(z / 8.0) ** 4  # tanh'(sqrt(q*) z)^2
    mu1, mu2 = (w * d2).sum() / w.sum(), (w * d2**2).sum() / w.sum()
    mean, var = isometry.spectrum("tanh", sigma_w2, sigma_b2, 32, 1 / 64, True)
    assert mean == pytest.approx((sigma_w2 * mu1) ** 32, rel=1e-6)
    assert var / mean**2 == pytest.approx(32 * (mu2 / mu1**2 - 1), rel=1e-6)
    assert var == pytest.approx(0.054, abs=5e-4)


def test_predict_reads_the_cells_variances_and_gives_nan_outside_plain_nets():
    cfg = ModelConfig(depth=5, width=64, activation=Activation.tanh, init=Init.gaussian)
    cfg.sigma_w2, cfg.sigma_b2 = 1.5, 0.05
    q1 = 1.5 * (1.5 * 2.0 + 0.05) + 0.05  # stem: sigma_w^2 * E[x^2] + sigma_b^2, then block 1
    want = isometry.spectrum("tanh", 1.5, 0.05, 5, q1, orthogonal=False)
    assert isometry.predict(cfg, FEATURES, input_second_moment=2.0) == pytest.approx(want)
    for changed in ({"norm": Norm.layer}, {"skip": Skip.residual}):
        other = ModelConfig(**{**cfg.__dict__, **changed})
        assert np.isnan(isometry.predict(other, FEATURES)).all()


def test_the_prediction_is_averaged_over_the_inputs_second_moments(tmp_path):
    """The probe averages over examples whose |x|^2 / n differ: a saturating net's
    prediction is the average of theirs (not the prediction at their mean), ReLU's is not
    moved by them (positively homogeneous)."""
    rows = np.array([[1.0, 1.0], [3.0, 3.0], [0.0, 2.0], [2.0, 2.0]])  # moments 1, 9, 2, 4
    np.savez(tmp_path / "toy.npz", x_train=rows)
    levels = (np.arange(isometry.QUANTILES) + 0.5) / isometry.QUANTILES
    want = np.quantile([1.0, 9.0, 2.0, 4.0], levels)
    assert isometry.second_moments(tmp_path / "toy.npz") == pytest.approx(want)
    tanh = ModelConfig(depth=8, width=64, activation=Activation.tanh, init=Init.gaussian,
                       sigma_w2=1.5, sigma_b2=0.05)  # fmt: skip
    moments = np.array([0.5, 1.5])
    each = [isometry.predict(tanh, FEATURES, input_second_moment=m) for m in moments]
    assert isometry.predict_over(tanh, FEATURES, moments) == pytest.approx(np.mean(each, axis=0))
    assert isometry.predict_over(tanh, FEATURES, moments)[0] != pytest.approx(
        isometry.predict(tanh, FEATURES)[0], rel=1e-3
    )  # fmt: skip
    assert isometry.predict_over(tanh, FEATURES, None) == isometry.predict(tanh, FEATURES)
    relu = ModelConfig(depth=8, width=64, activation=Activation.relu, init=Init.gaussian,
                       sigma_w2=2.0, sigma_b2=0.0)  # fmt: skip
    assert isometry.predict_over(relu, FEATURES, moments) == pytest.approx(
        isometry.predict(relu, FEATURES)
    )  # fmt: skip


# Plain nets at width 128, 8 nets of 2 examples each: the measured mean and variance of
# the eigenvalues against the prediction (finite width adds ~L/W to the relative variance).
PLAIN = [
    (Activation.relu, Init.kaiming_normal, None, 4),  # 2L = 8
    (Activation.relu, Init.scaled_orthogonal, (2.0, 0.0), 4),  # L = 4
    (Activation.tanh, Init.gaussian, (1.5, 0.05), 6),  # along q_l, off the fixed point
    (Activation.tanh, Init.scaled_orthogonal, (1.0306, 4.0073e-6), 8),  # critical, from q*
]


@pytest.mark.parametrize(("activation", "init", "variances", "depth"), PLAIN, ids=str)
def test_plain_nets_at_small_width_match_the_free_probability_prediction(
    activation, init, variances, depth
):
    cfg = ModelConfig(depth=depth, width=128, activation=activation, init=init)
    if variances:
        cfg.sigma_w2, cfg.sigma_b2 = variances
    seeds = list(range(8))
    stack = stack_of(cfg, seeds)
    # Inputs of one squared norm, 7 m2: the critical net's first block then reads q* = 1/64
    # (an orthogonal stem keeps the norm), the others m2 = 1.
    m2 = 1.0
    if variances == (1.0306, 4.0073e-6):
        stem = nets.sigma_w2(init, activation, FEATURES, 128, variances[0])
        m2 = ((1 / 64 - variances[1]) / variances[0] - variances[1]) / stem
    x = torch.randn(8, 2, FEATURES, generator=torch.Generator().manual_seed(4))
    x = x / x.norm(dim=-1, keepdim=True) * math.sqrt(FEATURES * m2)
    got = jacobian.measure(stack, x, ProbeConfig(jacobian_examples=2), seeds)
    mean, var = isometry.predict(cfg, FEATURES, input_second_moment=m2)
    assert np.mean(got["jacobian_eig_mean"]) == pytest.approx(mean, rel=0.1)
    assert np.mean(got["jacobian_eig_var"]) == pytest.approx(var, rel=0.2)


# ---------------------------------------------------------------- into the records


def test_the_statistics_reach_run_json_mlflow_and_runs_parquet(tmp_path, prepared):
    from study.data import load
    from study.runs.cell import Cell, execute_group
    from study.tracking import cell_runs

    done = []
    for activation in ("tanh", "relu"):  # a finite condition number, then an infinite one
        cfg = compose_config(
            "data=digits", f"data.dir={prepared}", "model.depth=3", "model.width=16",
            f"model.activation={activation}", "train.steps=0", "probe.jacobian=true",
            f"run_name={activation}",
        )  # fmt: skip
        splits = load(cfg.data)
        resolved = as_dict(cfg)
        key = records.cell_key(resolved, splits.sha256)
        done += execute_group([Cell(cfg, resolved, key, tmp_path / activation)], splits)
    tanh, relu = (records.read_run(d.out_dir) for d in done)
    summary = tanh["summary"]
    assert set(JACOBIAN_STATS) <= set(summary) and summary["jacobian_singular"] is False
    assert summary["jacobian_eig_mean"] > 0 and summary["jacobian_log10_cond"] > 0
    assert relu["summary"]["jacobian_log10_cond"] is None  # +inf: null in JSON
    assert relu["summary"]["jacobian_singular"] is True
    logged = {m.key for m in cell_runs.metrics(tanh, done[0].layers, [])}
    assert {"jacobian_eig_mean", "jacobian_eig_var", "jacobian_log10_cond"} <= logged

    rows = []
    for record in (tanh, relu):
        listed = {"run_name": record["run_name"], "cell_key": record["cell_key"]}
        assert checks.record_problem(record, listed) is None
        rows.append(collect.run_row(record, "theory", "quick", record["run_name"]))
    runs = collect.typed(pd.DataFrame(rows), collect.RUN_COLUMNS)
    assert runs["jacobian_eig_mean"].iloc[0] == summary["jacobian_eig_mean"]
    assert runs["jacobian_log10_cond"].iloc[1] == math.inf  # restored from the flag
    assert runs["jacobian_singular"].tolist() == [False, True]
    tanh["summary"]["jacobian_eig_var"] = "large"
    problem = checks.record_problem(tanh, {"run_name": "tanh", "cell_key": tanh["cell_key"]})
    assert "summary.jacobian_eig_var" in problem


# ------------------------------------------------------- the issue's reference table

# (net, depth, the issue's simulated variance of the eigenvalues of J J^T at width 400)
REFERENCE = [
    ("linear Gaussian", 1, 1.00), ("linear Gaussian", 2, 2.01), ("linear Gaussian", 8, 8.1),
    ("linear Gaussian", 32, 34.7), ("ReLU He Gaussian", 8, 15.3), ("ReLU He Gaussian", 32, 74),
    ("ReLU He orthogonal", 8, 8.6), ("ReLU He orthogonal", 32, 25),
    ("tanh critical orthogonal", 32, 0.056),
]  # fmt: skip
CRITICAL_TANH = (1.0306, 4.0073e-6)  # sigma_w^2, sigma_b^2: q* = 1/64, chi(q*) = 1


def reference_row(net: str, depth: int, width: int, seeds: range) -> dict[str, float]:
    """The variance of the eigenvalues of J J^T and the same over the squared mean, measured
    (averaged over one example of each seed's net) and predicted. The engine has no linear
    activation: a linear net's J is the product of its weights, drawn here."""
    if net == "linear Gaussian":
        stats = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            j = torch.eye(width, dtype=torch.float64)
            for _ in range(depth):
                j = torch.randn(width, width, generator=gen, dtype=torch.float64) @ j
            stats.append(jacobian.exact_statistics(torch.linalg.svdvals(j / width ** (depth / 2))))
        mean, var = isometry.spectrum("linear", 1.0, 0.0, depth, 1.0, orthogonal=False)
    else:
        activation = Activation.tanh if net.startswith("tanh") else Activation.relu
        cfg = ModelConfig(depth=depth, width=width, activation=activation)
        if net.endswith("orthogonal"):
            cfg.init = Init.scaled_orthogonal
            tanh = activation is Activation.tanh
            cfg.sigma_w2, cfg.sigma_b2 = CRITICAL_TANH if tanh else (2.0, 0.0)
        sigma_w2 = nets.sigma_w2(cfg.init, activation, width, width, cfg.sigma_w2)
        sigma_b2 = nets.sigma_b2(cfg.init, width, cfg.sigma_b2)
        # h_0 Gaussian of the variance that puts block 1 at q_1 = q* = 1/64 (ReLU: any).
        v0 = (1 / 64 - sigma_b2) / sigma_w2
        stats = []
        for chunk in (seeds[i : i + 4] for i in range(0, len(seeds), 4)):
            gen = torch.Generator().manual_seed(chunk[0])
            h0 = torch.randn(len(chunk), width, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                s = jacobian.singular_values(stack_of(cfg, chunk), h0 * math.sqrt(v0))
            stats += [jacobian.exact_statistics(row) for row in s]
        orthogonal = cfg.init in isometry.ORTHOGONAL
        mean, var = isometry.spectrum(activation, sigma_w2, sigma_b2, depth, 1 / 64, orthogonal)
    return {
        "var": float(np.mean([st["jacobian_eig_var"] for st in stats])),
        "relative": float(
            np.mean([st["jacobian_eig_var"] / st["jacobian_eig_mean"] ** 2 for st in stats])
        ),  # fmt: skip
        "theory_var": var,
        "theory_relative": var / mean**2,
    }


@pytest.mark.slow
def test_the_issues_reference_table_at_width_400(capsys):
    """Each net's variance over its squared mean eigenvalue matches the theory within 10%.
    The variance itself, averaged over nets, also carries the spread of the nets' means
    (E[m^2] > 1 where E[m] = 1): it is printed beside the issue's numbers. 12 nets a row:
    every row's v/m^2 is then within 6% of theory (at 32 nets too, in 2.7 times the time)."""
    head = f"{'net':<26}{'L':>4}{'issue':>8}{'var':>8}{'theory':>8}{'var/m^2':>9}{'theory':>8}"
    lines, bad = [head], []
    for net, depth, issue in REFERENCE:
        row = reference_row(net, depth, 400, range(12))
        lines.append(f"{net:<26}{depth:>4}{issue:>8.3g}{row['var']:>8.3g}"
                     f"{row['theory_var']:>8.3g}{row['relative']:>9.3g}"
                     f"{row['theory_relative']:>8.3g}")  # fmt: skip
        if abs(row["relative"] / row["theory_relative"] - 1) > 0.1:
            bad.append(lines[-1])
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not bad, bad
