"""The input-output Jacobian of the hidden stream at initialization, and its spectrum.

J = dh_L / dh_0 for one example: h_0 is the stem's output (width W), h_L the last block's.
The probes' gradient norms say how the squared gradient shrinks on average from layer to
layer; the eigenvalues of J J^T (the squared singular values of J) say whether every
direction shrinks alike. A net is dynamically isometric (Pennington, Schoenholz & Ganguli
2017) when they all sit near 1: mean 1, variance 0, condition number 1.

Per net and example, from the W singular values of J (those of J J^T but for its zeros when
a dense net's h_L is wider than h_0):

- ``jacobian_eig_mean``: the mean eigenvalue, tr(J^T J) / W;
- ``jacobian_eig_var``: their variance, tr((J^T J)^2) / W - mean^2;
- ``jacobian_log10_cond``: log10(s_max / s_min), +inf where J is singular to float64's
  precision, s_min <= W eps s_max (``jacobian_singular``): a ReLU net's J is (its dead units
  are zero rows), and so is a deep net's with Gaussian weights, whose condition number
  grows exponentially with depth (past 1e13 for tanh, Xavier weights, width 256, depth 16).

Up to width ``probe.jacobian_exact_width`` J is built whole (W forward-mode products) and its
singular values computed exactly. Above it, its cost (W^3 per layer and example) gives way to
a randomized estimate: k = ``probe.jacobian_vectors`` random orthonormal directions q_i,
(W / k) sum |J q_i|^2 and (W / k) sum |J^T J q_i|^2 are unbiased for both traces (exact at
k = W), from k products J q (forward mode) and J^T (J q) (reverse mode). That gives the mean
and the variance, not the extreme singular values: the condition number is NaN then. With
32 directions one example's estimate has a 1-8% error (sd; measured at width 512, depth 16:
5% for the mean and 8% for the variance of a ReLU He net), less than examples differ by.
Measured on one core, per net and 4 examples: exact 0.07 s at width 128, depth 8; 0.7-1.2 s
at 256, depth 32; 4.4-5.6 s at 512, depth 32 (30-40 training steps at batch 128); exact at
1024, depth 16 would take 11 s, the estimate takes 1.9 s.

Each statistic is averaged over the first ``probe.jacobian_examples`` examples of each net's
probe batch. One example's spectrum differs from another's about as much as one net's from
another seed's (at width 256, depth 16, the mean eigenvalue's spread across examples was
0.18 against 0.16 across nets for ReLU, 11.5 against 2.0 for tanh with layer norm and
residual blocks): the default 4 halve that noise, at 4 times the cost of one.

Batch norm gives NaN: an example's output depends on the rest of its batch, so the
per-example Jacobian is not defined. The stream is computed in float64 from the nets'
float32 parameters: in float32, singular values below ~1e-7 s_max would be rounding noise,
and deep nets' condition numbers exceed that. Each net's numbers come from its own slices
only (its own directions, from its own seed), so they do not depend on its group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from study.config import JACOBIAN_STATS, Norm, ProbeConfig, Skip
from study.engine.stack import Stack, linear

# Offset of the random directions' stream from the net's seed (the other streams use
# +1_000_003 and +3_000_017, study.engine.loop and study.engine.stack).
STREAM = 5_000_011


def stream(stack: Stack, h: torch.Tensor) -> torch.Tensor:
    """h_0 (G, N, W) -> h_L (G, N, W_L), in float64: ``Stack.forward``'s blocks without the
    stem and the head, and without dropout (probes run without it)."""
    p, cfg = stack.params, stack.cfg

    def linear64(x: torch.Tensor, name: str) -> torch.Tensor:
        # Cast one layer at a time: a float64 copy of the whole stack could be gigabytes.
        return linear(x, p[name + ".weight"].detach().double(), p[name + ".bias"].detach().double())

    for i in range(cfg.depth):
        pre = f"layers.{i}."
        u = stack._norm(linear64(h, pre + "block.linear"), pre + "block.norm.")
        a = stack._activate(u, pre + "block.act.")
        if cfg.skip == Skip.none:
            h = a
        elif cfg.skip == Skip.residual:
            h = h + cfg.residual.scale * a
        elif cfg.skip == Skip.highway:
            t = torch.sigmoid(linear64(h, pre + "gate"))
            h = t * a + (1 - t) * h
        elif cfg.skip == Skip.dense:
            h = torch.cat([h, a], dim=-1)
        else:
            raise ValueError(f"unknown skip {cfg.skip!r}")
    return h


def singular_values(stack: Stack, h0: torch.Tensor) -> torch.Tensor:
    """The min(W, W_L) singular values of each net's J at h0 (G, W): (G, min(W, W_L))."""
    nets, width = h0.shape
    # Example g repeated W times, with tangent e_i on copy i: one forward-mode pass gives
    # every column J e_i (the examples of a batch do not mix: no batch norm here).
    primal = h0.unsqueeze(1).repeat(1, width, 1)
    tangent = torch.eye(width, dtype=h0.dtype, device=h0.device).repeat(nets, 1, 1)
    _, columns = torch.func.jvp(lambda h: stream(stack, h), (primal,), (tangent,))
    # columns[g] is J_g^T, which has J_g's singular values. One net at a time: a batched
    # decomposition's algorithm could depend on the batch's size, that is on the group.
    return torch.stack([torch.linalg.svdvals(c) for c in columns])


