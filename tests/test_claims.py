"""Known answers for every hypothesis of study.analysis.claims and every rule of
study.analysis.verdicts: synthetic tables of the study's shape whose effect is known --
supported, refuted, equivalent, non-inferior, censored, strata that reverse, levels that
disagree with and without evidence, a claim with an underpowered part -- and the size of
the tests under the null, clustered as the factorial is."""

from __future__ import annotations

import dataclasses
import itertools
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from study.analysis import claims, hypotheses, outcomes, stats, verdicts
from study.analysis.comparisons import Compare, DepthTrend, Ends, Level, Spread
from study.analysis.verdicts import Hypothesis
from study.engine import nets

LEVELS = {
    "activation": ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "gelu", "selu"),
    "init": ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
             "orthogonal", "lecun_normal"),
    "norm": ("none", "batch", "layer"),
    "skip": ("none", "residual", "highway", "dense"),
    "scaling": ("constant", "sqrt_depth", "rezero"),
    "depth": (4, 16, 64),
    "setup": ("sgd", "sgd+clip", "adamw", "adamw+clip"),
    "lr": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
    "seed": (0, 1, 2),
    "dropout": (0.0, 0.1, 0.3),
    "label_noise": (0.0, 0.2),
    "curriculum": ("none", "linear", "anti", "random"),
}  # fmt: skip
TESTED = list(claims.HYPOTHESES)
NO_CURVES = pd.DataFrame(columns=["sweep", "run_name", "step", "train_loss", "val_accuracy"])
PHASES = {"sigmoid": "vanishing", "tanh": "vanishing", "selu": "exploding"}


def grid(frame: str) -> pd.DataFrame:
    """Every combination of the table's keys (a residual net with each scaling, the other
    skips with none), with the derived columns the claims read."""
    keys = outcomes.FRAME_KEYS[frame]
    rows = pd.DataFrame(list(itertools.product(*(LEVELS[k] for k in keys))), columns=keys)
    if "scaling" in rows:
        rows = rows[(rows["skip"] == "residual") | (rows["scaling"] == "constant")].copy()
        residual = rows["skip"] == "residual"
        rows["scaling"] = rows["scaling"].where(residual, "none")
        rows["branch"] = rows["scaling"].map(outcomes.BRANCH).where(residual, rows["skip"])
    family = {a: f for f in nets.FAMILIES for a in nets.family(f)}
    if "activation" in rows:
        rows["family"] = rows["activation"].map(family)
        rows["phase"] = rows["activation"].map(PHASES).fillna("flat")
    if "activation" in rows and "init" in rows:
        well = rows["init"].str.startswith("kaiming") == (rows["family"] == "relu")
        rows["init_quality"] = np.where(well, "well", "badly")
    if "norm" in rows and "skip" in rows:
        rows["norm_skip"] = rows["norm"] + "+" + rows.get("branch", rows["skip"])
    return rows.reset_index(drop=True)


