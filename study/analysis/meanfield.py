"""Mean-field recursions of a plain network at initialization (Poole et al. 2016;
Schoenholz et al. 2017): the Gaussian machinery ``study.analysis.theory`` builds its
predictions on. The correlation map, the edge of chaos and xi_c are in ``study.analysis.phase``.

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
from collections.abc import Callable

import numpy as np
import torch
from scipy import optimize

from study.config import Activation
from study.engine import nets

QUADRATURE_POINTS = 120  # Gauss-Legendre nodes on each half-line
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
