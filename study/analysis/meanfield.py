"""Mean-field recursions of a plain network at initialization (Poole et al. 2016;
Schoenholz et al. 2017): the Gaussian machinery ``study.analysis.theory`` builds its predictions on.

For weight variance sigma_w^2 / fan_in and bias variance sigma_b^2, the pre-activations of
layer l are Gaussian with variance

    q_l = sigma_w^2 E[phi(sqrt(q_{l-1}) z)^2] + sigma_b^2,       z ~ N(0, 1),

and going one layer back toward the input multiplies the squared signal gradient by

    chi(q) = sigma_w^2 E[phi'(sqrt(q) z)^2].

Gaussian expectations are deterministic quadratures, no sampling. Gauss-Hermite on the
whole line converges slowly across the kink the ReLU family (and ELU, SELU in phi') has at
0 -- 200 nodes leave a 0.2% error in the batch-norm ReLU rate -- so the line is split at 0
and each half integrated against the normal density by Gauss-Legendre on [0, 12] (the
density beyond is below 1e-31): exact to ~1e-12 for every activation of the grid. The
activation functions are the very modules the networks use (``study.engine.nets``), evaluated in
float64, with phi' from autograd.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from scipy import optimize

from study.config import Activation
from study.engine import nets

QUADRATURE_POINTS = 120  # Gauss-Legendre nodes on each half-line
PAIR_POINTS = 60  # per half-line or panel and axis, for the two-dimensional expectations
Z_MAX = 12.0  # the normal density at 12 is 5e-32
# Below this the tanh-like maps have no nonzero fixed point: q_l decays to 0 like 1/l.
Q_FLOOR = 1e-12


@functools.cache
def _nodes(points: int = QUADRATURE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z_i and weights w_i with E[f(z)] = sum(w_i f(z_i)), z ~ N(0, 1)."""
    x, w = np.polynomial.legendre.leggauss(points)
    x, w = Z_MAX * (x + 1) / 2, Z_MAX * w / 2  # on [0, Z_MAX]
    w = w * np.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)
    return np.concatenate([-x[::-1], x]), np.concatenate([w[::-1], w])


