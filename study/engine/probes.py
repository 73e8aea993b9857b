"""Per-layer gradient and activation statistics, and the per-run summaries built on them.

A probe is a separate forward/backward pass on fixed probe batches, in training mode
(batch norm uses batch statistics), that leaves the nets exactly as it found them:
gradients cleared, batch-norm running statistics restored. It measures every net of a
stack (``study.engine.stack``) at once, each on its own probe batches. Training steps between
probes carry no instrumentation at all.

All reductions run in float64 so that tiny float32 gradients are not squared into
underflow; gradients that are exactly zero in float32 stay zero (they are data: the
backward pass itself underflowed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from study.config import LAYER_STATS, Activation, Schedule, Skip
from study.engine.nets import ACTIVATIONS
from study.engine.stack import Stack, Trace, per_net_loss
from study.records import SUMMARY_STATS

# The per-layer columns of layers.parquet, in order (besides ``step`` and ``layer``).
STATS = LAYER_STATS

# A unit is saturated where phi'(u) < SATURATION * max phi'.
SATURATION = 0.05


# Multiples of each power of ten at which a log-spaced schedule probes.
SCHEDULES: dict[Schedule, tuple[int, ...]] = {
    Schedule.log125: (1, 2, 5),
    Schedule.log10: (1,),
    Schedule.none: (),
}


def probe_steps(schedule: Schedule | str, steps: int) -> list[int]:
    """Update counts at which to probe: 0, then e.g. 1, 2, 5, 10, 20, 50, ... (``log125``)
    or 1, 10, 100, ... (``log10``), and always the last step."""
    multiples = SCHEDULES[Schedule(schedule)]
    if not multiples:
        return []
    due, decade = {0, steps}, 1
    while decade <= steps:
        due.update(m * decade for m in multiples if m * decade <= steps)
        decade *= 10
    return sorted(due)


class Probe:
    """Measures the statistics of ``STATS`` for every hidden block of every net of a stack.

    ``batches`` are (x, y) pairs with one batch per net: x (G, B, in), y (G, B).
    Results are (G, depth) arrays, net by net in stack order.
    """

    def __init__(
        self, stack: Stack, activation: Activation, batches: Sequence[tuple[torch.Tensor, ...]]
    ):
        self.stack = stack
        self.spec = ACTIVATIONS[activation]
        self.batches = list(batches)
        self._before: list[torch.Tensor] | None = None

    def select(self, keep: torch.Tensor) -> None:
        """Follow the stack when nets leave it (call after ``Stack.select``)."""
        self.batches = [(x[keep], y[keep]) for x, y in self.batches]
        if self._before is not None:
            self._before = [w[keep] for w in self._before]

    # -- update ratio: bracket one optimizer step ---------------------------------------

    def before_update(self) -> None:
        self._before = [w.detach().clone() for w in self.stack.weights()]

    def update_ratio(self) -> np.ndarray:
        """||W_after - W_before|| / ||W_before|| per net and block, for the bracketed step."""
        before, self._before = self._before, None
        after = [w.detach() for w in self.stack.weights()]
        delta = torch.stack([_norms(a - b) for a, b in zip(after, before, strict=True)], dim=1)
        scale = torch.stack([_norms(b) for b in before], dim=1)
        return (delta / scale).cpu().numpy()

    # -- the probe pass -----------------------------------------------------------------

    def measure(self) -> dict[str, np.ndarray]:
        """One row per net, one column per block (column 0 = layer 1); ``update_ratio`` NaN."""
        stack = self.stack
        depth, nets = stack.cfg.depth, stack.size
        buffers = {name: b.clone() for name, b in stack.buffers.items()}
        was_training = stack.training
        stack.train()
        stack.zero_grad()
        device = next(iter(stack.params.values())).device
        shape = (depth, nets)
        signal_sq, weight_sq, act_sq, act_sum, saturated = (
            torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(5)
        )
        act_count = torch.zeros(depth, dtype=torch.float64, device=device)
        active: list[torch.Tensor | None] = [None] * depth  # per net and unit: ever positive
        weights = stack.weights()
        # A dense block's output is its input with its own units appended: its sums are the
        # previous block's plus those of the new units (linear, not quadratic, in depth).
        appends = stack.cfg.skip == Skip.dense
        widths = stack.block_widths
        try:
            for x, y in self.batches:
                trace: list[Trace] = []
                loss = per_net_loss(stack(x, trace), y)
                loss.sum().backward()  # nets share no parameter: each gets its own gradient
                for i, t in enumerate(trace):
                    signal_sq[i] += _squares(t.z.grad)
                    weight_sq[i] += _squares(weights[i].grad)
                    if appends and i > 0:
                        new = t.h[..., -widths[i] :]
                    else:
                        h_sq = h_sum = h_count = 0.0
                        new = t.h
                    hd = new.double()
                    h_sq = h_sq + _squares(hd)
                    h_sum = h_sum + hd.sum(dim=(1, 2))
                    h_count = h_count + hd[0].numel()
                    act_sq[i] += h_sq
                    act_sum[i] += h_sum
                    act_count[i] += h_count
                    if self.spec.family == "relu":
                        alive = (t.u > 0).any(dim=1)
                        active[i] = alive if active[i] is None else active[i] | alive
                    if self.spec.derivative is not None:
                        limit = SATURATION * self.spec.max_derivative
                        low = self.spec.derivative(t.u) < limit
                        saturated[i] += low.double().mean(dim=(1, 2))
                stack.zero_grad()
        finally:
            stack.buffers.update(buffers)
            stack.train(was_training)

        k = len(self.batches)
        nan = np.full((nets, depth), np.nan)

        def rows(values: torch.Tensor) -> np.ndarray:
            return values.T.cpu().numpy()  # (depth, G) -> (G, depth)

        return {
            "weight_grad_norm": rows((weight_sq / k).sqrt()),
            "signal_grad_norm": rows((signal_sq / k).sqrt()),
            "weight_norm": torch.stack([_norms(w.detach()) for w in weights], dim=1).cpu().numpy(),
            "activation_rms": rows((act_sq / act_count[:, None]).sqrt()),
            "activation_mean": rows(act_sum / act_count[:, None]),
            "dead_fraction": (
                rows(1.0 - torch.stack([a.double().mean(dim=1) for a in active]))
                if self.spec.family == "relu"
                else nan
            ),
            "saturated_fraction": (
                rows(saturated / k) if self.spec.derivative is not None else nan.copy()
            ),
            "update_ratio": nan.copy(),
        }


def _norms(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each net's slice, in float64: (G, ...) -> (G,). The norm kernel
    squares in float64 as it reads (half the time of a float64 copy squared and summed)."""
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), dtype=torch.float64)


