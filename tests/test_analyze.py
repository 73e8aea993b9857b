"""The analysis stage's own tables on synthetic runs with a known answer: trainable depth
and the gaps between the ends of a swept level (degradation, input-scale shrink)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from study.analysis import analyze, outcomes


def train_runs(accuracy: dict[int, list[float | None]]) -> pd.DataFrame:
    """A train sweep of one configuration (plain ReLU + He, width 64, digits); a None
    accuracy is a diverged seed."""
    rows = []
    for depth, seeds in accuracy.items():
        for seed, acc in enumerate(seeds):
            rows.append({"sweep": "train", "activation": "relu", "init": "kaiming_normal",
                         "norm": "none", "skip": "none", "depth": depth, "width": 64,
                         "dataset": "digits", "seed": seed,
                         "lr": 0.01, "status": "diverged" if acc is None else "finished",
                         "test_accuracy": np.nan if acc is None else acc,
                         "val_accuracy": np.nan if acc is None else acc})  # fmt: skip
    return pd.DataFrame(rows)


def test_trainable_depth_is_the_first_depth_that_fails():
    runs = train_runs({4: [0.9, 0.92, 0.91], 8: [0.6, 0.5, 0.55], 16: [0.9, 0.9, 0.9]})
    [row] = analyze.trainable_depth(runs, {"digits": 64}).itertuples()
    assert row.fails_at == 8 and row.trains_to == 4  # not 16, the deepest that passes
    assert row.six_xi_c == np.inf  # ReLU + He sits at the edge of chaos


def test_a_depth_where_most_seeds_diverge_fails():
    runs = train_runs({4: [0.9, 0.9, 0.9], 16: [0.9, None, None], 32: [0.9, 0.9, 0.9]})
    [row] = analyze.trainable_depth(runs, {"digits": 64}).itertuples()
    assert row.fails_at == 16 and row.divergence_by_depth == "0.00,0.67,0.00"


def test_no_failure_in_the_grid_is_missing_not_zero():
    runs = train_runs({4: [0.9, 0.9, 0.9], 16: [0.89, 0.9, 0.88]})
    [row] = analyze.trainable_depth(runs, {"digits": 64}).itertuples()
    assert pd.isna(row.fails_at) and row.trains_to == 16


def test_level_gap_is_the_largest_level_minus_the_smallest():
    grid = itertools.product((1.0, 0.1, 0.01), ("tanh", "relu"), ("xavier_normal",),
                             ("none", "residual"), (16, 64))  # fmt: skip
    cells = pd.DataFrame(
        [{"input_scale": s, "activation": a, "init": i, "skip": k, "depth": d,
          "weight_grad_level": (1.0 if k == "none" else 0.25) * np.log10(s)}
         for s, a, i, k, d in grid]
    )  # fmt: skip
    gap = outcomes.level_gap(cells, "input_scale", "weight_grad_level", "weight_grad_shrink",
                             outcomes.FRAME_KEYS["scale_shrink"])  # fmt: skip
    assert gap.groupby("skip")["weight_grad_shrink"].mean().to_dict() == pytest.approx(
        {"none": 2.0, "residual": 0.5}
    )
    assert set(gap["family"]) == {"saturating", "relu"}
    one = cells[cells["input_scale"] == 1.0]
    assert outcomes.level_gap(one, "input_scale", "weight_grad_level", "x", ("skip",)).empty


def test_trainable_depth_reads_each_depth_at_its_best_rate():
    # At depth 16 the rate 0.1 trains (0.9) and 0.01 does not (0.3): judged at 0.1, no depth
    # fails; at 0.01 alone, depth 16 would.
    runs = train_runs({4: [0.9, 0.9, 0.9], 16: [0.3, 0.3, 0.3]})
    better = train_runs({16: [0.9, 0.91, 0.9]}).assign(lr=0.1)
    worse = train_runs({4: [0.5, 0.5, 0.5]}).assign(lr=0.1)
    [row] = analyze.trainable_depth(pd.concat([runs, better, worse]), {"digits": 64}).itertuples()
    assert pd.isna(row.fails_at) and row.accuracy_by_depth == "0.900,0.903"


def test_the_last_quarter_gain_is_read_to_where_each_run_stopped():
    # Two seeds stopped early at their plateau (step 400 of a 1,000-step budget): the gain is
    # read from step 300 to 400, not left missing for want of step 1,000.
    runs = train_runs({4: [0.9, 0.9]}).assign(scaling="none", run_name=["a", "b"], steps=1000)
    curves = pd.DataFrame([{"sweep": "train", "run_name": name, "step": step,
                            "val_accuracy": 0.5 + step / 1000 + (0.02 if name == "b" else 0)}
                           for name in ("a", "b") for step in (100, 200, 300, 400)])  # fmt: skip
    [row] = analyze.tuning(runs, curves).itertuples()
    assert row.last_quarter_gain == pytest.approx(0.1) and not row.levelled_off
    flat = curves.assign(val_accuracy=0.9)
    [row] = analyze.tuning(runs, flat).itertuples()
    assert row.last_quarter_gain == 0 and row.levelled_off
