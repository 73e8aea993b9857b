"""Mean-field predictions of gradient flow at initialization, for every cell of the grid.

For a plain network with weight variance sigma_w^2 / fan_in and bias variance sigma_b^2
(Poole et al. 2016; Schoenholz et al. 2017), the pre-activations of layer l are Gaussian
with variance

    q_l = sigma_w^2 E[phi(sqrt(q_{l-1}) z)^2] + sigma_b^2,       z ~ N(0, 1),

and going one layer back toward the input multiplies the squared signal gradient by

    chi(q) = sigma_w^2 E[phi'(sqrt(q) z)^2].

The predicted per-layer log10 ratio of the signal gradient is therefore 0.5 log10 chi
(the ``log10_rate`` of ``study.probes``). With normalization the statistics of the
normalized pre-activation are fixed, and in the large-batch limit (Yang et al. 2019)

    batch norm: chi = E[phi'(z)^2] / Var[phi(z)],   layer norm: chi = E[phi'(z)^2] / E[phi(z)^2].

A residual block x + f(x) without normalization multiplies it by 1 + chi_branch.

Gaussian expectations are deterministic Gaussian quadratures, no sampling. Gauss-Hermite on
the whole line converges slowly across the kink the ReLU family (and ELU, SELU in phi') has
at 0 -- 200 nodes leave a 0.2% error in the batch-norm ReLU rate -- so the line is split
at 0 and each half integrated against the normal density by Gauss-Legendre on [0, 12]
(the density beyond is below 1e-31): exact to ~1e-12 for every activation of the grid.
The activation functions are the very modules the networks use (``study.nets``),
evaluated in float64, with phi' from autograd.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from study import nets
from study.config import Activation, Init, Norm, Skip
from study.probes import interior

QUADRATURE_POINTS = 120  # Gauss-Legendre nodes on each half-line
PAIR_POINTS = 60  # per half-line and axis, for the two-dimensional expectations
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
    q_star = fixed_point(activation, sigma_w2, sigma_b2)
    if q_star is None:
        return None
    chi_1 = chi(activation, q_star, sigma_w2)
    if abs(chi_1 - 1.0) < 1e-9:
        return math.inf
    if chi_1 < 1.0:
        return -1.0 / math.log(chi_1)
    c_star = _correlation_fixed_point(activation, q_star, sigma_w2, sigma_b2)
    g = dphi(activation)
    chi_c = sigma_w2 * _pair_expectation(g, g, q_star, c_star)
    return -1.0 / math.log(chi_c) if 0.0 < chi_c < 1.0 else None


def _pair_expectation(f: Callable, g: Callable, q: float, c: float) -> float:
    """E[f(u_1) g(u_2)] for (u_1, u_2) Gaussian, variance q each, correlation c.

    A product rule on a coarser grid: the kink of u_2 does not fall on a node line, so this
    is accurate to ~1e-4, enough for a depth scale.
    """
    z, w = _nodes(PAIR_POINTS)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(max(1.0 - c * c, 0.0)) * z2)
    return float(np.sum(np.outer(w, w) * f(u1) * g(u2)))


def _correlation_fixed_point(
    activation: Activation | str, q_star: float, sigma_w2: float, sigma_b2: float
) -> float:
    f = phi(activation)
    c = 0.5
    for _ in range(500):
        nxt = (sigma_w2 * _pair_expectation(f, f, q_star, c) + sigma_b2) / q_star
        nxt = min(max(nxt, -1.0), 1.0)
        if abs(nxt - c) < 1e-10:
            return nxt
        c = nxt
    return c


# ------------------------------------------------------------------- normalized and skips


@functools.cache
def batchnorm_chi(activation: Activation | str) -> float:
    """Large-batch rate with batch norm before the activation: E[phi'^2] / Var[phi]."""
    f, g = phi(activation), dphi(activation)
    mean = gauss(f)
    return gauss(lambda u: g(u) ** 2) / (gauss(lambda u: f(u) ** 2) - mean**2)


def finite_batch_rate(chi_large_batch: float, batch_size: int) -> float:
    """The batch-norm rate at batch size B, to first order: 0.5 log10(chi (B - 2) / (B - 1)).

    Backward through batch norm, a unit's batch gradient is projected off the batch-mean
    and normalized-input directions (keeping (B - 2)/B of an isotropic gradient's squared
    norm) and divided by the batch's own standard deviation, whose squared estimate is
    biased low by (B - 1)/B. The large-batch limit is ``batchnorm_chi``.
    """
    b = batch_size
    return 0.5 * math.log10(chi_large_batch * (b - 2) / (b - 1))


@functools.cache
def layernorm_chi(activation: Activation | str) -> float:
    """Large-width rate with layer norm before the activation: E[phi'^2] / E[phi^2]."""
    f, g = phi(activation), dphi(activation)
    return gauss(lambda u: g(u) ** 2) / gauss(lambda u: f(u) ** 2)


def residual_chis(
    activation: Activation | str, q1: float, sigma_w2: float, depth: int, sigma_b2: float = 0.0
) -> np.ndarray:
    """Per-block factors 1 + chi_branch(q_l) of x + f(x) blocks without normalization.

    The stream's variance grows by the branch's output each block, so q_l is carried along.
    """
    chis = np.empty(depth)
    stream = q1 / sigma_w2  # the stem's output variance, read by block 1's Linear
    for layer in range(depth):
        q = sigma_w2 * stream + sigma_b2
        chis[layer] = 1.0 + chi(activation, q, sigma_w2)
        stream += q_map(activation, q, sigma_w2=1.0)  # E[phi^2]: the branch's output
    return chis


# -------------------------------------------------------------------- a cell of the grid


@dataclass(frozen=True)
class Prediction:
    """What mean-field theory says about one cell at initialization."""

    sigma_w2: float
    q_star: float | None  # fixed point of the variance map (plain nets), None if none
    chi: float | None  # per-layer squared-gradient factor (geometric mean over the fit)
    log10_rate: float | None  # predicted signal ``log10_rate``: 0.5 log10 chi over the fit
    depth_scale: float | None  # xi_c (plain nets), where defined
    basis: str  # which formula, or why there is none
    # batch norm at the given batch size (``finite_batch_rate``); None otherwise
    log10_rate_finite_batch: float | None = None


def sigma_b2(init: Init, fan_in: int) -> float:
    """Bias variance: zero, except PyTorch's default uniform(+-1/sqrt(fan_in)) biases."""
    return 1.0 / (3.0 * fan_in) if Init(init) is Init.default else 0.0


def predict(
    activation: Activation,
    init: Init,
    norm: Norm,
    skip: Skip,
    depth: int,
    width: int,
    num_features: int,
    input_second_moment: float = 1.0,
    batch_size: int | None = None,
) -> Prediction:
    """The prediction for a cell, on the same interior layers the measurement fits.

    The stem (a Linear from the standardized input, no activation) sets q_1; then each
    factor chi_l links layer l to l + 1, and the predicted rate is the least-squares slope
    of the predicted log10 profile over ``study.probes.interior`` -- the measured rate's fit.
    With batch norm and a ``batch_size``, the finite-batch rate comes along too.
    """
    activation, init, norm, skip = Activation(activation), Init(init), Norm(norm), Skip(skip)
    sw2 = nets.sigma_w2(init, activation, width, width)
    sb2 = sigma_b2(init, width)
    stem = nets.sigma_w2(init, activation, num_features, width)
    q1 = sw2 * (stem * input_second_moment + sigma_b2(init, num_features)) + sb2
    if skip in (Skip.highway, Skip.dense) or (skip is Skip.residual and norm is not Norm.none):
        return Prediction(sw2, None, None, None, None, f"no mean-field rate for {norm}+{skip}")
    if norm is Norm.batch:
        c = batchnorm_chi(activation)
        finite = finite_batch_rate(c, batch_size) if batch_size else None
        return Prediction(
            sw2, None, c, 0.5 * math.log10(c), None, "batch norm, large batch", finite
        )
    if norm is Norm.layer:
        c = layernorm_chi(activation)
        return Prediction(sw2, None, c, 0.5 * math.log10(c), None, "layer norm, large width")
    if skip is Skip.residual:
        chis = residual_chis(activation, q1, sw2, depth, sb2)
        basis = "residual: 1 + chi_branch along the growing stream"
        q_star = None
    else:
        q = q_sequence(activation, q1, sw2, depth, sb2)
        chis = np.array([chi(activation, ql, sw2) for ql in q])
        q_star = fixed_point(activation, sw2, sb2)
        basis = "plain: chi at q_l" + ("" if q_star else " (no fixed point: q_l -> 0)")
    rate = _fitted_rate(chis, depth)
    return Prediction(
        sw2,
        q_star,
        10 ** (2 * rate) if rate is not None else None,
        rate,
        depth_scale(activation, sw2, sb2) if skip is Skip.none else None,
        basis,
    )


def _fitted_rate(chis: np.ndarray, depth: int) -> float | None:
    """Slope of the predicted log10 signal-gradient profile over the fitted layers.

    g_l^2 = chi_l g_{l+1}^2 (the factor at layer l's pre-activation variance), so
    log10 g_l = 0.5 sum_{k >= l} log10 chi_k up to a constant.
    """
    if depth < 2 or np.any(chis <= 0):
        return None
    steps = 0.5 * np.log10(chis[:-1])  # between layer l and l + 1, l = 1 .. depth - 1
    log_g = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    rows = np.arange(depth)[interior(depth)]
    if len(rows) < 2:
        return None
    distance = depth - 1 - rows
    return float(np.polyfit(distance, log_g[rows], 1)[0])
