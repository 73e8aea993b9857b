"""Mean-field predictions of gradient flow at initialization, for every cell of the grid.

The per-layer factor chi of the squared signal gradient, and from it the predicted
per-layer log10 ratio 0.5 log10 chi (the ``log10_rate`` of ``study.engine.probes``):

- plain nets: chi(q_l) along the variance map q_l (``study.analysis.meanfield``);
- batch norm before the activation (Yang et al. 2019): E[phi'^2] / Var[phi] for a large
  batch, and the exact infinite-width rate at the probe's batch size B
  (:func:`finite_batch_chi`), which is larger: small batches explode faster;
- layer norm: E[phi'^2] / E[phi^2] (large width);
- residual blocks x + s phi(W x) without norm (``study.analysis.residual``): the stream
  carries a mean when E[phi] != 0, and besides mean field's bulk, growing by
  1 + s^2 chi(q_l) per block, the gradient has a mode along the stream and the all-ones
  direction that starts at a 1/width share and grows as fast as the drifting stream
  (2.904 per block for ReLU at s = 1): the measured residual-ReLU excess. s is the branch's
  factor at init (``ModelConfig.branch_scale``): scale, scale / sqrt(depth), or 0 for
  ReZero, whose blocks are the identity at init (growth 1, rate 0).

Highway, dense and normalized residual nets get no prediction.

**Batch norm's offset, unexplained.** The standard run measures batch-norm nets 0.8-3.2%
above :func:`finite_batch_chi` on the per-layer gradient ratio, for every activation. That
rate is exact at infinite width for the probe's batch (checked by Monte Carlo over
normalized batches in tests/test_theory.py), so the offset is not the batch statistics'
Bessel or 1/(B - 3) terms; what is left -- finite width (the probe's nets have 128 units,
and the weights' own fluctuations enter the product of layers at O(1/width)) -- is a
conjecture, not tested here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import roots_jacobi

from study.analysis import meanfield, phase
from study.analysis.residual import Head, residual_factors
from study.analysis.residual import residual_backward_factors as residual_backward_factors
from study.config import Activation, Init, ModelConfig, Norm, ResidualConfig, Scaling, Skip
from study.engine import nets
from study.engine.probes import interior

# ---------------------------------------------------------------------- normalized nets

LARGE_BATCH = 1024  # beyond this batch size, the finite-batch rate is the large-batch one


@functools.cache
def batchnorm_chi(activation: Activation | str) -> float:
    """Large-batch rate with batch norm before the activation: E[phi'^2] / Var[phi]."""
    f, g = meanfield.phi(activation), meanfield.dphi(activation)
    mean = meanfield.gauss(f)
    return meanfield.gauss(lambda u: g(u) ** 2) / (meanfield.gauss(lambda u: f(u) ** 2) - mean**2)


@functools.cache
def finite_batch_chi(activation: Activation | str, batch_size: int) -> float:
    """The infinite-width batch-norm rate at batch size B (math.inf for B <= 3).

    A unit's pre-activations over the batch, z in R^B, are Gaussian with a covariance that
    is symmetric under permuting the examples, so the normalized vector
    x = sqrt(B) P z / |P z| (P = I - 11'/B) is uniform on the sphere of radius sqrt(B) in
    the B - 1 dimensions orthogonal to 1, independent of |P z|. Backward,
    dx/dz = sqrt(B) Pi / |P z|, with Pi the projection off 1 and x, so an isotropic gradient
    on those dimensions is multiplied per layer by

        chi_B = B E[tr(Pi D P D Pi)] / (c (B - 1)(B - 3)),   D = diag(phi'(x)),

    where 1/(B - 3) is E[1/chi^2_{B-1}] (|P z|^2 over its scale, infinite for B <= 3) and
    c = E[phi(x_1)^2] - E[phi(x_1) phi(x_2)] is that scale's next-layer value. A linear
    net gives (B - 2)/(B - 3); B -> infinity gives ``batchnorm_chi``, which is returned
    beyond B = 1024 (within 0.1% of it there). Every term is an expectation over two
    entries of x, computed exactly by :func:`_batch_pair`.
    """
    b = int(batch_size)
    if b <= 3:
        return math.inf
    if b > LARGE_BATCH:
        return batchnorm_chi(activation)
    f, g = meanfield.phi(activation), meanfield.dphi(activation)
    x1, x2, w = _batch_pair(b)
    f1, f2, d1, d2 = f(x1), f(x2), g(x1), g(x2)

    def mean(values: np.ndarray) -> float:
        return float(np.sum(w * values))

    c = mean(f1**2) - mean(f1 * f2)
    # E tr(D P D P) and E x'D P D x, by exchangeability, from one- and two-entry moments.
    trace = (b - 1) ** 2 / b * mean(d1**2) + (b - 1) / b * mean(d1 * d2)
    along_x = (b - 1) * (mean(x1**2 * d1**2) - mean(x1 * d1 * x2 * d2))
    return b * (trace - along_x / b) / (c * (b - 1) * (b - 3))


@functools.cache
def _batch_pair(b: int, radial: int = 64, angular: int = 32):
    """Nodes (x_1, x_2) and weights for the expectation over two entries of a batch-normalized
    vector of batch size b (see :func:`finite_batch_chi`).

    In an orthonormal basis (e_1, e_perp) of the plane of the two entries' directions, the
    coordinates (s, t) of a uniform point of the (b - 2)-sphere have density proportional
    to (1 - s^2 - t^2)^((b - 5)/2) on the unit disk. In polar coordinates: Gauss-Jacobi in
    r^2 for that weight, Gauss-Legendre in the angle on each arc between the angles where
    x_1 or x_2 is 0 (the kink of the ReLU family). Exact to ~1e-12 for the grid's
    activations, from b = 4 to thousands.
    """
    a = (b - 5) / 2
    x, w_r = roots_jacobi(radial, a, 0.0)  # weight (1 - x)^a on [-1, 1]; r^2 = (x + 1)/2
    r = np.sqrt((x + 1) / 2)
    beta = math.asin(-1.0 / (b - 1))  # the two entries' directions have cosine -1/(b - 1)
    kinks = sorted({math.pi / 2, 3 * math.pi / 2, -beta % (2 * math.pi), (math.pi - beta)})
    edges = [*kinks, kinks[0] + 2 * math.pi]
    arcs = list(zip(edges[:-1], edges[1:], strict=True))
    gx, gw = np.polynomial.legendre.leggauss(angular)
    theta = np.concatenate([lo + (hi - lo) * (gx + 1) / 2 for lo, hi in arcs])
    w_t = np.concatenate([(hi - lo) / 2 * gw for lo, hi in arcs])
    radius, angle = np.meshgrid(math.sqrt(b - 1) * r, theta, indexing="ij")
    weights = np.outer(w_r, w_t)
    weights /= weights.sum()
    return (
        (radius * np.cos(angle)).ravel(),
        (radius * np.sin(angle + beta)).ravel(),
        weights.ravel(),
    )


@functools.cache
def layernorm_chi(activation: Activation | str) -> float:
    """Large-width rate with layer norm before the activation: E[phi'^2] / E[phi^2]."""
    f, g = meanfield.phi(activation), meanfield.dphi(activation)
    return meanfield.gauss(lambda u: g(u) ** 2) / meanfield.gauss(lambda u: f(u) ** 2)


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
    # batch norm at the probe's batch size (``finite_batch_chi``); None otherwise
    log10_rate_finite_batch: float | None = None

    @property
    def reference(self) -> float | None:
        """The rate to compare a measurement with: at the probe's batch size if given."""
        return (
            self.log10_rate_finite_batch
            if self.log10_rate_finite_batch is not None
            else self.log10_rate
        )


def stem_variance(
    init: Init,
    activation: Activation,
    num_features: int,
    width: int,
    input_second_moment: float,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
) -> float:
    """Variance of the stem's output (a Linear from the inputs, no activation): the stream
    the first block reads. ``sigma_w2``, ``sigma_b2``: an explicit-variance init's."""
    w2 = nets.sigma_w2(init, activation, num_features, width, sigma_w2)
    return w2 * input_second_moment + nets.sigma_b2(init, num_features, sigma_b2)


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
    residual_scale: float = 1.0,
    num_classes: int = 10,
    residual_scaling: Scaling | str = Scaling.constant,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
) -> Prediction:
    """The prediction for a cell, on the same interior layers the measurement fits.

    The stem (a Linear from the standardized input, no activation) sets the stream's
    variance; then each factor links layer l to l + 1, and the predicted rate is the
    least-squares slope of the predicted log10 profile over ``study.engine.probes.interior`` --
    the measured rate's fit. With batch norm and a ``batch_size``, the finite-batch rate
    comes along too. ``residual_scale`` and ``residual_scaling`` are the config's
    model.residual; ``sigma_w2``, ``sigma_b2`` its model.sigma_w2, model.sigma_b2 (the
    explicit-variance inits need them, the others refuse them).
    """
    activation, init, norm, skip = Activation(activation), Init(init), Norm(norm), Skip(skip)
    sw2 = nets.sigma_w2(init, activation, width, width, sigma_w2)
    sb2 = nets.sigma_b2(init, width, sigma_b2)
    stem = stem_variance(init, activation, num_features, width, input_second_moment,
                         sigma_w2, sigma_b2)  # fmt: skip
    if skip in (Skip.highway, Skip.dense) or (skip is Skip.residual and norm is not Norm.none):
        return Prediction(sw2, None, None, None, None, f"no mean-field rate for {norm}+{skip}")
    if norm is Norm.batch:
        c = batchnorm_chi(activation)
        finite = None
        if batch_size:
            finite = 0.5 * math.log10(finite_batch_chi(activation, batch_size))
        return Prediction(sw2, None, c, 0.5 * math.log10(c), None, "batch norm", finite)
    if norm is Norm.layer:
        c = layernorm_chi(activation)
        return Prediction(sw2, None, c, 0.5 * math.log10(c), None, "layer norm, large width")
    if skip is Skip.residual:
        s = ModelConfig(
            depth=depth,
            residual=ResidualConfig(scale=residual_scale, scaling=Scaling(residual_scaling)),
        ).branch_scale()
        if s == 0.0:  # ReZero at init: x + 0 f(x), the stream's gradient passes unchanged
            return Prediction(sw2, None, 1.0, 0.0, None, "residual, branch scale 0: identity")
        head = Head(nets.sigma_w2(init, activation, width, num_classes, sigma_w2), sb2,
                    num_classes)  # fmt: skip
        chis = residual_factors(activation, stem, sw2, depth, width, sb2, s, head)
        basis = "residual: the drifting stream's bulk and mean modes at the cell's width"
        q_star = None
    else:
        q = meanfield.q_sequence(activation, sw2 * stem + sb2, sw2, depth, sb2)
        chis = np.array([meanfield.chi(activation, ql, sw2) for ql in q])
        q_star = meanfield.fixed_point(activation, sw2, sb2)
        basis = "plain: chi at q_l" + ("" if q_star else " (no fixed point: q_l -> 0)")
    rate = _fitted_rate(chis, depth)
    xi = phase.xi_c(activation, sw2, sb2) if skip is Skip.none else math.nan
    return Prediction(
        sw2,
        q_star,
        10 ** (2 * rate) if rate is not None else None,
        rate,
        None if math.isnan(xi) else xi,
        basis,
    )


def _fitted_rate(chis: np.ndarray, depth: int) -> float | None:
    """Slope of the predicted log10 signal-gradient profile over the fitted layers.

    g_l^2 = chi_l g_{l+1}^2 (``chis[l]`` links layer l to l + 1; the last is unused), so
    log10 g_l = 0.5 sum_{k >= l} log10 chi_k up to a constant.
    """
    steps = chis[:-1]
    if depth < 2 or np.any(~(steps > 0)):
        return None
    steps = 0.5 * np.log10(steps)  # between layer l and l + 1, l = 1 .. depth - 1
    log_g = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    rows = np.arange(depth)[interior(depth)]
    if len(rows) < 2:
        return None
    distance = depth - 1 - rows
    return float(np.polyfit(distance, log_g[rows], 1)[0])
