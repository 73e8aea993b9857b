"""Per-layer gradient and activation statistics, and the per-run summaries built on them.

A probe is a separate forward/backward pass on fixed probe batches, in training mode
(batch norm uses batch statistics), that leaves the model exactly as it found it:
gradients cleared, batch-norm running statistics restored. Training steps between
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
import torch.nn.functional as F

from study.config import LAYER_STATS, Activation, Schedule
from study.nets import ACTIVATIONS, MLP
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
    """Measures the statistics of ``STATS`` for every hidden block of ``model``."""

    def __init__(
        self, model: MLP, activation: Activation, batches: Sequence[tuple[torch.Tensor, ...]]
    ):
        self.model = model
        self.spec = ACTIVATIONS[activation]
        self.batches = batches
        self._before: list[torch.Tensor] | None = None

    def _weights(self) -> list[torch.Tensor]:
        return [block.linear.weight for block in self.model.blocks]

    # -- update ratio: bracket one optimizer step ---------------------------------------

    def before_update(self) -> None:
        self._before = [w.detach().clone() for w in self._weights()]

    def update_ratio(self) -> torch.Tensor:
        """||W_after - W_before|| / ||W_before|| for the step bracketed by ``before_update``."""
        before, self._before = self._before, None
        after = [w.detach() for w in self._weights()]
        delta = torch.stack(torch._foreach_norm(torch._foreach_sub(after, before)))
        return (delta.double() / torch.stack(torch._foreach_norm(before)).double()).cpu()

    # -- the probe pass -----------------------------------------------------------------

    def measure(self) -> dict[str, np.ndarray]:
        """One row per block (index 0 = layer 1); ``update_ratio`` is NaN here."""
        model, blocks = self.model, self.model.blocks
        depth = len(blocks)
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        was_training = model.training
        model.train()
        model.zero_grad(set_to_none=True)

        zs: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]
        us: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]
        hs: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]

        def save_output(store: list, index: int, retain_grad: bool = False):
            def hook(module, inputs, output):
                if retain_grad:
                    output.retain_grad()  # dL/dz is read after backward
                store[index] = output if retain_grad else output.detach()

            return hook

        def save_input(store: list, index: int):
            def hook(module, inputs, output):
                store[index] = inputs[0].detach()

            return hook

        handles = []
        for i, (layer, block) in enumerate(zip(model.layers, blocks, strict=True)):
            handles.append(block.linear.register_forward_hook(save_output(zs, i, True)))
            handles.append(block.act.register_forward_hook(save_input(us, i)))
            handles.append(layer.register_forward_hook(save_output(hs, i)))

        device = next(model.parameters()).device
        signal_sq = torch.zeros(depth, dtype=torch.float64, device=device)
        weight_sq = torch.zeros(depth, dtype=torch.float64, device=device)
        act_sq = torch.zeros(depth, dtype=torch.float64, device=device)
        act_sum = torch.zeros(depth, dtype=torch.float64, device=device)
        act_count = torch.zeros(depth, dtype=torch.float64, device=device)
        saturated = torch.zeros(depth, dtype=torch.float64, device=device)
        active: list[torch.Tensor | None] = [None] * depth  # per unit: positive for some example
        try:
            for x, y in self.batches:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                for i, block in enumerate(blocks):
                    z, u, h = zs[i], us[i], hs[i]
                    signal_sq[i] += z.grad.double().square().sum()
                    weight_sq[i] += block.linear.weight.grad.double().square().sum()
                    hd = h.double()
                    act_sq[i] += hd.square().sum()
                    act_sum[i] += hd.sum()
                    act_count[i] += hd.numel()
                    if self.spec.family == "relu":
                        alive = (u > 0).any(dim=0)
                        active[i] = alive if active[i] is None else active[i] | alive
                    if self.spec.derivative is not None:
                        limit = SATURATION * self.spec.max_derivative
                        saturated[i] += (self.spec.derivative(u) < limit).double().mean()
                model.zero_grad(set_to_none=True)
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            model.train(was_training)

        k = len(self.batches)
        weights = [w.detach().double() for w in self._weights()]
        nan = np.full(depth, np.nan)
        return {
            "weight_grad_norm": (weight_sq / k).sqrt().cpu().numpy(),
            "signal_grad_norm": (signal_sq / k).sqrt().cpu().numpy(),
            "weight_norm": torch.stack(torch._foreach_norm(weights)).cpu().numpy(),
            "activation_rms": (act_sq / act_count).sqrt().cpu().numpy(),
            "activation_mean": (act_sum / act_count).cpu().numpy(),
            "dead_fraction": (
                1.0 - torch.stack([a.double().mean() for a in active]).cpu().numpy()
                if self.spec.family == "relu"
                else nan
            ),
            "saturated_fraction": (
                (saturated / k).cpu().numpy() if self.spec.derivative is not None else nan.copy()
            ),
            "update_ratio": nan.copy(),
        }


# ------------------------------------------------------------------------- summaries

# The smallest positive float32 (subnormal): a gradient reported as 0 was below it.
FLOAT32_TINY = float(np.nextafter(np.float32(0), np.float32(1)))


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