def gauss(f: Callable[[np.ndarray], np.ndarray], q: float = 1.0) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1), by quadrature on each half-line."""
    z, w = _nodes()
    return float(np.sum(w * f(math.sqrt(q) * z)))


@functools.cache
def _activation(activation: Activation) -> tuple[Callable, Callable]:
    """(phi, phi') as numpy functions, from the network's own activation module."""
    if activation == "linear":  # not a grid choice; the closed form chi = sigma_w^2 uses it
        return (lambda u: u), (lambda u: np.ones_like(u))
    module = nets.ACTIVATIONS[Activation(activation)].make().double()

    def phi(u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(u, dtype=torch.float64)).numpy()

    def dphi(u: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(u, dtype=torch.float64).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(x).sum(), x)
        return grad.numpy()

    return phi, dphi


def phi(activation: Activation | str) -> Callable[[np.ndarray], np.ndarray]:
    return _activation(activation)[0]


def dphi(activation: Activation | str) -> Callable[[np.ndarray], np.ndarray]:
    return _activation(activation)[1]


# ------------------------------------------------------------------------- plain networks


def q_map(activation: Activation | str, q: float, sigma_w2: float, sigma_b2: float = 0.0) -> float:
    """The variance of the next pre-activation: sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    f = phi(activation)
    return sigma_w2 * gauss(lambda u: f(u) ** 2, q) + sigma_b2


def chi(activation: Activation | str, q: float, sigma_w2: float) -> float:
    """Per-layer factor of the squared signal gradient at pre-activation variance q."""
    g = dphi(activation)
    return sigma_w2 * gauss(lambda u: g(u) ** 2, q)


def q_sequence(
    activation: Activation | str, q1: float, sigma_w2: float, depth: int, sigma_b2: float = 0.0
) -> np.ndarray:
    """q_1 ... q_depth from the first block's pre-activation variance q1."""
    q = np.empty(depth)
    q[0] = q1
    for layer in range(1, depth):
        q[layer] = max(q_map(activation, q[layer - 1], sigma_w2, sigma_b2), Q_FLOOR)
    return q


@functools.cache
def fixed_point(
    activation: Activation | str, sigma_w2: float, sigma_b2: float = 0.0, q0: float = 1.0
) -> float | None:
    """The stable nonzero fixed point q* of the variance map; None where q_l runs to 0 (tanh
    at sigma_w^2 <= 1 without biases) or grows without bound. Where every q is a fixed point
    (ReLU with He init) it is q0."""
    grid = np.logspace(-8, 8, 161)
    gap = np.array([q_map(activation, q, sigma_w2, sigma_b2) / q - 1.0 for q in grid])
    if np.all(np.abs(gap) < 1e-9):
        return q0
    # A stable fixed point: the map lifts q below it and lowers q above it.
    for k in np.flatnonzero((gap[:-1] > 0) & (gap[1:] <= 0)):
        return float(
            optimize.brentq(
                lambda q: q_map(activation, q, sigma_w2, sigma_b2) / q - 1.0,
                grid[k], grid[k + 1], xtol=1e-14, rtol=1e-12,
            )
        )  # fmt: skip
    return None


def depth_scale(
    activation: Activation | str, sigma_w2: float, sigma_b2: float = 0.0
) -> float | None:
    """Schoenholz et al.'s correlation depth scale xi_c = -1 / ln(chi_c), where defined.

    Ordered phase (chi(q*) < 1): inputs' correlations go to c* = 1, chi_c = chi(q*).
    Chaotic phase (chi(q*) > 1): c* < 1 and chi_c = sigma_w^2 E[phi'(u_1) phi'(u_2)] there.
    At the edge (chi(q*) = 1, e.g. ReLU with He init) xi_c is infinite. None without q*.
    """
    point = correlation_point(activation, sigma_w2, sigma_b2)
    return None if point is None else point[4]


def correlation_point(
    activation: Activation | str, sigma_w2: float, sigma_b2: float = 0.0
) -> tuple[float, float, float, float, float | None] | None:
    """(q*, chi_1, c*, chi_c, xi_c) at (sigma_w^2, sigma_b^2); None without a fixed point q*.

    chi_1 = chi(q*) is the slope of the correlation map at c = 1 (Poole et al. 2016), so
    c = 1 is stable (ordered) for chi_1 < 1 and unstable (chaotic) for chi_1 > 1, where the
    inputs' correlation settles at c* < 1 instead. chi_c is the map's slope at c*, and
    |c_l - c*| ~ exp(-l / xi_c). xi_c is None where chi_c is not in (0, 1].
    """
    q_star = fixed_point(activation, sigma_w2, sigma_b2)
    if q_star is None:
        return None
    chi_1 = chi(activation, q_star, sigma_w2)
    if abs(chi_1 - 1.0) < 1e-9:
        return q_star, chi_1, 1.0, chi_1, math.inf
    if chi_1 < 1.0:
        return q_star, chi_1, 1.0, chi_1, -1.0 / math.log(chi_1)
    c_star = _correlation_fixed_point(activation, q_star, sigma_w2, sigma_b2)
    g = dphi(activation)
    chi_c = sigma_w2 * _pair_expectation(g, g, q_star, c_star)
    xi_c = -1.0 / math.log(chi_c) if 0.0 < chi_c < 1.0 else None
    return q_star, chi_1, c_star, chi_c, xi_c


def correlation_map(
    activation: Activation | str, c: float, q_star: float, sigma_w2: float, sigma_b2: float = 0.0
) -> float:
    """The next layer's correlation of two inputs at variance q* and correlation c:
    (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*."""
    f = phi(activation)
    return (sigma_w2 * _pair_expectation(f, f, q_star, c) + sigma_b2) / q_star


def _pair_expectation(f: Callable, g: Callable, q: float, c: float) -> float:
    """E[f(u_1) g(u_2)] for (u_1, u_2) Gaussian, variance q each, correlation c.

    u_1 = sqrt(q) z_1 and u_2 = sqrt(q) (c z_1 + s z_2), s = sqrt(1 - c^2). The outer
    integral over z_1 is split at 0 like :func:`gauss`; the inner one over z_2 at the point
    where u_2 = 0, -c z_1 / s, so that the kink of the ReLU family (and of ELU, SELU in phi')
    falls on a panel's edge in both: exact to ~1e-12, as the one-dimensional rule.
    """
    z1, w1 = _nodes(PAIR_POINTS)
    s = math.sqrt(max(1.0 - c * c, 0.0))
    if s < 1e-12:  # u_2 = u_1
        u = math.sqrt(q) * z1
        return float(np.sum(w1 * f(u) * g(u)))
    x, w = np.polynomial.legendre.leggauss(PAIR_POINTS)
    kink = np.clip(-c * z1 / s, -Z_MAX, Z_MAX)[:, None]
    # Two panels per row, [-Z_MAX, kink] and [kink, Z_MAX], each by Gauss-Legendre.
    lo = (kink + Z_MAX) / 2 * (x + 1) - Z_MAX
    hi = (Z_MAX - kink) / 2 * (x + 1) + kink
    z2 = np.concatenate([lo, hi], axis=1)
    w2 = np.concatenate([(kink + Z_MAX) / 2 * w, (Z_MAX - kink) / 2 * w], axis=1)
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

    top = None
    for delta in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        if gap(1.0 - delta) < 0:
            top = 1.0 - delta
            break
    if top is None:  # chi_1 - 1 below what the quadrature resolves: c* = 1 to 1e-6
        return 1.0
    return float(optimize.brentq(gap, -1.0, top, xtol=1e-13, rtol=1e-12))


# ------------------------------------------------------------------- the phase diagram


def critical_sigma_w2(
    activation: Activation | str, sigma_b2: float, low: float = 0.1, high: float = 8.0
) -> float | None:
    """The edge of chaos: the smallest sigma_w^2 in [low, high] where chi(q*) crosses 1 at this
    sigma_b^2 (where q* exists); None if it does not cross there.

    chi_1 - 1 is read on 32 log-spaced points, and the first change of sign between two
    neighbours with a fixed point is solved by Brent's method: for SELU at sigma_b^2 = 0.05,
    q* exists only below sigma_w^2 ~ 1.8, and the edge is at 0.90."""

    def gap(sigma_w2: float) -> float:
        q_star = fixed_point(activation, sigma_w2, sigma_b2)
        return math.nan if q_star is None else chi(activation, q_star, sigma_w2) - 1.0

    grid = np.geomspace(low, high, 32)
    gaps = [gap(w) for w in grid]
    for k in range(len(grid) - 1):
        if np.isfinite(gaps[k]) and np.isfinite(gaps[k + 1]) and gaps[k] * gaps[k + 1] <= 0:
            return float(optimize.brentq(gap, grid[k], grid[k + 1], xtol=1e-12, rtol=1e-12))
    return None


def phase_table(
    activation: Activation | str, sigma_b2: float, sigma_w2s: Iterable[float]
) -> pd.DataFrame:
    """Per sigma_w^2: q*, chi_1, c*, chi_c, xi_c and the phase (ordered, chaotic, or critical
    where chi_1 = 1 to 1e-9); q* and the rest NaN, phase "no fixed point", where q_l does
    not settle (it runs to 0 or grows without bound)."""
    rows = []
    for sigma_w2 in sigma_w2s:
        point = correlation_point(activation, float(sigma_w2), sigma_b2)
        if point is None:
            rows.append({"sigma_w2": float(sigma_w2), "phase": "no fixed point"})
            continue
        q_star, chi_1, c_star, chi_c, xi_c = point
        phase = ("critical" if abs(chi_1 - 1.0) < 1e-9
                 else "ordered" if chi_1 < 1.0 else "chaotic")  # fmt: skip
        rows.append({"sigma_w2": float(sigma_w2), "q_star": q_star, "chi_1": chi_1,
                     "c_star": c_star, "chi_c": chi_c,
                     "xi_c": math.nan if xi_c is None else xi_c, "phase": phase})  # fmt: skip
    columns = ["sigma_w2", "q_star", "chi_1", "c_star", "chi_c", "xi_c", "phase"]
    return pd.DataFrame(rows).reindex(columns=columns)
