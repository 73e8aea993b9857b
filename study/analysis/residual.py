"""Residual nets without normalization, x_{l+1} = x_l + s phi(W_l x_l + b_l): the stream's
mean, and the gradient's growth that it drives (``study.analysis.theory`` builds its residual
predictions on this).

**The stream carries a mean.** Per example, write m_l = (1/n) sum_i x_{l,i} and
v_l = (1/n) |x_l|^2 for the n units of the stream. Given x_l, the entries of
z_l = W_l x_l + b_l are iid N(0, q_l), q_l = sigma_w^2 v_l + sigma_b^2, and independent of
the entries of x_l (each is a fresh random combination of all of them), so

    m_{l+1} = m_l + s a_l,   v_{l+1} = v_l + 2 s m_l a_l + s^2 E[phi^2],   a_l = E[phi(z)].

An activation with a nonzero mean (ReLU, GELU, ELU, sigmoid) makes the stream drift
along the all-ones direction: for ReLU with He init the stream's mean settles at 80% of
its RMS and its second moment grows by 2.904 per block (s = 1), not the 2 of a stream
without the cross term 2 s m a.

**The gradient.** For an isotropic output gradient g, E|J^T g|^2 = |g|^2 ||J||_F^2 / n for
the Jacobian J from any block to the output, and ||J||_F^2 = E|J u|^2 n for an isotropic
tangent vector u: the backward pass's growth is the forward growth of random
perturbations dx, which needs no gradient-independence assumption. A perturbation moves
as dx_{l+1} = dx_l + s phi'(z_l) * dz_l, dz_l = W_l dx_l, with (z_l, dz_l) iid over units
given the past: Gaussian, Var dz = sigma_w^2 p, Cov(z, dz) = C = sigma_w^2 c, where
p = |dx|^2 / n, c = x . dx / n and mu = (1/n) sum_i dx_i. With Delta = s phi'(z) dz, and
the Gaussian moments alpha = E[z phi'] / q, gamma = E[z phi phi'] / q, e = E[phi'^2],
beta = E[z^2 phi'^2] / q^2 (Stein's lemma: dz = (C/q) z + an independent part):

    mu'  = mu + s sigma_w^2 alpha c
    c'   = (1 + s sigma_w^2 alpha m + s^2 sigma_w^2 gamma) c + s a mu
    E p' = (1 + s^2 sigma_w^2 e) p + 2 s sigma_w^2 alpha E[mu c]
           + s^2 sigma_w^4 (beta - e/q) E[c^2].

The first term of p' is mean field's 1 + s^2 chi_branch. The pair (mu, c) -- the
perturbation's component along the all-ones direction and along the stream -- is a
second, structured mode: it holds dx = x (then it is the stream's own growth, 2.904 per
block for ReLU), and it grows faster than the bulk whenever the stream drifts. Its
second moments Sigma = E[(mu, c)(mu, c)'] move as Sigma' = A Sigma A' + (p/n) K: A is the
linear map above, and (p/n) K the covariance of the sums over units that the means replace
(each a sum of n independent terms), K = s^2 sigma_w^2 times

    [[e,                 m e + s E[phi phi'^2]],
     [m e + s E[phi phi'^2], v e + 2 s m E[phi phi'^2] + s^2 E[phi^2 phi'^2] + Var(phi)/sigma_w^2]]

to leading order in 1/n. An isotropic start has p = 1 and Sigma = (1/n) [[1, m], [m, v]]:
the structured mode starts at a 1/n share, and is fed a 1/n share of the bulk at every
block. So mean field holds over the first ~ln(n) / ln(f/(1 + s^2 chi)) blocks from the
output (13 for ReLU at s = 1, n = 128) and the structured growth f beyond: the excess
does not fade with width, it moves further from the output. As n -> infinity at a fixed
depth, only the bulk remains.

What the probe measures is the gradient at a block's Linear output, s phi'(z_l) * G_{l+1}:
a perturbation phi'(z_l) * u of the stream x_{l+1} = x_l + s phi(z_l), with p = e_l and
Sigma = (1/n) [[e, m e + s E[phi phi'^2]], [., v e + 2 s m E[phi phi'^2] + s^2 E[phi^2 phi'^2]]]
at block l. Each state (p, Sigma) is four numbers moved by a linear map per block, so the
whole profile costs one backward sweep with the transposed maps.

**The output gradient** is not isotropic: for one example it is g = W' r with
r = softmax(W x_L + b) - e_y, and a saturated softmax picks the class whose logit is largest,
which leans along the stream. Write the projections of the head's rows w_k (iid
N(0, sigma_h^2 / n) entries) on e_1 = 1/sqrt(n) and e_2 = (x_L - m 1)/|x_L - m 1| as
(sigma_h / sqrt(n)) omega_k and (sigma_h / sqrt(n)) eta_k: omega, eta iid N(0, 1), the logits
sigma_h (m omega + sqrt(v - m^2) eta) + b, and the rest of w_k independent of r. Then

    E[g g'] = (sigma_h^2 / n) E|r|^2
              [I + D_oo e_1 e_1' + D_oe (e_1 e_2' + e_2 e_1') + D_ee e_2 e_2'],

D_oo = E[(r.omega)^2] / E|r|^2 - 1, D_oe = E[(r.omega)(r.eta)] / E|r|^2,
D_ee = E[(r.eta)^2] / E|r|^2 - 1 (all 0 if r ignored the logits). Since
E|D J' g|^2 = E_u[(J D u)' E[g g'] (J D u)], the profile reads at the output, instead of p,

    p + D_oo mu^2 + 2 D_oe mu (c - m mu) / sqrt(v - m^2) + D_ee (c - m mu)^2 / (v - m^2)

(a perturbation y has y.e_1 = sqrt(n) mu and y.e_2 = sqrt(n) (c - m mu) / sqrt(v - m^2)). The
D are expectations over omega, eta, the head's bias and a uniform label: a quasi-Monte
Carlo rule (unscrambled Sobol points, the same every run). For ReLU at depth 16 (width
128) they lift the predicted rate by 0.007-0.011 decades per layer, onto the measured one
(24 seeds: 0.190 +- 0.003 predicted 0.189 with He, 0.122 +- 0.002 / 0.121 with Xavier,
0.049 +- 0.001 / 0.050 with PyTorch's default).

Assumed: the stream's m, v at their mean-field values (deterministic), and each block's
fresh weights Gaussian. The profile is the expected squared gradient, while a cell's rate
is the mean of its nets' slopes of the log: the head's W 1 is one draw per net, so the two
differ (in a Gaussian simulation of 200 ReLU nets of depth 16 the mean slope was 0.005
below the predicted one). Checked against simulations and the project's own probes in
tests/test_theory.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from scipy.stats import qmc

from study.analysis import meanfield
from study.config import Activation


@dataclass(frozen=True)
class Moments:
    """Gaussian moments of the branch at pre-activation variance q (see the module doc)."""

    q: float
    a: float  # E[phi]
    second: float  # E[phi^2]
    e: float  # E[phi'^2]
    alpha: float  # E[z phi'] / q
    gamma: float  # E[z phi phi'] / q
    beta: float  # E[z^2 phi'^2] / q^2
    phi_e: float  # E[phi phi'^2]
    phi2_e: float  # E[phi^2 phi'^2]


def moments(activation: Activation | str, q: float) -> Moments:
    f, g = meanfield.phi(activation), meanfield.dphi(activation)

    def mean(h) -> float:
        return meanfield.gauss(h, q)

    return Moments(
        q=q,
        a=mean(f),
        second=mean(lambda u: f(u) ** 2),
        e=mean(lambda u: g(u) ** 2),
        alpha=mean(lambda u: u * g(u)) / q,
        gamma=mean(lambda u: u * f(u) * g(u)) / q,
        beta=mean(lambda u: u**2 * g(u) ** 2) / q**2,
        phi_e=mean(lambda u: f(u) * g(u) ** 2),
        phi2_e=mean(lambda u: f(u) ** 2 * g(u) ** 2),
    )


def stream(
    activation: Activation | str,
    variance: float,
    sigma_w2: float,
    depth: int,
    sigma_b2: float = 0.0,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[Moments]]:
    """The stream's per-unit mean m_l and second moment v_l for l = 0 .. depth (block l reads
    x_l; x_depth goes to the head; m_0 = 0, v_0 = ``variance``: the stem's output), and the
    moments of each block."""
    m, v = np.zeros(depth + 1), np.zeros(depth + 1)
    blocks = []
    m[0], v[0] = 0.0, variance
    for layer in range(depth):
        b = moments(activation, sigma_w2 * v[layer] + sigma_b2)
        blocks.append(b)
        m[layer + 1] = m[layer] + scale * b.a
        v[layer + 1] = v[layer] + 2 * scale * m[layer] * b.a + scale**2 * b.second
    return m, v, blocks


@dataclass(frozen=True)
class Head:
    """The linear head on the stream (fan-in sigma_w^2 and bias variance of its init) and
    the softmax cross-entropy over ``classes`` on top of it."""

    sigma_w2: float
    sigma_b2: float = 0.0
    classes: int = 10


HEAD_POINTS = 14  # log2 of the quasi-Monte Carlo points for the head's D


@functools.cache
def _head_points(classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """omega, eta (standard normal) and the bias's shape (uniform on [-1, 1]), one row per
    point: unscrambled Sobol points, the origin left out (its normal quantile is -inf)."""
    u = qmc.Sobol(3 * classes, scramble=False).random_base2(HEAD_POINTS)[1:]
    k = classes
    return special.ndtri(u[:, :k]), special.ndtri(u[:, k : 2 * k]), 2 * u[:, 2 * k :] - 1


def head_overlaps(head: Head, m: float, v: float) -> tuple[float, float, float]:
    """(D_oo, D_oe, D_ee) of the module doc for a stream x_L with per-unit mean m and second
    moment v: how much the output gradient leans on the all-ones direction and the stream's."""
    omega, eta, shape = _head_points(head.classes)
    spread = math.sqrt(max(v - m * m, 0.0))
    # PyTorch's default bias is uniform(+-b): b = sqrt(3 Var).
    logits = math.sqrt(head.sigma_w2) * (m * omega + spread * eta)
    logits = logits + math.sqrt(3 * head.sigma_b2) * shape
    prob = special.softmax(logits, axis=1)
    # Every label in turn, equally likely: r = prob - e_y, so r.w = prob.w - w_y.
    r_omega = (prob * omega).sum(1, keepdims=True) - omega  # (points, label)
    r_eta = (prob * eta).sum(1, keepdims=True) - eta
    r2 = ((prob**2).sum(1, keepdims=True) - 2 * prob + 1).mean()
    return (float((r_omega**2).mean() / r2 - 1), float((r_omega * r_eta).mean() / r2),
            float((r_eta**2).mean() / r2 - 1))  # fmt: skip


