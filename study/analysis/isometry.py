"""Free-probability predictions of the Jacobian spectrum at initialization (Pennington,
Schoenholz & Ganguli 2017, 2018): what ``study.engine.jacobian`` measures, for plain nets.

A plain net's Jacobian is J = D_L W_L ... D_1 W_1, with D_l = diag(phi'(z_l)). At large width
the factors W_l^T D_l^2 W_l are asymptotically free, so the S-transform of J J^T is the
product of theirs, and its first two coefficients give the mean m and the variance v of the
eigenvalues of J J^T:

    m = prod_l chi_l,                chi_l = sigma_w^2 mu_1,l,
    v / m^2 = sum_l (mu_2,l / mu_1,l^2 - 1 - s_1),    mu_k,l = E[phi'(sqrt(q_l) z)^(2k)],

along the mean-field variances q_l (``study.analysis.meanfield``, biases included). s_1 is
the first S-transform coefficient of W^T W / sigma_w^2: -1 for i.i.d. weights (Marchenko-
Pastur; a uniform init's weights too, by universality), 0 for orthogonal ones. At a fixed
point with chi = 1 this is v = L (mu_2 / mu_1^2 - 1 - s_1): ReLU with He weights gives 2L
(Gaussian) or L (orthogonal); a linear net L or 0.

The probe averages each statistic over a few training examples, whose second moments
|x|^2 / n vary (MNIST-1D, standardized: mean 1, sd 0.46): q_1 varies with them, and a
saturating net's spectrum with q_1 (ReLU's does not: it is positively homogeneous). So the
prediction the probe is measured against is averaged over the training set's second
moments (``second_moments``, ``predict_over``), not taken at their mean.

There is no prediction (NaN) for norms and skips, nor for the condition number: its extreme
eigenvalues are not in the first two moments.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from study.analysis import meanfield
from study.config import Activation, Init, ModelConfig, Norm, Skip
from study.engine import nets

ORTHOGONAL = (Init.orthogonal, Init.scaled_orthogonal)


def derivative_moments(activation: Activation | str, q: float) -> tuple[float, float]:
    """(mu_1, mu_2) = (E[phi'(sqrt(q) z)^2], E[phi'(sqrt(q) z)^4]), z ~ N(0, 1)."""
    g = meanfield.dphi(activation)
    return meanfield.gauss(lambda u: g(u) ** 2, q), meanfield.gauss(lambda u: g(u) ** 4, q)


def spectrum(
    activation: Activation | str,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    q1: float,
    orthogonal: bool,
) -> tuple[float, float]:
    """(mean, variance) of the eigenvalues of J J^T for a plain net of ``depth`` blocks whose
    first block's pre-activations have variance ``q1``."""
    s1 = 0.0 if orthogonal else -1.0
    mean, relative = 1.0, 0.0
    for q in meanfield.q_sequence(activation, q1, sigma_w2, depth, sigma_b2):
        mu1, mu2 = derivative_moments(activation, q)
        mean *= sigma_w2 * mu1
        relative += mu2 / mu1**2 - 1.0 - s1
    return mean, relative * mean**2


def predict(
    model: ModelConfig, num_features: int, input_second_moment: float = 1.0
) -> tuple[float, float]:
    """(mean, variance) for a cell's nets, NaN where the theory does not apply.

    The stem, a Linear from the standardized inputs, sets the stream's variance v_0, and the
    first block reads q_1 = sigma_w^2 v_0 + sigma_b^2 (the variances from ``nets``, the one
    place the study reads them from).
    """
    if model.norm != Norm.none or model.skip != Skip.none:
        return math.nan, math.nan
    init, activation, width = Init(model.init), Activation(model.activation), model.width
    stem_w2 = nets.sigma_w2(init, activation, num_features, width, model.sigma_w2)
    stem_b2 = nets.sigma_b2(init, num_features, model.sigma_b2)
    sigma_w2 = nets.sigma_w2(init, activation, width, width, model.sigma_w2)
    sigma_b2 = nets.sigma_b2(init, width, model.sigma_b2)
    q1 = sigma_w2 * (stem_w2 * input_second_moment + stem_b2) + sigma_b2
    return spectrum(activation, sigma_w2, sigma_b2, model.depth, q1, init in ORTHOGONAL)


QUANTILES = 64  # the training set's second moments, as this many evenly spaced quantiles


def second_moments(npz: Path) -> np.ndarray:
    """Each training example's second moment |x|^2 / n of a prepared dataset (its .npz), as
    QUANTILES evenly spaced quantiles: the input distribution, deterministically."""
    with np.load(npz, allow_pickle=False) as data:
        x = data["x_train"].astype(np.float64)
    return np.quantile((x**2).mean(axis=1), (np.arange(QUANTILES) + 0.5) / QUANTILES)


def predict_over(
    model: ModelConfig, num_features: int, moments: np.ndarray | None
) -> tuple[float, float]:
    """:func:`predict` averaged over the examples' second moments (mean and variance are
    each an average over examples, as the probe's); at the mean second moment, 1, without
    them."""
    if moments is None or len(moments) == 0:
        return predict(model, num_features)
    pairs = np.array([predict(model, num_features, float(s)) for s in moments])
    return float(pairs[:, 0].mean()), float(pairs[:, 1].mean())
