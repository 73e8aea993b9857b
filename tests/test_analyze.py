"""The claim tests of study.analyze on synthetic frames with a known effect (C14 here; the
pipeline test runs every hypothesis on the quick profile's real tables)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from study import analyze

SCALES = (1.0, 0.1, 0.01)
KEYS = ("activation", "init", "depth", "seed")


def scale_frame(plain_slope: float, residual_slope: float, noise: float = 0.05) -> pd.DataFrame:
    """A scale sweep whose weight-gradient level falls by ``slope`` decades per decade of
    input scale (plain and residual nets), plus seeded noise."""
    rng = np.random.default_rng(0)
    rows = []
    grid = itertools.product(SCALES, ("tanh", "relu"), ("xavier_normal", "kaiming_normal"),
                             (16, 64), range(3), ("none", "residual"))  # fmt: skip
    for scale, activation, init, depth, seed, skip in grid:
        slope = plain_slope if skip == "none" else residual_slope
        level = -1.0 + slope * np.log10(scale) + noise * rng.standard_normal()
        rows.append({"input_scale": scale, "activation": activation, "init": init,
                     "depth": depth, "seed": seed, "skip": skip,
                     "weight_grad_level": level})  # fmt: skip
    return pd.DataFrame(rows)


def frames_for(scale: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"scale": scale, "scale_shrink": analyze._scale_shrink(scale)}


def test_ends_pairs_the_largest_level_with_the_smallest_on_the_keys():
    scale = scale_frame(1.0, 1.0, noise=0.0)
    a, b = analyze.ends(scale, "input_scale", "weight_grad_level", list(KEYS) + ["skip"],
                        smallest_first=False)  # fmt: skip
    assert len(a) == len(b) == 2 * 2 * 2 * 3 * 2
    np.testing.assert_allclose(a - b, 2.0)  # scale 1 vs 0.01: two decades, every pair
    a, b = analyze.ends(scale, "input_scale", "weight_grad_level", list(KEYS) + ["skip"],
                        smallest_first=True)  # fmt: skip
    np.testing.assert_allclose(a - b, -2.0)


def test_scale_shrink_is_the_loss_from_the_largest_to_the_smallest_scale():
    shrink = analyze._scale_shrink(scale_frame(1.0, 0.25, noise=0.0))
    by_skip = shrink.groupby("skip")["weight_grad_shrink"]
    np.testing.assert_allclose(by_skip.min(), by_skip.max())
    assert by_skip.mean().to_dict() == pytest.approx({"none": 2.0, "residual": 0.5})
    assert analyze._scale_shrink(scale_frame(1.0, 1.0).query("input_scale == 1.0")).empty


def c14(part: str) -> analyze.Hypothesis:
    [h] = [h for h in analyze.HYPOTHESES if h.part == part]
    return h


@pytest.mark.parametrize(
    ("plain", "residual", "a_sign", "b_sign"),
    [
        (1.0, 0.3, +1, +1),  # residual nets shrink, but less: the article's claim
        (0.3, 1.0, +1, -1),  # residual nets shrink more than plain ones: C14b refuted
        (1.0, -0.5, -1, +1),  # residual nets' gradients grow as the inputs shrink
    ],
)
def test_c14_effects_point_the_way_the_data_do(plain, residual, a_sign, b_sign):
    frames = frames_for(scale_frame(plain, residual))
    rng = np.random.default_rng(1)
    a = analyze._evaluate(c14("C14a"), frames, rng)
    b = analyze._evaluate(c14("C14b"), frames, rng)
    assert a["n"] == b["n"] == 24  # 2 activations x 2 inits x 2 depths x 3 seeds
    assert np.sign(a["effect"]) == a_sign and a["pvalue"] < 1e-4
    assert np.sign(b["effect"]) == b_sign and b["pvalue"] < 1e-4
    assert a["effect"] == pytest.approx(2 * residual, abs=0.1)
    assert b["effect"] == pytest.approx(2 * (plain - residual), abs=0.1)


def test_c14_without_a_second_scale_is_not_tested():
    frames = frames_for(scale_frame(1.0, 0.3).query("input_scale == 1.0"))
    row = analyze._evaluate(c14("C14a"), frames, np.random.default_rng(0))
    assert row["note"].startswith("not tested: ") and np.isnan(row["pvalue"])