def synthetic(h: Hypothesis, side: float, sign=None, noise: float = 0.05) -> dict:
    """The table of ``h`` with an effect of ``side`` margins (+: the claim's way, -:
    against it, 0: none) times ``sign(row)`` (default 1), and cell-to-cell noise of
    ``noise`` margins. Seeded by the hypothesis, so a verdict is reproducible."""
    rng = np.random.default_rng(zlib.crc32(h.part.encode()))
    frame = grid(h.frame)
    size = h.margin
    mult = side * (frame.apply(sign, axis=1).to_numpy() if sign else np.ones(len(frame)))
    jitter = noise * size * rng.standard_normal(len(frame))
    test = h.compare
    # The noise has mean zero on each side of the comparison exactly, so "no effect" is the
    # answer at side 0 whatever the draw, not in 1 - alpha of draws
    # (within each stratum the hypothesis is judged in).
    cells = [_sides(frame, test), (frame["depth"] >= h.min_depth).to_numpy() if "depth" in frame
             else np.zeros(len(frame), dtype=bool)]  # fmt: skip
    single = [k for k, v in h.where.items() if len(v) == 1]  # a pooled key holds clusters
    cells += [frame[k].astype(str).to_numpy() for k in (*single, *h.strata) if k in frame]
    jitter = jitter - pd.Series(jitter).groupby(cells).transform("mean").to_numpy()
    if isinstance(test, DepthTrend):
        beta = h.null + h.direction * h.margin * mult
        frame[h.value] = -((frame["depth"] - 1.0) ** (beta - 1)) * np.exp(
            noise * 0.1 * rng.standard_normal(len(frame)))  # fmt: skip
    elif isinstance(test, Spread):
        index = frame[test.factor].map({v: i for i, v in enumerate(LEVELS[test.factor])})
        spread = np.clip(h.null + h.direction * size * mult, 0, None)
        frame[h.value] = index / (len(LEVELS[test.factor]) - 1) * spread + jitter
    elif isinstance(test, Level):
        frame[h.value] = h.null + h.direction * size * mult + jitter
    elif isinstance(test, Ends):
        depth = frame[test.factor]
        at_a = depth == (depth.min() if test.smallest_first else depth.max())
        frame[h.value] = np.where(at_a, h.direction * size * mult, 0.0) + jitter
    else:
        at_a = frame[test.factor].astype(str).isin(test.a)
        frame[h.value] = np.where(at_a, h.direction * size * mult, 0.0) + jitter
    for other in h.also:  # reported beside the target, not judged
        frame[other] = frame[h.value]
    # Each cell's seeds: three, with the cell's noise as their standard error, as collected.
    frame[f"{h.value}{outcomes.SE}"], frame["n_seeds"] = noise * size, 3
    if h.value in hypotheses.CENSORED:
        frame[hypotheses.CENSORED[h.value]] = 1.0  # every run reached the target
    return {h.frame: frame}


def _sides(frame: pd.DataFrame, test) -> np.ndarray:
    """The group each cell's noise is centred in: its side of a comparison, its level of
    a spread's factor, one group for a level or a trend."""
    if isinstance(test, Spread):
        return frame[test.factor].astype(str).to_numpy()
    if isinstance(test, Ends):
        return (frame[test.factor] == frame[test.factor].min()).to_numpy()
    if isinstance(test, (Level, DepthTrend)):
        return np.zeros(len(frame), dtype=bool)
    level = frame[test.factor].astype(str)
    return np.where(level.isin(test.a), "a", np.where(level.isin(test.b), "b", "neither"))


def target_rows(h: Hypothesis, frames) -> pd.DataFrame:
    rows = hypotheses.table([h], frames)
    return rows[rows["carries_verdict"]]


def target_verdicts(h: Hypothesis, frames) -> list[str]:
    return list(target_rows(h, frames)["verdict"])


def c(part: str) -> Hypothesis:
    [h] = [h for h in TESTED if h.part == part]
    return h


# ------------------------------------------------------------- every hypothesis, each way


# Against the claim once per kind of comparison and form: the refuting rule is shared.
REFUTING = list({(type(h.compare), h.form): h for h in TESTED}.values())


