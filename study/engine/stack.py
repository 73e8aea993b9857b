"""A group of networks of one shape, run as one: every parameter stacked on a leading axis.

The nets of a group are initialized one by one by :func:`study.engine.nets.initial_state`, each
from its own seed, so each starts exactly as it would alone; then their parameters are
stacked, so that ``params["stem.weight"][g]`` is net g's stem weight. The forward pass below is the
``study.engine.nets.MLP`` forward written once for the stack: batched matmuls and elementwise
operations, one call per group instead of one per net. No operation mixes nets (each slice
of a batched matmul is its own product; norms reduce within a net), which is why a net's
numbers do not depend on the group it ran in.

Why by hand rather than with ``torch.func`` (checked with torch 2.13.0 on 2026-12-06, at
commit 82573b0; ``benchmarks/bench_group.py``'s ``vmap`` variant): ``vmap(grad(...))`` over
``functional_call`` of the nets' modules trains the same nets to float32 rounding, and runs
batch norm with running statistics if those are stacked and batched (shared ones it
refuses). It cannot draw each net's dropout masks from the net's own generator (a
generator cannot be a vmapped argument; ``randomness="different"`` slices one draw among
the group), and it keeps no bitwise guarantee: a net's gradients alone (a vmap of one) and
in a group of three differed in the last bits (the head's weight at width 16; with batch
norm, 9 of 20 tensors), where the stack's were equal. Per-net learning rates stop
``torch.optim`` (one rate per tensor), not vmap, so a group needs
``study.engine.optimizers`` either way. And vmap was slower: 1.31x the stack's time at 20
nets of depth 32, width 64, batch 64, and 1.33x at 8 nets of depth 16, width 128, batch 128
(medians, one thread, a busy 2-core machine; 1.33x and 1.25x in CPU time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from study.config import Activation, ModelConfig, Norm, Skip
from study.engine.nets import ACTIVATIONS, MLP, NORMS, Tensors


@dataclass
class Trace:
    """One block's tensors in a traced forward pass (what the probes read)."""

    z: torch.Tensor  # Linear output, (G, B, W): its .grad is dL/dz after backward
    u: torch.Tensor  # activation input (after the norm), detached
    h: torch.Tensor  # the layer's output (after the skip), detached


def linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (G, B, in) through G Linear layers: transposed weights (G, in, out), bias (G, out)."""
    # bmm then an in-place add: baddbmm would first broadcast-copy the bias (3x slower).
    return torch.bmm(x, weight_t).add_(bias.unsqueeze(1))


class BatchNorm(torch.autograd.Function):
    """Batch norm in training mode over dim 1 of (G, B, W), per net and unit, with its
    closed-form backward: half the time of autograd through the written-out formula (which
    PyTorch's ``var_mean`` made slower still). Also returns the batch mean and (biased)
    variance, for the running statistics."""

    @staticmethod
    def forward(ctx, z, weight, bias, eps):  # noqa: ANN001, ANN205 - autograd's signature
        mean = z.mean(dim=1, keepdim=True)
        centred = z - mean
        var = centred.square().mean(dim=1, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        normalized = centred.mul_(rstd)
        ctx.save_for_backward(normalized, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(bias, normalized, weight), mean, var

    @staticmethod
    def backward(ctx, grad_out, _mean, _var):  # noqa: ANN001, ANN205
        normalized, rstd, weight = ctx.saved_tensors
        grad_bias = grad_out.sum(dim=1, keepdim=True)
        grad_weight = (grad_out * normalized).sum(dim=1, keepdim=True)
        n = grad_out.shape[1]
        # d/dz of (z - mean) * rstd: the gradient less its mean and its projection on the
        # normalized batch, over the batch's spread.
        grad_z = (grad_out * weight - (grad_bias + normalized * grad_weight) * (weight / n)) * rstd
        return grad_z, grad_weight, grad_bias, None


def per_net_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each net on its own batch: logits (G, B, C), y (G, B) -> (G,)."""
    # Over dim 1 of (G, C, B): PyTorch's CPU log-softmax over a last dimension of 10 classes
    # is ~4x slower, forward and backward, than over a strided one (same numbers).
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)