# One J's statistics, keyed by JACOBIAN_STATS.
Statistics = dict[str, float | bool | None]


def exact_statistics(s: torch.Tensor) -> Statistics:
    """Statistics of the eigenvalues s^2 of one J, from its singular values s (1-D)."""
    eig = s.square()
    s_max, s_min = s.max().item(), s.min().item()
    # Singular to working precision: numpy's matrix_rank tolerance (s_max * size * eps).
    singular = s_min <= s_max * len(s) * torch.finfo(s.dtype).eps
    return {
        "jacobian_eig_mean": eig.mean().item(),
        "jacobian_eig_var": eig.var(correction=0).item(),
        "jacobian_log10_cond": math.inf if singular else math.log10(s_max / s_min),
        "jacobian_singular": singular,
    }


def estimated_statistics(
    stack: Stack, h0: torch.Tensor, vectors: int, generators: Sequence[torch.Generator]
) -> list[Statistics]:
    """Each net's mean and variance of its eigenvalues at h0 (G, W), from ``vectors`` random
    orthonormal directions of its own; the condition number is NaN (not estimated)."""
    nets, width = h0.shape
    k = min(vectors, width)
    # Orthonormal columns from the QR of a Gaussian draw: their span is uniformly random,
    # so E[Q Q^T] = (k / W) I and both trace estimates are unbiased.
    q = torch.stack([
        torch.linalg.qr(torch.randn(width, k, generator=g, dtype=torch.float64)).Q.T
        for g in generators
    ]).to(h0.device)  # fmt: skip
    primal = h0.unsqueeze(1).repeat(1, k, 1)
    _, jq = torch.func.jvp(lambda h: stream(stack, h), (primal,), (q,))  # (G, k, W_L)
    _, pullback = torch.func.vjp(lambda h: stream(stack, h), primal)
    (jtjq,) = pullback(jq)  # (G, k, W): J^T J q_i
    out = []
    for g in range(nets):
        mean = jq[g].square().sum(dim=-1).mean().item()  # (1/k) sum |J q_i|^2 = tr(J^T J) / W
        second = jtjq[g].square().sum(dim=-1).mean().item()  # tr((J^T J)^2) / W
        # Cauchy-Schwarz on orthonormal q_i makes second >= mean^2: the variance is >= 0.
        out.append({
            "jacobian_eig_mean": mean,
            "jacobian_eig_var": second - mean**2,
            "jacobian_log10_cond": math.nan,
            "jacobian_singular": None,
        })  # fmt: skip
    return out


def measure(
    stack: Stack, x: torch.Tensor, probe: ProbeConfig, seeds: Sequence[int]
) -> dict[str, list]:
    """Each net's statistics (``JACOBIAN_STATS``), averaged over the first
    ``probe.jacobian_examples`` examples of its probe batch x (G, B, in): one value per net,
    in stack order (``jacobian_singular``: whether any example's J was singular; None
    where not computed)."""
    nets = stack.size
    if stack.cfg.norm == Norm.batch:
        return {key: [None if key == "jacobian_singular" else math.nan] * nets
                for key in JACOBIAN_STATS}  # fmt: skip
    p = stack.params
    per_example: list[list[Statistics]] = []  # [example][net]
    with torch.no_grad():  # the parameters' own gradients are not wanted (and cost a graph)
        # The stem on the whole probe batch, as the probes' forward runs it: MKL picks its
        # kernel by shape, and a few rows' product came out 2e-7 apart alone and in a group.
        h0 = linear(x, p["stem.weight"], p["stem.bias"])[:, : probe.jacobian_examples].double()
        generators = [torch.Generator().manual_seed(seed + STREAM) for seed in seeds]
        for k in range(h0.shape[1]):
            if h0.shape[-1] <= probe.jacobian_exact_width:
                s = singular_values(stack, h0[:, k])
                per_example.append([exact_statistics(row) for row in s])
            else:
                vectors = probe.jacobian_vectors
                per_example.append(estimated_statistics(stack, h0[:, k], vectors, generators))
    # Net by net, in Python: a reduction over a (G, ...) tensor may sum in an order that
    # depends on G (seen: 1 ulp in the variance), and a net's numbers must not.
    out: dict[str, list] = {}
    for key in JACOBIAN_STATS:
        per_net = [[example[g][key] for example in per_example] for g in range(nets)]
        if key == "jacobian_singular":
            out[key] = [None if None in v else any(v) for v in per_net]
        else:
            out[key] = [math.fsum(v) / len(v) for v in per_net]
    return out