def _transfer(b: Moments, m: float, v: float, sigma_w2: float, s: float, n: float) -> np.ndarray:
    """The linear map of one block on the state (p, S_mm, S_mc, S_cc) (the module doc)."""
    a00, a01 = 1.0, s * sigma_w2 * b.alpha
    a10, a11 = s * b.a, 1.0 + s * sigma_w2 * b.alpha * m + s**2 * sigma_w2 * b.gamma
    k = s**2 * sigma_w2 / n
    return np.array([
        [1 + s**2 * sigma_w2 * b.e, 0.0, 2 * s * sigma_w2 * b.alpha,
         s**2 * sigma_w2**2 * (b.beta - b.e / b.q)],
        [k * b.e, a00**2, 2 * a00 * a01, a01**2],
        [k * (m * b.e + s * b.phi_e), a00 * a10, a00 * a11 + a01 * a10, a01 * a11],
        [k * (v * b.e + 2 * s * m * b.phi_e + s**2 * b.phi2_e + (b.second - b.a**2) / sigma_w2),
         a10**2, 2 * a10 * a11, a11**2],
    ])  # fmt: skip


def _readout(head: Head | None, m: float, v: float) -> np.ndarray:
    """What the output gradient reads of a perturbation's state (p, S_mm, S_mc, S_cc): p
    alone for an isotropic one; with the head, its D terms (the module doc)."""
    if head is None:
        return np.array([1.0, 0.0, 0.0, 0.0])
    d_oo, d_oe, d_ee = head_overlaps(head, m, v)
    w = v - m * m
    if w <= 0:  # no spread about the mean: only the all-ones direction is left
        return np.array([1.0, d_oo, 0.0, 0.0])
    return np.array([1.0, d_oo - 2 * d_oe * m / math.sqrt(w) + d_ee * m * m / w,
                     2 * d_oe / math.sqrt(w) - 2 * d_ee * m / w, d_ee / w])  # fmt: skip