def _squares(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each net's slice, in float64: (G, ...) -> (G,)."""
    return _norms(x).square()


# ------------------------------------------------------------------------- summaries

# The smallest normal float32: a gradient reported as 0 was below it (runs flush subnormal
# floats to zero: study.runs.cell.execute_group).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def interior(depth: int) -> slice:
    """Layers used for the decay fit: all but the first and the last, when there are 4+."""
    return slice(1, depth - 1) if depth >= 4 else slice(0, depth)


def profile_summary(norms: np.ndarray) -> dict[str, float | int | bool]:
    """Summaries of one per-layer gradient profile (index 0 = layer 1, nearest the input).

    - ``log10_first_last``: log10(g_1 / g_L); negative when gradients vanish toward the
      input. If g_1 underflowed to 0 the value is the bound log10(tiny / g_L) and
      ``first_last_censored`` is true.
    - ``log10_rate``: least-squares slope of log10 g_l against the distance from the output
      (L - l) over the interior layers: decades gained per layer going toward the input,
      negative when vanishing; mean-field theory predicts 0.5 * log10(chi). Zeros (censored
      from below) are left out of the fit and counted in ``n_zero``.
    """
    norms = np.asarray(norms, dtype=np.float64)
    depth = len(norms)
    n_zero = int(np.sum(norms == 0))
    finite = bool(np.all(np.isfinite(norms)))
    first, last = norms[0], norms[-1]
    censored = bool(first == 0)
    if not finite or last <= 0:
        first_last = math.nan
    else:
        first_last = math.log10(max(first, FLOAT32_TINY) / last)
    idx = np.arange(depth)[interior(depth)]
    vals = norms[interior(depth)]
    keep = np.isfinite(vals) & (vals > 0)
    if keep.sum() >= 2:
        distance = (depth - 1 - idx[keep]).astype(np.float64)
        rate = float(np.polyfit(distance, np.log10(vals[keep]), 1)[0])
    else:
        rate = math.nan
    values = (first_last, censored, rate, n_zero)
    return dict(zip(SUMMARY_STATS, values, strict=True))