def check_counts(h: Hypothesis, frame: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Each target row counts its matched units and tests over their clusters."""
    axes = list(h.compare.pooled(outcomes.FRAME_KEYS[h.frame]))
    for r in rows.itertuples():
        stratum = hypotheses.select(frame, h.where, h.min_depth)
        for axis in h.strata:
            level = r.stratum.split(f"{axis}=")[1].split(",")[0]
            stratum = stratum[stratum[axis].astype(str) == level]
        if isinstance(h.compare, DepthTrend):
            assert r.n == r.clusters == len(stratum)
            continue
        if isinstance(h.compare, Compare) and not isinstance(h.compare, Ends):
            # a unit is a combination of the other axes present on both sides
            level = stratum[h.compare.factor].astype(str)
            a, b = (stratum.loc[level.isin(side), axes].drop_duplicates()
                    for side in (h.compare.a, h.compare.b))  # fmt: skip
            units = a.merge(b)
        else:
            units = stratum[axes].drop_duplicates()
        assert r.n == len(units), (h.part, r.stratum)
        clustered = [a for a in axes if a not in h.cluster]
        assert r.clusters == len(units[clustered].drop_duplicates()), (h.part, r.stratum)


@pytest.mark.parametrize("h", TESTED, ids=lambda h: h.part)
def test_every_hypothesis_is_supported_where_it_holds_whatever_holds_outside(h):
    # 4 margins the claim's way inside the target strata, 4 margins against it outside.
    inside = hypotheses.select(grid(h.frame), h.where, h.min_depth).index

    def sign(row):
        return 1.0 if row.name in inside else -1.0

    frames = synthetic(h, 4.0, sign)
    rows = hypotheses.table([h], frames)
    target = rows[rows["carries_verdict"]]
    assert len(target) and set(target["verdict"]) == {"supported"}, (h.part, target["verdict"])
    assert set(rows["form"]) == {h.form} and set(rows["margin"]) == {h.margin}
    assert rows["margin_why"].str.len().min() > 10
    secondary = rows[rows["role"] == "secondary"]
    if h.secondary:
        assert len(secondary) and (h.direction * (secondary["effect"] - h.null) < 0).all()
    check_counts(h, frames[h.frame], target)


@pytest.mark.parametrize("h", TESTED, ids=lambda h: h.part)
def test_no_effect_is_an_interval_inside_the_margins_never_inconclusive(h):
    rows = target_rows(h, synthetic(h, 0.0))
    inside = (rows["effect_low"] > h.null - h.margin) & (rows["effect_high"] < h.null + h.margin)
    # For "no worse" 0 is within -margin: non-inferior.
    expected = "supported" if h.form == "non-inferiority" else "no effect of the claimed size"
    assert len(rows) and inside.all() and set(rows["verdict"]) == {expected}, (h.part, rows)


@pytest.mark.parametrize("h", REFUTING, ids=lambda h: h.part)
def test_an_effect_beyond_the_margin_against_the_claim_refutes_it(h):
    assert set(target_verdicts(h, synthetic(h, -4.0))) == {"refuted"}


# ---------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("form", "low", "high", "expected"),
    [("superiority", 0.01, 0.9, "supported"), ("superiority", -0.9, -0.01, "refuted"),
     ("superiority", -0.05, 0.05, "no effect of the claimed size"),
     ("superiority", -0.05, 0.2, "inconclusive"), ("superiority", -0.2, 0.05, "inconclusive"),
     ("superiority", 0.01, 0.05, "supported"),  # real, if smaller than the margin (noted)
     ("level", 0.2, 0.3, "supported"),
     ("non-inferiority", -0.05, 0.3, "supported"), ("non-inferiority", -0.5, -0.2, "refuted"),
     ("non-inferiority", -0.3, 0.1, "inconclusive")],
)  # fmt: skip
def test_the_verdict_rules_read_the_interval_against_zero_and_the_margin(form, low, high,
                                                                         expected):  # fmt: skip
    assert verdicts.decide(form, stats.Interval(0.0, low, high), 0.1) == expected


def test_a_supported_effect_smaller_than_its_margin_says_so():
    h = c("C6b")
    rows = target_rows(h, synthetic(h, 0.5, noise=0.02))
    assert list(rows["verdict"]) == ["supported"]
    assert "smaller than its margin" in rows["note"].iloc[0]


def test_an_undecided_row_says_how_many_cells_would_decide_it():
    h = c("C6b")
    rows = target_rows(h, synthetic(h, 0.6, noise=3.0))
    [r] = rows.itertuples()
    assert r.verdict == "inconclusive" and r.cells_needed > r.n
    # The number is what the test needs: the same spread at that many units decides.
    d = verdicts.along(stats.UnitTest(r.clusters, r.effect, r.se, r.df), h.direction, h.null)
    grown = stats.UnitTest(r.units_needed, d.estimate, d.se * np.sqrt(r.clusters / r.units_needed),
                           r.units_needed - 1)  # fmt: skip
    assert verdicts.decisive_p(h.form, grown, h.margin) < 0.05 / 1


def test_a_non_inferior_part_is_judged_against_minus_its_margin():
    h = c("C6c")  # He diverges no more often than Xavier (finite_chosen, margin 0.1)
    slightly_worse = target_rows(h, synthetic(h, -0.3, noise=0.05))
    much_worse = target_rows(h, synthetic(h, -3.0, noise=0.05))
    assert list(slightly_worse["verdict"]) == ["supported"]  # worse, but within the margin
    assert list(much_worse["verdict"]) == ["refuted"]


# ------------------------------------------------------------------------- mixed strata


def test_strata_that_disagree_make_the_claim_mixed():
    h = c("C9a")  # strata: norm none / batch / layer

    def sign(row):
        return -4.0 if row["norm"] == "none" else 4.0

    rows = hypotheses.table([h], synthetic(h, 1, sign))
    target = rows[rows["carries_verdict"]].set_index("stratum")["verdict"]
    assert sorted(target) == ["refuted", "supported", "supported"]
    assert verdicts.claim_verdicts(rows)["C9"]["verdict"] == "mixed"


def test_levels_inside_a_stratum_beyond_the_margin_both_ways_make_it_mixed():
    h = c("C6a")  # pooled over the rectifiers

    def sign(row):
        return -4.0 if row["activation"] == "prelu" else 8.0

    [target] = target_rows(h, synthetic(h, 1, sign)).itertuples()
    assert target.verdict == "mixed" and target.effect > 0  # pooled, it would be supported


def test_levels_that_disagree_within_the_margin_do_not_make_it_mixed():
    h = c("C6a")

    def sign(row):  # PReLU a little the other way, inside the margin: no evidence of a reversal
        return -0.3 if row["activation"] == "prelu" else 4.0

    [target] = target_rows(h, synthetic(h, 1, sign, noise=0.02)).itertuples()
    assert target.verdict != "mixed" and "mixed" not in target.note


def test_levels_a_side_of_the_comparison_pools_that_disagree_make_it_mixed():
    # The ReLU family against sigmoid: ELU far flatter, the other three far less flat.
    h = c("C2a")

    def sign(row):
        return 12.0 if row["activation"] == "elu" else -3.0

    rows = hypotheses.table([h], synthetic(h, 1, sign))
    [target] = rows[rows["carries_verdict"]].itertuples()
    assert target.effect > 0 and target.verdict == "mixed"
    pairs = rows[(rows["role"] == "within target") & rows["stratum"].str.contains(" minus ")]
    assert len(pairs) == 4  # relu, leaky_relu, prelu, elu: each against sigmoid


def test_a_phase_that_reverses_the_sign_is_a_stratum_of_its_own():
    # C1: gradients shrink toward the input in the vanishing phase, grow in the exploding one.
    h = c("C1")

    def sign(row):
        return {"vanishing": 4.0, "exploding": -4.0, "flat": 0.0}[row["phase"]]

    rows = target_rows(h, synthetic(h, 1, sign))
    by_phase = {s.split("phase=")[1]: v for s, v in zip(rows["stratum"], rows["verdict"],
                                                         strict=True)}  # fmt: skip
    assert by_phase == {"vanishing": "supported", "exploding": "refuted",
                        "flat": "no effect of the claimed size"}  # fmt: skip


# ------------------------------------------------------------------ a claim from its parts


@pytest.mark.parametrize(
    ("parts", "claim"),
    [(["supported", "supported", "inconclusive"], "supported"),  # C6: one part underpowered
     (["supported", "refuted"], "mixed"), (["refuted", "inconclusive"], "refuted"),
     (["no effect of the claimed size"] * 2, "no effect of the claimed size"),
     (["supported", "no effect of the claimed size"], "mixed"),
     (["refuted", "no effect of the claimed size"], "refuted"),
     (["mixed", "supported"], "mixed"), (["not tested", "supported"], "supported"),
     (["inconclusive", "not tested"], "inconclusive"), (["not tested"], "not tested")],
)  # fmt: skip
def test_a_claims_verdict_follows_from_its_decided_parts(parts, claim):
    assert verdicts.combine(parts) == claim


def test_an_underpowered_part_does_not_hide_two_supported_ones():
    frames = {}
    for part, side, noise in (("C6a", 4.0, 0.05), ("C6b", 4.0, 0.05), ("C6c", -0.9, 4.0)):
        for name, frame in synthetic(c(part), side, noise=noise).items():
            frames[name] = frames[name].join(frame[[c(part).value]]) if name in frames else frame
    rows = hypotheses.table([c("C6a"), c("C6b"), c("C6c")], frames)
    result = verdicts.claim_verdicts(rows)["C6"]
    part = {key.split(" [")[0]: value for key, value in result.items() if key.startswith("C6")}
    assert [part[p]["verdict"] for p in ("C6a", "C6b")] == ["supported", "supported"]
    assert part["C6c"]["verdict"] == "inconclusive"
    assert (result["verdict"], result["undecided"]) == ("supported", 1)


def test_dropout_gain_is_each_rate_minus_none_in_the_same_configuration():
    cells = pd.DataFrame(
        [{"activation": "relu", "norm": n, "skip": "none", "depth": 4, "dropout": p,
          "accuracy": {"none": 0.5, "batch": 0.7}[n] + {0.0: 0.0, 0.1: 0.05, 0.3: -0.1}[p]
          * (2 if n == "none" else 1)}
         for n in ("none", "batch") for p in (0.0, 0.1, 0.3)]
    )  # fmt: skip
    gain = outcomes.gain_over(cells, "dropout", "accuracy", "accuracy_gain",
                              outcomes.FRAME_KEYS["dropout_gain"])  # fmt: skip
    assert (gain["activation"] == "relu").all()
    got = gain.set_index(["norm", "dropout"])["accuracy_gain"]
    assert got.to_dict() == pytest.approx(
        {("batch", 0.1): 0.05, ("batch", 0.3): -0.1, ("none", 0.1): 0.1, ("none", 0.3): -0.2}
    )


def test_validation_at_matched_loss_is_read_where_the_training_loss_first_gets_there():
    curves = pd.DataFrame({
        "sweep": "regularize", "run_name": ["a"] * 4 + ["b"] * 3,
        "step": [50, 100, 150, 200, 50, 100, 150],
        "train_loss": np.array([12, 6, 0.9, 0.2, 9, 8, 7]) * outcomes.MATCHED_TRAIN_LOSS,
        "val_accuracy": [0.3, 0.5, 0.55, 0.56, 0.4, 0.45, 0.5],
    })  # fmt: skip
    got = outcomes._matched_loss(curves).set_index("run_name")["val_at_matched_loss"]
    assert got.to_dict() == {"a": 0.55}  # "b" never fits that well: left out


# --------------------------------------------------------------- no run drops out


def train_runs(diverge_he: bool, reach: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and layers tables as collect writes them, for a small plain ReLU train sweep:
    He nets reach 0.9, Xavier nets 0.6; with ``diverge_he`` two of three deep He seeds
    diverge (their accuracy is NaN, as collect records it); without ``reach`` no Xavier net
    reaches the target and the deep ones of neither init do."""
    rows, layers = [], []
    for activation, init, depth, seed in itertools.product(
        ("relu", "leaky_relu", "prelu", "elu"), ("xavier_normal", "kaiming_normal"),
        (4, 16, 32), (0, 1, 2),
    ):  # fmt: skip
        he = init == "kaiming_normal"
        diverged = diverge_he and he and depth >= 16 and seed < 2
        reached = not diverged and (reach or (he and depth < 16))
        name = f"d{depth}-{activation}-{init}-s{seed}"
        rows.append({
            "sweep": "train", "run_name": name, "status": "diverged" if diverged else "finished",
            "activation": activation, "init": init, "norm": "none", "skip": "none",
            "residual_scaling": "constant", "depth": depth, "width": 64, "dataset": "digits",
            "seed": seed, "steps": 150, "optimizer": "sgd", "clip_norm": np.nan, "lr": 0.01,
            "test_accuracy": np.nan if diverged else (0.9 if he else 0.6) + 0.01 * seed,
            "val_accuracy": np.nan if diverged else (0.9 if he else 0.6),
            "train_loss": np.nan if diverged else 0.3,
            "train_split_accuracy": np.nan if diverged else 1.0,
            "steps_to_target": 50 + 10 * seed if reached else pd.NA,
            **{f"{g}_{s}_init": 0.0 for g in ("signal", "weight")
               for s in ("log10_rate", "log10_first_last")},
        })  # fmt: skip
        for layer in range(1, depth + 1):
            layers.append({"sweep": "train", "run_name": name, "step": 0, "layer": layer,
                           "weight_grad_norm": 1.0, "activation_rms": 1.0,
                           "activation_mean": 0.0, "dead_fraction": 0.1})  # fmt: skip
    runs = pd.DataFrame(rows)
    runs["sweep"] = pd.Categorical(runs["sweep"], categories=["train"])
    return runs, pd.DataFrame(layers)


DATASETS = {"digits": {"num_features": 64, "num_classes": 10}}


def train_cells(runs, layers) -> dict[str, pd.DataFrame]:
    values = outcomes.run_values(runs, layers, NO_CURVES, DATASETS)
    keys = outcomes.FRAME_KEYS["train"]
    return {"train": outcomes.tuned_cells(values, outcomes.at_best_lr(values, keys), keys)}


def test_a_diverged_run_scores_chance_and_divergence_is_an_outcome_of_its_own():
    frames = train_cells(*train_runs(diverge_he=True))
    deep_he = frames["train"].query("init == 'kaiming_normal' and depth == 32")
    assert deep_he["finite"].tolist() == pytest.approx([1 / 3] * 4)
    # Two seeds at chance (0.1), the one that finished at 0.92: nothing left out.
    assert deep_he["accuracy"].tolist() == pytest.approx([(0.1 + 0.1 + 0.92) / 3] * 4)
    [acc] = target_rows(c("C6b"), frames).itertuples()
    # Every unit counted (3 rectifiers x depths 16, 32); the failures pull He below Xavier.
    assert acc.n == 6 and acc.effect < 0


def test_nothing_diverged_is_not_tested_rather_than_evidence():
    frames = train_cells(*train_runs(diverge_he=False))
    [fin] = target_rows(c("C6c"), frames).itertuples()
    assert fin.verdict == "not tested" and "nothing diverged" in fin.note


def test_steps_to_target_are_restricted_means_and_uninformative_units_are_counted():
    runs, layers = train_runs(diverge_he=True, reach=False)
    frames = train_cells(runs, layers)
    cells = frames["train"].set_index(["activation", "init", "depth"])
    # Reached at 50, 60, 70 steps: their mean; never reached: the budget, 150.
    assert cells.loc[("relu", "kaiming_normal", 4), "steps_needed"] == pytest.approx(60.0)
    assert cells.loc[("relu", "xavier_normal", 4), "steps_needed"] == 150.0
    assert cells.loc[("relu", "kaiming_normal", 32), "steps_needed"] == 150.0  # diverged: 150
    h = Hypothesis("T", "T", "He reaches the target faster", "test", "train", "steps_needed",
                   claims.Compare("init", ("kaiming_normal",), ("xavier_normal",)),
                   "superiority", margin=25, why="test", where=claims.PLAIN, direction=-1,
                   cluster=())  # fmt: skip
    [row] = target_rows(h, frames).itertuples()
    # Depths 16 and 32: no run of either init reached the target: no time to compare.
    assert row.dropped == 8 and row.n == 4 and "left out" in row.note
    assert row.effect == pytest.approx(60.0 - 150.0)


# ------------------------------------------------------- size and coverage of the tests


def crossed_null(rng, configs: int = 12, depths: int = 4, seeds: int = 3) -> pd.Series:
    """Matched cell differences under the null of no mean effect, shaped like the train
    sweep: each configuration has its own true effect (mean 0) that its depths share
    nearly exactly (depth replicates), seeds add a little."""
    true = rng.normal(0.0, 0.2, configs)
    values = true[:, None] + rng.normal(0, 0.01, (configs, depths))
    index = pd.MultiIndex.from_product([range(configs), range(depths)],
                                       names=["activation", "depth"])  # fmt: skip
    return pd.Series(values.ravel(), index=index)


def test_the_cluster_test_holds_its_size_where_the_cell_level_one_does_not():
    rng = np.random.default_rng(7)
    clustered, cell_level = [], []
    for _ in range(1000):
        units = crossed_null(rng)
        clusters = pd.Series(units.index.get_level_values("activation"), index=units.index)
        clustered.append(stats.cluster_test(units, clusters).p_two_sided() < 0.05)
        cell_level.append(stats.cluster_test(units, None).p_two_sided() < 0.05)
    # 1,000 repetitions: the binomial s.d. of a 5% rejection rate is 0.7%.
    assert 0.03 <= np.mean(clustered) <= 0.07
    assert np.mean(cell_level) > 0.15  # depth replicates taken for independent cells


@pytest.mark.parametrize("side", [0.0, 1.0])
def test_a_false_decision_is_as_rare_as_the_declared_level(side):
    """On a boundary (d = 0 for superiority, d = margin for equivalence) the wrong decision
    may be taken at most ALPHA of the time: simulated tables of the C6b shape. A verdict
    reads its target rows only, so the secondary strata reported beside them are left out
    of the 300 tables (2.6 times faster)."""
    h = dataclasses.replace(c("C6b"), secondary=(), also=())
    rng = np.random.default_rng(3)
    wrong = []
    for _ in range(300):
        frame = synthetic(h, 0.0)[h.frame]
        at_a = frame["init"] == "kaiming_normal"
        units = rng.normal(side * h.margin, h.margin, len(frame))
        frame[h.value] = np.where(at_a, units, 0.0)
        [row] = target_rows(h, {h.frame: frame}).itertuples()
        wrong.append(row.verdict == ("supported" if side == 0 else "no effect of the claimed size"))
    assert np.mean(wrong) <= scipy_stats.binom.ppf(0.99, 300, verdicts.ALPHA) / 300


def test_per_cell_intervals_cover_at_three_seeds():
    rng = np.random.default_rng(11)
    draws = rng.normal(1.0, 0.5, (2000, 3))
    covered = [(iv.low <= 1.0 <= iv.high) for iv in map(stats.t_interval, draws)]
    assert np.mean(covered) >= 0.93
    # The percentile bootstrap over the same 3 seeds covers about 76%: why it was replaced.
    boot = draws[:, rng.integers(0, 3, (1000, 3))].mean(axis=2)
    low, high = np.quantile(boot, [0.025, 0.975], axis=1)
    assert np.mean((low <= 1.0) & (1.0 <= high)) < 0.85


def test_the_effect_interval_and_the_verdict_come_from_the_same_cluster_test():
    h = c("C6a")
    frame = synthetic(h, 4.0)["init"]
    [target] = target_rows(h, {"init": frame}).itertuples()
    stratum = hypotheses.select(frame, h.where, h.min_depth)
    units = h.compare.units(stratum, outcomes.FRAME_KEYS["init"], h.value)
    again = stats.cluster_test(units.values, units.clusters(h.cluster))
    assert target.effect == pytest.approx(again.estimate)
    iv = again.interval(1 - 2 * target.level)
    assert (target.effect_low, target.effect_high) == pytest.approx((iv.low, iv.high))
    assert target.n == len(units.values) == 3 * 2  # rectifiers x depths 16, 64
    assert target.clusters == 3  # ... clustered over depth: one cluster per rectifier


def test_the_family_selects_claims_then_holds_each_to_holm():
    # Three claims: one with two clear rows, one with a clear and a weak row, one null.
    rows = pd.DataFrame([
        {"claim": c, "part": p, "role": "target", "form": "superiority", "margin": 0.1,
         "note": "", "effect": e, "se": se, "df": 9, "n": 10, "clusters": 10, "null": 0.0,
         "direction": 1}
        for c, p, e, se in (("A", "A1", 1.0, 0.1), ("A", "A2", 1.0, 0.1),
                            ("B", "B1", 1.0, 0.1), ("B", "B2", 0.2, 0.1),
                            ("C", "C1", 0.05, 0.2))
    ])  # fmt: skip
    judged = verdicts.judge(rows).set_index("part")
    assert list(judged.loc[["A1", "A2", "B1"], "verdict"]) == ["supported"] * 3
    # Two of three claims selected: Holm within B at 0.05 * 2/3 = 0.033, then 0.067 for B2.
    assert judged.loc["B1", "level"] == pytest.approx(0.05 * 2 / 3 / 2)
    assert judged.loc["C1", "verdict"] == "inconclusive"  # its claim was not selected


def tuning_runs() -> pd.DataFrame:
    """One configuration at three learning rates x three seeds: 0.03 is best on validation;
    0.1 has the best test accuracy where it finishes but diverges on two seeds of three,
    0.01 ties 0.03 on another configuration."""
    rows = []
    for config, lr, seed in itertools.product(("a", "b"), (0.01, 0.03, 0.1), range(3)):
        val = {0.01: 0.80, 0.03: 0.90, 0.1: 0.95}[lr] if config == "a" else 0.9
        test = {0.01: 0.79, 0.03: 0.88, 0.1: 0.97}[lr]
        diverged = config == "a" and lr == 0.1 and seed > 0
        rows.append({"activation": config, "lr": lr, "seed": seed,
                     "status": "diverged" if diverged else "finished",
                     "val_accuracy": np.nan if diverged else val + 0.001 * seed,
                     "accuracy": np.nan if diverged else test,
                     "finite": 0.0 if diverged else 1.0,
                     "steps_needed": {0.01: 200.0, 0.03: 100.0, 0.1: 50.0}[lr]})  # fmt: skip
    return pd.DataFrame(rows)


def test_trainability_is_read_on_test_at_the_rate_chosen_on_validation():
    runs = tuning_runs()
    best = outcomes.best_lr(runs, ("activation",)).set_index("activation")
    # "a": 0.1 would win on the seeds that finished (and on test), but diverged runs score 0.
    assert best.loc["a", "lr"] == 0.03 and best.loc["a", "rates"] == 3
    assert best.loc["a", "val_accuracy"] == pytest.approx(0.901)
    assert best.loc["b", "lr"] == 0.01  # a tie goes to the smaller rate
    tuned = outcomes.cells(outcomes.at_best_lr(runs, ("activation",)), ("activation",))
    tuned = tuned.set_index("activation")
    assert tuned.loc["a", "accuracy"] == pytest.approx(0.88)  # test accuracy at 0.03
    assert tuned.loc["a", "finite"] == 1.0 and tuned.loc["a", "n_seeds"] == 3
    assert tuned.loc["a", "steps_needed"] == 100.0


def test_c12_steps_are_read_at_each_setups_best_rate_not_the_fastest_of_the_grid():
    runs = tuning_runs().rename(columns={"activation": "setup"})
    for axis, level in (("norm", "none"), ("skip", "none"), ("init", "xavier_normal"),
                        ("activation", "relu"), ("depth", 16)):  # fmt: skip
        runs[axis] = level
    runs["accuracy"] = runs["accuracy"].fillna(0.0)
    frame = outcomes.lr_range(runs).set_index("setup")
    assert frame.loc["a", "steps_needed"] == 100.0  # at 0.03, not the 50 of 0.1
    assert frame.loc["a", "finite"] == pytest.approx(7 / 9)  # over the whole grid
    assert frame.loc["b", "steps_needed"] == 200.0


def test_divergence_is_counted_over_every_rate_the_rest_at_the_chosen_one():
    runs = tuning_runs()
    tuned = outcomes.at_best_lr(runs, ("activation",))
    frame = outcomes.tuned_cells(runs, tuned, ("activation",)).set_index("activation")
    assert frame.loc["a", "finite"] == pytest.approx(7 / 9)  # 2 of 9 runs diverged, at 0.1
    assert frame.loc["a", "finite_chosen"] == 1.0  # none at the chosen 0.03
    assert frame.loc["a", "accuracy"] == pytest.approx(0.88)  # at the chosen 0.03
    assert frame.loc["b", "finite"] == 1.0
