"""The phase diagram of plain nets (Poole et al. 2016; Schoenholz et al. 2017): the
correlation map of two inputs, the edge of chaos, and the correlation depth scale xi_c on
both sides of it, at explicit variances (sigma_w^2, sigma_b^2) -- the trainable-depth
figure's 6 xi_c and the phase-diagram table (issue 26).

At the variance fixed point q*, chi_1 = chi(q*) (``study.analysis.meanfield``) is the slope
of the correlation map at c = 1: ordered (chi_1 < 1, correlations go to c* = 1), chaotic
(chi_1 > 1, they settle at c* < 1), critical at chi_1 = 1. Near c*, |c_l - c*| ~
exp(-l / xi_c), xi_c = -1 / ln chi_c, chi_c the map's slope at c*: chi_1 in the ordered
phase, sigma_w^2 E[phi'(u_1) phi'(u_2)] at c* in the chaotic one. With sigma_b^2 > 0, xi_c
is finite on both sides and diverges at the edge; nets train to about 6 xi_c.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import optimize

from study.analysis import meanfield
from study.config import Activation

PAIR_POINTS = 60  # Gauss-Legendre nodes per panel and axis
CRITICAL = 1e-9  # |chi_1 - 1| below this is the edge: xi_c = inf (the quadrature's precision)


def xi_c(activation: Activation | str, sigma_w2: float, sigma_b2: float = 0.0) -> float:
    """The mean-field correlation depth xi_c at (sigma_w^2, sigma_b^2): finite off the edge,
    math.inf at it (chi_1 = 1, e.g. ReLU with He init), NaN where q_l has no fixed point or
    chi_c is not in (0, 1)."""
    return correlation_point(activation, sigma_w2, sigma_b2)[4]


@functools.cache
def correlation_point(
    activation: Activation | str, sigma_w2: float, sigma_b2: float = 0.0
) -> tuple[float, float, float, float, float]:
    """(q*, chi_1, c*, chi_c, xi_c) at (sigma_w^2, sigma_b^2), all NaN without a fixed point q*
    (q_l runs to 0 or grows without bound); xi_c as :func:`xi_c`."""
    q_star = meanfield.fixed_point(activation, sigma_w2, sigma_b2)
    if q_star is None:
        return (math.nan,) * 5
    chi_1 = meanfield.chi(activation, q_star, sigma_w2)
    if abs(chi_1 - 1.0) < CRITICAL:
        return q_star, chi_1, 1.0, chi_1, math.inf
    if chi_1 < 1.0:
        return q_star, chi_1, 1.0, chi_1, -1.0 / math.log(chi_1)
    c_star = _correlation_fixed_point(activation, q_star, sigma_w2, sigma_b2)
    g = meanfield.dphi(activation)
    chi_c = sigma_w2 * pair_expectation(g, g, q_star, c_star)
    return q_star, chi_1, c_star, chi_c, (-1.0 / math.log(chi_c) if 0 < chi_c < 1 else math.nan)


def correlation_map(
    activation: Activation | str, c: float, q_star: float, sigma_w2: float, sigma_b2: float = 0.0
) -> float:
    """The next layer's correlation of two inputs at variance q* and correlation c:
    (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*."""
    f = meanfield.phi(activation)
    return (sigma_w2 * pair_expectation(f, f, q_star, c) + sigma_b2) / q_star


@functools.cache
def _panels(split: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and normal-density weights on [-Z_MAX, Z_MAX], Gauss-Legendre on the panels
    [0, split], [split, Z_MAX] of each half-line (one panel if split is outside)."""
    edges = [0.0, split, meanfield.Z_MAX] if 0 < split < meanfield.Z_MAX else [0.0, meanfield.Z_MAX]
    x, w = np.polynomial.legendre.leggauss(PAIR_POINTS)
    z = np.concatenate(
        [lo + (hi - lo) * (x + 1) / 2 for lo, hi in zip(edges, edges[1:], strict=False)]
    )
    wz = np.concatenate([(hi - lo) / 2 * w for lo, hi in zip(edges, edges[1:], strict=False)])
    wz = wz * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    return np.concatenate([-z[::-1], z]), np.concatenate([wz[::-1], wz])


def pair_expectation(f: Callable, g: Callable, q: float, c: float) -> float:
    """E[f(u_1) g(u_2)] for (u_1, u_2) Gaussian, variance q each, correlation c.

    u_1 = sqrt(q) z_1 and u_2 = sqrt(q) (c z_1 + s z_2), s = sqrt(1 - c^2). The inner
    integral over z_2 is split where u_2 = 0, z_2 = -c z_1 / s, so that the kink of the ReLU
    family (and of ELU, SELU in phi') is a panel's edge. As a function of z_1 that inner
    integral then turns over within ~s / |c| of 0 (a step smoothed to width s): the outer
    rule adds a panel edge at 8 s / |c| besides 0, or c = 0.999 loses 5e-10 on 60 nodes.
    Exact to ~1e-12 for every activation of the grid.
    """
    s = math.sqrt(max(1.0 - c * c, 0.0))
    z1, w1 = _panels(round(8 * s / abs(c), 6) if c else math.inf)
    if s < 1e-12:  # u_2 = u_1
        u = math.sqrt(q) * z1
        return float(np.sum(w1 * f(u) * g(u)))
    x, w = np.polynomial.legendre.leggauss(PAIR_POINTS)
    z_max = meanfield.Z_MAX
    kink = np.clip(-c * z1 / s, -z_max, z_max)[:, None]
    # Two panels per row, [-Z_MAX, kink] and [kink, Z_MAX], each by Gauss-Legendre.
    lo = (kink + z_max) / 2 * (x + 1) - z_max
    hi = (z_max - kink) / 2 * (x + 1) + kink
    z2 = np.concatenate([lo, hi], axis=1)
    w2 = np.concatenate([(kink + z_max) / 2 * w, (z_max - kink) / 2 * w], axis=1)
    w2 = w2 * np.exp(-(z2**2) / 2) / math.sqrt(2 * math.pi)
    u1 = math.sqrt(q) * np.broadcast_to(z1[:, None], z2.shape)
    u2 = math.sqrt(q) * (c * z1[:, None] + s * z2)
    return float(np.sum(w1[:, None] * w2 * f(u1) * g(u2)))


def _correlation_fixed_point(
    activation: Activation | str, q_star: float, sigma_w2: float, sigma_b2: float
) -> float:
    """c* < 1 in the chaotic phase: the root of map(c) - c below 1.

    map(c) - c is >= 0 at c = -1 (a correlation maps into [-1, 1]) and, just below 1, close
    to -(chi_1 - 1)(1 - c) < 0; c* lies between. Solved by bracketing, not by iterating
    the map: near the edge the map converges like chi_c^l, too slowly to iterate.
    """

    def gap(c: float) -> float:
        return correlation_map(activation, c, q_star, sigma_w2, sigma_b2) - c

    top = next((1.0 - d for d in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6) if gap(1.0 - d) < 0), None)
    if top is None:  # chi_1 - 1 below what the quadrature resolves: c* = 1 to 1e-6
        return 1.0
    return float(optimize.brentq(gap, -1.0, top, xtol=1e-13, rtol=1e-12))