def linear_output_profile(
    activation: Activation | str,
    variance: float,
    sigma_w2: float,
    depth: int,
    width: float,
    sigma_b2: float = 0.0,
    scale: float = 1.0,
    head: Head | None = None,
) -> np.ndarray:
    """E|dL/dz_l|^2 for blocks l = 0 .. depth - 1 (the probe's signal gradient, squared), in
    units of the output gradient's |g|^2 / n; isotropic without a ``head``.
    ``width`` = math.inf gives mean field (the head's D then drop out too)."""
    m, v, blocks = stream(activation, variance, sigma_w2, depth, sigma_b2, scale)
    s, n = scale, float(width)
    adjoint = _readout(head, m[depth], v[depth])
    profile = np.empty(depth)
    for layer in range(depth - 1, -1, -1):
        if layer < depth - 1:
            nxt = layer + 1
            adjoint = adjoint @ _transfer(blocks[nxt], m[nxt], v[nxt], sigma_w2, s, n)
        b = blocks[layer]
        cross = m[layer] * b.e + s * b.phi_e  # E[x_{l+1} phi'^2] per unit
        square = v[layer] * b.e + 2 * s * m[layer] * b.phi_e + s**2 * b.phi2_e
        start = np.array([b.e, b.e / n, cross / n, square / n])
        profile[layer] = s**2 * adjoint @ start
    return profile


