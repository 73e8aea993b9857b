"""A group of networks of one shape, run as one: every parameter stacked on a leading axis.

The nets of a group are built one by one by :func:`study.nets.build`, each from its own seed,
so each starts exactly as it would alone; then their parameters are stacked, so that
``params["stem.weight"][g]`` is net g's stem weight. The forward pass below is the
``study.nets.MLP`` forward written once for the stack: batched matmuls and elementwise
operations, one call per group instead of one per net. No operation mixes nets (each slice
of a batched matmul is its own product; norms reduce within a net), which is why a net's
numbers do not depend on the group it ran in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from study.config import Activation, ModelConfig, Norm, Skip
from study.nets import MLP


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


def per_net_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each net on its own batch: logits (G, B, C), y (G, B) -> (G,)."""
    g, b, c = logits.shape
    loss = F.cross_entropy(logits.reshape(g * b, c), y.reshape(g * b), reduction="none")
    return loss.view(g, b).mean(dim=1)


class Stack:
    """G nets of the shape ``cfg`` describes (init and seed may differ between them)."""

    def __init__(self, nets: Sequence[MLP], cfg: ModelConfig, device: torch.device):
        self.cfg = cfg
        first = nets[0]
        # Linear weights are stored transposed, (G, in, out): the batched matmuls then read
        # and write contiguous matrices forward and backward (no transposed copies).
        self.params: dict[str, torch.Tensor] = {}
        for name, p in first.named_parameters():
            stacked = torch.stack([net.get_parameter(name).detach() for net in nets])
            if p.dim() == 2:
                stacked = stacked.transpose(1, 2)
            self.params[name] = stacked.contiguous().to(device).requires_grad_()
        # Batch norm's running statistics (num_batches_tracked only matters without momentum).
        self.buffers = {
            name: torch.stack([net.get_buffer(name) for net in nets]).to(device)
            for name, _ in first.named_buffers()
            if not name.endswith("num_batches_tracked")
        }
        # The constants of the norm and activation modules, read off the built net so that
        # they are written in one place (study.nets and PyTorch's defaults).
        block = first.blocks[0]
        self.norm_eps = getattr(block.norm, "eps", 0.0)
        self.norm_momentum = getattr(block.norm, "momentum", 0.0)
        self.act = block.act
        self.training = True

    @classmethod
    def of(cls, nets: Sequence[MLP], cfg: ModelConfig) -> Stack:
        return cls(nets, cfg, next(nets[0].parameters()).device)

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
        mean_key, var_key = prefix + "running_mean", prefix + "running_var"
        if self.training:
            var, mean = torch.var_mean(z, dim=1, unbiased=False, keepdim=True)
            with torch.no_grad():  # running variance uses the unbiased estimate, as PyTorch's
                n, m = z.shape[1], self.norm_momentum
                self.buffers[mean_key].mul_(1 - m).add_(mean.squeeze(1), alpha=m)
                self.buffers[var_key].mul_(1 - m).add_(var.squeeze(1) * (n / (n - 1)), alpha=m)
        else:
            mean = self.buffers[mean_key].unsqueeze(1)
            var = self.buffers[var_key].unsqueeze(1)
        weight = self.params[prefix + "weight"].unsqueeze(1)
        bias = self.params[prefix + "bias"].unsqueeze(1)
        return (z - mean) * (torch.rsqrt(var + self.norm_eps) * weight) + bias

    def _activate(self, u: torch.Tensor, prefix: str) -> torch.Tensor:
        if self.cfg.activation == Activation.prelu:  # one learned slope per net
            slope = self.params[prefix + "weight"].unsqueeze(-1)  # (G, 1, 1)
            return torch.where(u >= 0, u, slope * u)
        return self.act(u)

    def forward(self, x: torch.Tensor, trace: list[Trace] | None = None) -> torch.Tensor:
        """Logits (G, B, classes) for x (G, B, in), or x (B, in) shared by every net.

        With ``trace`` (a list), each block's tensors are appended to it and dL/dz is kept.
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
            if cfg.skip == Skip.none:
                out = a
            elif cfg.skip == Skip.residual:
                out = h + cfg.residual.scale * a
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