def critical_sigma_w2(
    activation: Activation | str, sigma_b2: float, low: float = 0.1, high: float = 8.0
) -> float | None:
    """The edge of chaos: the smallest sigma_w^2 in [low, high] where chi(q*) crosses 1 at this
    sigma_b^2 (where q* exists); None if it does not cross there.

    chi_1 - 1 is read on 32 log-spaced points, and the first change of sign between two
    neighbours with a fixed point is solved by Brent's method: for SELU at sigma_b^2 = 0.05,
    q* exists only below sigma_w^2 ~ 1.8, and the edge is at 0.90."""

    def gap(sigma_w2: float) -> float:
        q_star = meanfield.fixed_point(activation, sigma_w2, sigma_b2)
        return math.nan if q_star is None else meanfield.chi(activation, q_star, sigma_w2) - 1.0

    grid = np.geomspace(low, high, 32)
    gaps = [gap(w) for w in grid]
    for k in range(len(grid) - 1):
        if np.isfinite(gaps[k]) and np.isfinite(gaps[k + 1]) and gaps[k] * gaps[k + 1] <= 0:
            return float(optimize.brentq(gap, grid[k], grid[k + 1], xtol=1e-12, rtol=1e-12))
    return None


COLUMNS = ["sigma_w2", "q_star", "chi_1", "c_star", "chi_c", "xi_c", "six_xi_c", "phase"]


def phase_table(
    activation: Activation | str, sigma_w2_grid: Iterable[float], sigma_b2: float
) -> pd.DataFrame:
    """One row per sigma_w^2 (``COLUMNS``): q*, chi_1, c*, chi_c, xi_c, 6 xi_c (the trainable
    depth of Schoenholz et al.) and the phase: ordered, chaotic, critical (|chi_1 - 1| below
    CRITICAL), or "no fixed point" where q_l does not settle (the rest NaN)."""
    rows = []
    for sigma_w2 in map(float, sigma_w2_grid):
        q_star, chi_1, c_star, chi_c, xi = correlation_point(activation, sigma_w2, sigma_b2)
        phase = ("no fixed point" if math.isnan(q_star) else "critical" if math.isinf(xi)
                 else "ordered" if chi_1 < 1.0 else "chaotic")  # fmt: skip
        rows.append([sigma_w2, q_star, chi_1, c_star, chi_c, xi, 6 * xi, phase])
    return pd.DataFrame(rows, columns=COLUMNS)