def stream_gradient_profile(
    activation: Activation | str,
    variance: float,
    sigma_w2: float,
    depth: int,
    width: float,
    sigma_b2: float = 0.0,
    scale: float = 1.0,
) -> np.ndarray:
    """E|dL/dx_l|^2 of the stream for l = 0 .. depth (x_depth: the output), for an isotropic
    output gradient with |g|^2 / n = 1: an isotropic perturbation of x_l carried forward."""
    m, v, blocks = stream(activation, variance, sigma_w2, depth, sigma_b2, scale)
    n = float(width)
    adjoint = _readout(None, m[depth], v[depth])
    profile = np.empty(depth + 1)
    for layer in range(depth, -1, -1):
        if layer < depth:
            adjoint = adjoint @ _transfer(blocks[layer], m[layer], v[layer], sigma_w2, scale, n)
        profile[layer] = adjoint @ np.array([1.0, 1 / n, m[layer] / n, v[layer] / n])
    return profile


def residual_factors(
    activation: Activation | str,
    stream_variance: float,
    sigma_w2: float,
    depth: int,
    width: float = math.inf,
    sigma_b2: float = 0.0,
    scale: float = 1.0,
    head: Head | None = None,
) -> np.ndarray:
    """Per-block factors g_l^2 / g_{l+1}^2 of the gradient at the block Linears' outputs
    (:func:`linear_output_profile`); the last entry (no block above) is NaN. At infinite
    width, (1 + s^2 chi(q_{l+1})) e(q_l) / e(q_{l+1}) along the drifting stream."""
    profile = linear_output_profile(activation, stream_variance, sigma_w2, depth, width,
                                    sigma_b2, scale, head)  # fmt: skip
    factors = np.full(depth, np.nan)
    factors[:-1] = profile[:-1] / profile[1:]
    return factors


def residual_backward_factors(
    width: int,
    blocks: int = 64,
    reuse_forward_weights: bool = True,
    centre_branch: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Per-block growth of the squared stream gradient of a He-initialised residual ReLU
    stack x + relu(W x), from an isotropic output gradient on 16 inputs, in float64 (the
    Gaussian draws in float32: a quarter of the cost, and these draws are most of it); index 0
    is the block nearest the output. A simulation, to check :func:`residual_factors` on.

    ``reuse_forward_weights=False`` draws fresh weights for the backward pass: mean field's
    gradient independence, 1 + chi_branch = 2 per block. ``centre_branch`` subtracts the
    branch's per-example mean over units, x + P relu(W x) with P = I - 11'/n: the stream no
    longer drifts, and the excess goes with it."""
    gen = torch.Generator().manual_seed(seed)

    def weight() -> torch.Tensor:
        return torch.randn(width, width, generator=gen).double() * math.sqrt(2 / width)

    def centre(h: torch.Tensor) -> torch.Tensor:
        return h - h.mean(dim=1, keepdim=True) if centre_branch else h

    x = torch.randn(16, width, generator=gen).double()
    weights, pre = [weight() for _ in range(blocks)], []
    for w in weights:
        pre.append(x @ w.T)
        x = x + centre(torch.relu(pre[-1]))
    g, factors = torch.randn(16, width, generator=gen).double(), []
    for w, h in zip(reversed(weights), reversed(pre), strict=True):
        w = w if reuse_forward_weights else weight()
        new = g + ((h > 0).double() * centre(g)) @ w  # P is symmetric: P' g = centre(g)
        factors.append((new.pow(2).sum() / g.pow(2).sum()).item())
        g = new
    return np.array(factors)
