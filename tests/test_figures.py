"""The figures stage on tiny synthetic tables: one colour per factor level, every figure
written (PDF and PNG) even where the profile has no data for it, the claims forest with
rows that were not tested, and one line on stderr for missing input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from study.analysis.verdicts import VERDICTS
from study.config import Activation, Curriculum, Init, Norm, Skip
from study.report import figures, style
from study.report import figures_claims as fc

ENUMS = {"activation": Activation, "init": Init, "norm": Norm, "skip": Skip,
         "curriculum": Curriculum, "verdict": VERDICTS}  # fmt: skip


@pytest.mark.parametrize("factor", list(ENUMS))
def test_every_level_has_exactly_one_colour_of_its_own(factor):
    colors = style.COLORS[factor]
    assert set(colors) == {str(level) for level in ENUMS[factor]}  # no level missing or extra
    assert len(set(colors.values())) == len(colors)  # no two levels share a colour


def test_a_level_without_a_colour_fails_loudly():
    with pytest.raises(ValueError, match="swish"):
        style._check([*Activation, "swish"], style.ACTIVATION_COLORS, "activation colours")


# ------------------------------------------------------------------- synthetic inputs


def layer_rows(sweep, depth, act, init, norm, skip, seed, steps, scale):
    """Per-layer rows of one run whose gradient shrinks by ``scale`` per layer."""
    for step, layer in itertools.product(steps, range(1, depth + 1)):
        grad = scale ** (depth - layer) * (1 + 0.1 * seed)
        yield {"sweep": sweep, "depth": depth, "activation": act, "init": init, "norm": norm,
               "skip": skip, "run_name": f"{sweep}-d{depth}-{act}-{init}-{norm}-{skip}-s{seed}",
               "lr": 0.01, "status": "finished", "step": step, "layer": layer,
               "signal_grad_norm": grad, "weight_grad_norm": 2 * grad,
               "dead_fraction": 0.1 * layer / depth if act == "relu" else np.nan,
               "saturated_fraction": 0.2 if act == "tanh" else np.nan}  # fmt: skip


def tiny_inputs() -> figures.Inputs:
    """A quick-profile-like study: two activations, depths {4, 8}, no layer norm, no batch
    norm in training, so several figures have panels (or all) without data."""
    matched = {"tanh": "xavier_normal", "relu": "kaiming_normal"}
    layers, runs = [], []
    for act, norm, seed in itertools.product(("tanh", "relu"), ("none", "batch"), (0, 1)):
        layers += layer_rows("init", 8, act, matched[act], norm, "none", seed, (0,), 0.8)
    for act, skip, depth, seed in itertools.product(("tanh", "relu"), ("none", "residual"),
                                                    (4, 8), (0, 1)):  # fmt: skip
        diverged = act == "relu" and skip == "residual" and depth == 8 and seed == 1
        runs.append({"sweep": "train", "depth": depth, "activation": act,
                     "init": "kaiming_normal", "norm": "none", "skip": skip, "seed": seed,
                     "lr": 0.01, "run_name": f"train-d{depth}-{act}-{skip}-s{seed}",
                     "status": "diverged" if diverged else "finished",
                     "test_accuracy": np.nan if diverged else 0.9 - 0.01 * depth})  # fmt: skip
        layers += layer_rows("train", depth, act, "kaiming_normal", "none", skip, seed,
                             (0, 1, 30), 0.9)  # fmt: skip
    decay = pd.DataFrame([
        {"sweep": "init", "cell_id": f"c{k}", "depth": 8, "activation": act, "init": init,
         "norm": norm, "skip": skip, "signal_rate": rate, "signal_rate_low": rate - 0.01,
         "signal_rate_high": rate + 0.01, "theory_rate": theory,
         "theory_rate_finite_batch": np.nan, "agrees": agrees}
        for k, (act, init, norm, skip, rate, theory, agrees) in enumerate([
            ("tanh", "xavier_normal", "none", "none", -0.05, -0.05, True),
            ("relu", "kaiming_normal", "none", "none", 0.0, 0.0, True),
            ("relu", "kaiming_normal", "none", "residual", 0.2, 0.15, False),
            ("relu", "kaiming_normal", "batch", "highway", 0.02, np.nan, pd.NA),
        ])
    ]).astype({"agrees": "boolean"})  # fmt: skip
    trainable = pd.DataFrame([
        {"activation": "tanh", "init": "kaiming_normal", "norm": "none", "skip": "none",
         "depths": "4,8", "fails_at": pd.NA, "six_xi_c": 130.0},
        {"activation": "relu", "init": "kaiming_normal", "norm": "none", "skip": "none",
         "depths": "4,8", "fails_at": 8, "six_xi_c": np.inf},
    ]).astype({"fails_at": "Int64"})  # fmt: skip
    curves = []
    for norm, skip, p, seed in itertools.product(("none", "batch"), ("none", "residual"),
                                                 (0.0, 0.3), (0, 1)):  # fmt: skip
        diverged = norm == "none" and skip == "residual" and seed == 1
        runs.append({"sweep": "regularize", "depth": 4, "activation": "relu",
                     "init": "kaiming_normal", "norm": norm, "skip": skip, "dropout": p,
                     "seed": seed, "lr": 0.03, "run_name": f"reg-{norm}-{skip}-p{p}-s{seed}",
                     "status": "diverged" if diverged else "finished",
                     "train_split_accuracy": np.nan if diverged else 0.95 - p,
                     "test_accuracy": np.nan if diverged else 0.6 + 0.1 * p})  # fmt: skip
    for order, norm, seed in itertools.product(("none", "linear"), ("none", "batch"), (0, 1)):
        name = f"cur-{order}-{norm}-s{seed}"
        runs.append({"sweep": "curriculum", "depth": 8, "activation": "relu",
                     "init": "kaiming_normal", "norm": norm, "skip": "residual",
                     "curriculum": order, "seed": seed, "lr": 0.1, "steps": 40,
                     "run_name": name, "status": "finished", "test_accuracy": 0.9})  # fmt: skip
        curves += [{"sweep": "curriculum", "run_name": name, "step": step,
                    "val_accuracy": step / (50 if order == "linear" else 60)}
                   for step in (10, 20, 30, 40)]  # fmt: skip
    runs = pd.DataFrame(runs)
    chosen = runs.loc[runs["sweep"] != "init", ["sweep", "run_name"]].assign(chosen=True)
    return figures.Inputs(runs=runs, layers=pd.DataFrame(layers), curves=pd.DataFrame(curves),
                          decay=decay, claims=claims_table(), trainable=trainable,
                          chosen=chosen)  # fmt: skip


def claims_table() -> pd.DataFrame:
    """A tested target row with a secondary stratum, a target row whose units all agree
    (not tested, effect 0 [0, 0]) and a claim no sweep measures (no effect at all)."""
    row = {"claim": "C1", "part": "C1", "stratum": "norm=none, skip=none", "role": "target",
           "unit": "decades", "carries_verdict": True, "n": 10, "effect": 2.0,
           "effect_low": 1.0, "effect_high": 3.0, "null": 0.0, "direction": 1,
           "verdict": "supported", "note": "", "form": "superiority", "margin": 0.5,
           "fragile": False}  # fmt: skip
    return pd.DataFrame([
        row,
        {**row, "stratum": "norm=batch, skip=none", "role": "secondary",
         "carries_verdict": False, "effect": -9.0, "verdict": ""},
        {**row, "claim": "C6", "part": "C6c", "unit": "fraction of seeds", "effect": 0.0,
         "effect_low": 0.0, "effect_high": 0.0, "verdict": "not tested",
         "form": "non-inferiority", "margin": 0.1,
         "note": "not tested: every unit has the same value (e.g. nothing diverged)"},
        {**row, "claim": "C6", "part": "C6b", "unit": "accuracy", "effect": 0.3,
         "effect_low": 0.2, "effect_high": 0.4, "margin": 0.05, "fragile": True},
        {**row, "claim": "C9", "part": "C9c", "unit": "fraction of seeds", "effect": 0.02,
         "effect_low": -0.01, "effect_high": 0.05, "null": 0.0, "direction": -1,
         "form": "non-inferiority", "margin": 0.1, "verdict": "supported"},
        {**row, "claim": "C15", "part": "C15", "stratum": "", "unit": "accuracy",
         "effect": 0.001, "effect_low": -0.004, "effect_high": 0.006, "margin": 0.025,
         "verdict": "no effect of the claimed size"},
        {**row, "claim": "C18", "part": "C18", "stratum": "", "unit": "", "n": 0,
         "effect": np.nan, "effect_low": np.nan, "effect_high": np.nan,
         "verdict": "not tested", "note": "not tested: no sweep has dropout yet"},
    ])  # fmt: skip


def empty(inputs: figures.Inputs) -> figures.Inputs:
    return figures.Inputs(**{name: getattr(inputs, name).iloc[:0] for name in figures.FILES})


# ----------------------------------------------------------------------------- figures


@pytest.mark.parametrize("shrink", [lambda x: x, empty], ids=["tiny", "empty"])
def test_every_figure_is_written_as_pdf_and_png_with_a_listing(tmp_path, shrink):
    inputs = shrink(tiny_inputs())
    figures.render(inputs, tmp_path)
    stems = [spec.stem for spec in figures.FIGURES]
    assert len(stems) == len(set(stems)) == 10
    for stem in stems:
        for ext in ("pdf", "png"):
            assert (tmp_path / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
    listing = json.loads((tmp_path / "figures.json").read_text())
    assert set(listing) == set(stems)
    assert all(entry["description"] and entry["n"] >= 0 for entry in listing.values())
    if inputs.runs.empty:
        assert all(entry["n"] == 0 for entry in listing.values())
    else:
        assert listing["trainability"]["n"] == 16  # every train run, diverged ones too
        assert listing["profiles_init"]["n"] == 8
        assert listing["theory_vs_measured"]["n"] == 3  # the highway cell has no theory
        assert listing["generalization_gap"]["n"] == 16  # diverged runs counted too
        assert listing["curriculum_curves"]["n"] == 8


def test_figures_are_byte_stable(tmp_path):
    inputs = tiny_inputs()
    figures.render(inputs, tmp_path / "a")
    figures.render(inputs, tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_claims_forest_has_one_facet_per_outcome_on_its_own_scale_with_margins():
    style.use()
    fig = fc.claims_forest(claims_table())
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == [
        "decades",
        "fraction of seeds",
        "accuracy",
        "no unit",
    ]  # in claim order
    labels = {ax.get_title(loc="left"): [t.get_text() for t in ax.get_yticklabels()]
              for ax in axes}  # fmt: skip
    assert labels["decades"] == ["C1: plain"]  # secondaries get no row of their own
    assert labels["fraction of seeds"] == ["C6c: plain", "C9c: plain"]
    assert labels["accuracy"] == ["C6b: plain †", "C15"]  # the fragile row marked

    def gids(ax, gid):
        return [a for a in [*ax.lines, *ax.patches] if a.get_gid() == gid]

    by = {ax.get_title(loc="left"): ax for ax in axes}
    # Every row carries its margin: a band for superiority, a bound for non-inferiority.
    assert len(gids(by["decades"], fc.MARGIN_BAND)) == 1
    assert len(gids(by["accuracy"], fc.MARGIN_BAND)) == 2
    bounds = gids(by["fraction of seeds"], fc.NI_BOUND)
    assert len(bounds) == 2 and all(list(b.get_xdata()) == [-0.1, -0.1] for b in bounds)
    band = gids(by["accuracy"], fc.MARGIN_BAND)[1]
    assert band.get_x() == pytest.approx(-0.025) and band.get_width() == pytest.approx(0.05)
    # One interval and estimate per tested row, drawn in the claim's direction (C9c: d = -e).
    assert len(gids(by["fraction of seeds"], "interval")) == 1
    c9c = gids(by["fraction of seeds"], "interval")[0]
    assert list(c9c.get_xdata()) == pytest.approx([-0.05, 0.01])
    assert [t.get_text() for t in by["fraction of seeds"].texts] == ["not tested"]
    assert [t.get_text() for t in by["no unit"].texts] == ["not tested"]
    # each facet's scale covers its own rows and margins, not the others'
    assert by["accuracy"].get_xlim()[1] < 1 < by["decades"].get_xlim()[1]


def test_missing_input_is_one_line_naming_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        figures.main(["--tables", str(tmp_path), "--analysis", str(tmp_path),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs.parquet not found" in err[0]
    assert "dvc repro analyze" in err[0]
    assert not (tmp_path / "out").exists()


def test_tuned_sweeps_are_drawn_at_each_configurations_chosen_rate():
    inputs = tiny_inputs()
    train = inputs.runs[inputs.runs["sweep"] == "train"]
    other = train.assign(lr=0.1, test_accuracy=0.0, run_name=train["run_name"] + "-lr0.1")
    optim = train.assign(sweep="optim", lr=0.1)
    chosen = pd.concat([inputs.chosen, other[["sweep", "run_name"]].assign(chosen=False)])
    kept = figures.at_chosen_lr(pd.concat([train, other, optim]), chosen)
    drawn = kept[kept["sweep"] == "train"]
    assert len(drawn) == len(train) and (drawn["lr"] == 0.01).all()  # the rate chosen
    assert (kept["sweep"] == "optim").sum() == len(train)  # sweeps of one rate untouched


def test_rate_heatmaps_draw_each_cells_mean_on_one_scale_centred_at_zero():
    from matplotlib.collections import QuadMesh

    from study.report import figures_analysis

    rows = [
        {
            "sweep": "init",
            "depth": depth,
            "norm": "none",
            "skip": skip,
            "activation": act,
            "init": init,
            "signal_rate": rate,
        }
        for depth in (4, 64)
        for skip, act, init, rate in [
            ("none", "tanh", "xavier_normal", -0.08),
            ("none", "relu", "kaiming_normal", 0.0),
            ("residual", "tanh", "xavier_normal", 0.04),
        ]
    ]
    rows.append({**rows[-1], "signal_rate": 0.02})  # a second seed: the panel shows the mean
    fig = figures_analysis.rate_heatmaps(pd.DataFrame(rows))
    meshes = [ax.collections[0] for ax in fig.axes if ax.collections
              and isinstance(ax.collections[0], QuadMesh)]  # fmt: skip
    assert len(meshes) == 2  # one panel per skip
    plain, residual = (np.ma.filled(m.get_array(), np.nan).reshape(2, 2) for m in meshes)
    # rows tanh, ReLU; columns Xavier, He (the study's order of levels)
    assert plain[0, 0] == pytest.approx(-0.08) and plain[1, 1] == 0 and np.isnan(plain[0, 1])
    assert residual[0, 0] == pytest.approx(0.03) and np.isnan(residual[1, 1])
    assert {m.norm.vmin for m in meshes} == {-0.08} and {m.norm.vmax for m in meshes} == {0.08}
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"\N{MINUS SIGN}.08", "0", ".03"} <= texts