class Dropout:
    """Each net's dropout masks for one training step, drawn from the net's own stream, so
    that its masks do not depend on its group. A mask entry is 0 with probability ``rate``
    and 1 / (1 - rate) otherwise, as ``torch.nn.Dropout`` scales it; at rate 0 it is 1, and
    multiplying by it changes nothing."""

    STREAM = 3_000_017  # offset of the mask stream's seed from the net's seed

    def __init__(self, rates: Sequence[float], seeds: Sequence[int], device: torch.device):
        self.active = any(rate > 0 for rate in rates)
        self.rates = torch.tensor(list(rates), dtype=torch.float32, device=device)
        self.generators = [
            torch.Generator(device=device).manual_seed(seed + self.STREAM) for seed in seeds
        ]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the nets at positions ``keep`` (call with ``Stack.select``)."""
        self.rates = self.rates[keep]
        self.generators = [self.generators[i] for i in keep.tolist()]

    def masks(self, batch: int, widths: Sequence[int]) -> list[torch.Tensor] | None:
        """One (G, batch, width) mask per block, or None when no net drops anything."""
        if not self.active:
            return None
        device = self.rates.device
        draws = torch.stack([
            torch.rand(batch * sum(widths), generator=g, device=device) for g in self.generators
        ])  # fmt: skip
        rate = self.rates.unsqueeze(1)
        scaled = (draws >= rate).to(draws.dtype).div_(1 - rate)
        parts = scaled.split([batch * w for w in widths], dim=1)
        return [m.view(-1, batch, w) for m, w in zip(parts, widths, strict=True)]


class Stack:
    """G nets of the shape ``cfg`` describes (init and seed may differ between them)."""

    def __init__(
        self, states: Sequence[tuple[Tensors, Tensors]], cfg: ModelConfig, device: torch.device
    ):
        """``states``: each net's (parameters, buffers), as ``nets.initial_state`` gives them."""
        self.cfg = cfg
        # Linear weights are stored transposed, (G, in, out): the batched matmuls then read
        # and write contiguous matrices forward and backward (no transposed copies).
        self.params: dict[str, torch.Tensor] = {}
        for name, p in states[0][0].items():
            if p.dim() == 2:
                stacked = torch.stack([params[name].T for params, _ in states])
            else:
                stacked = torch.stack([params[name] for params, _ in states])
            self.params[name] = stacked.to(device).requires_grad_()
        # Batch norm's running statistics (num_batches_tracked only matters without momentum).
        self.buffers = {
            name: torch.stack([buffers[name] for _, buffers in states]).to(device)
            for name in states[0][1]
            if not name.endswith("num_batches_tracked")
        }
        # The constants of the norm and activation modules (study.engine.nets and PyTorch's
        # defaults), read off the modules a net of this shape is made of.
        norm = NORMS[cfg.norm](cfg.width)
        self.norm_eps = getattr(norm, "eps", 0.0)
        self.norm_momentum = getattr(norm, "momentum", 0.0)
        self.act = ACTIVATIONS[cfg.activation].make()
        self.branch = cfg.branch_scale()  # a residual branch's fixed factor
        self.training = True

    @classmethod
    def of(cls, nets: Sequence[MLP], cfg: ModelConfig) -> Stack:
        """The stack of built nets (modules), on their device."""
        states = [
            ({n: p.detach() for n, p in net.named_parameters()}, dict(net.named_buffers()))
            for net in nets
        ]
        return cls(states, cfg, next(nets[0].parameters()).device)

    @property
    def block_widths(self) -> list[int]:
        """The width of each block's output (what dropout masks)."""
        return [self.cfg.block_width()] * self.cfg.depth

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the nets at positions ``keep`` (the others diverged and are done)."""
        for name, p in self.params.items():
            self.params[name] = p.detach()[keep].requires_grad_()
        for name, b in self.buffers.items():
            self.buffers[name] = b[keep]

    def parameter(self, name: str) -> torch.Tensor:
        """A stacked parameter in the nets' own layout (Linear weights (G, out, in))."""
        p = self.params[name]
        return p.transpose(1, 2) if p.dim() == 3 else p

    def weights(self) -> list[torch.Tensor]:
        """Each block's Linear weight, stored transposed (G, in, out), block 1 first."""
        return [self.params[f"layers.{i}.block.linear.weight"] for i in range(self.cfg.depth)]

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    # -- the forward pass ------------------------------------------------------------------

    def _norm(self, z: torch.Tensor, prefix: str) -> torch.Tensor:
        norm = self.cfg.norm
        if norm == Norm.none:
            return z
        if norm == Norm.layer:
            weight = self.params[prefix + "weight"].unsqueeze(1)
            bias = self.params[prefix + "bias"].unsqueeze(1)
            return F.layer_norm(z, z.shape[-1:], eps=self.norm_eps) * weight + bias
        # Written out rather than PyTorch's kernel on a (1, G * W, B) view: that kernel's
        # vectorization depends on the channel count, so a net's numbers would depend on its
        # group's size (measured: 1e-6 relative, growing chaotically in training).
        weight = self.params[prefix + "weight"].unsqueeze(1)
        bias = self.params[prefix + "bias"].unsqueeze(1)
        mean_key, var_key = prefix + "running_mean", prefix + "running_var"
        if not self.training:
            mean = self.buffers[mean_key].unsqueeze(1)
            var = self.buffers[var_key].unsqueeze(1)
            return (z - mean) * (torch.rsqrt(var + self.norm_eps) * weight) + bias
        out, mean, var = BatchNorm.apply(z, weight, bias, self.norm_eps)
        with torch.no_grad():  # running variance uses the unbiased estimate, as PyTorch's
            n, m = z.shape[1], self.norm_momentum
            self.buffers[mean_key].mul_(1 - m).add_(mean.squeeze(1), alpha=m)
            self.buffers[var_key].mul_(1 - m).add_(var.squeeze(1), alpha=m * n / (n - 1))
        return out

    def _activate(self, u: torch.Tensor, prefix: str) -> torch.Tensor:
        if self.cfg.activation == Activation.prelu:  # one learned slope per net
            slope = self.params[prefix + "weight"].unsqueeze(-1)  # (G, 1, 1)
            return torch.where(u >= 0, u, slope * u)
        return self.act(u)

    def forward(
        self,
        x: torch.Tensor,
        trace: list[Trace] | None = None,
        masks: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits (G, B, classes) for x (G, B, in), or x (B, in) shared by every net.

        With ``trace`` (a list), each block's tensors are appended to it and dL/dz is kept.
        With ``masks`` (``Dropout.masks``), each block's activation output is multiplied by
        its mask before the skip: dropout, which only training steps apply.
        """
        p, cfg = self.params, self.cfg
        if x.dim() == 2:
            x = x.expand(self.size, *x.shape)
        h = linear(x, p["stem.weight"], p["stem.bias"])
        for i in range(cfg.depth):
            pre = f"layers.{i}."
            z = linear(h, p[pre + "block.linear.weight"], p[pre + "block.linear.bias"])
            u = self._norm(z, pre + "block.norm.")
            a = self._activate(u, pre + "block.act.")
            if masks is not None:
                a = a * masks[i]
            if cfg.skip == Skip.none:
                out = a
            elif cfg.skip == Skip.residual:
                scale = p.get(pre + "alpha")  # learned, (G, 1): ReZero's
                out = h + (scale.unsqueeze(-1) * a if scale is not None else self.branch * a)
            elif cfg.skip == Skip.highway:
                t = torch.sigmoid(linear(h, p[pre + "gate.weight"], p[pre + "gate.bias"]))
                out = t * a + (1 - t) * h
            elif cfg.skip == Skip.dense:
                out = torch.cat([h, a], dim=-1)
            else:
                raise ValueError(f"unknown skip {cfg.skip!r}")
            if trace is not None:
                z.retain_grad()
                trace.append(Trace(z, u.detach(), out.detach()))
            h = out
        return linear(h, p["head.weight"], p["head.bias"])

    __call__ = forward
