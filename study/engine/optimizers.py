"""SGD with momentum and AdamW for a :class:`study.engine.stack.Stack`, one learning rate per net.

``torch.optim`` takes one learning rate per parameter group, while a stack holds each
parameter of every net in one tensor; so the two updates are written out here, as PyTorch
defines them (``torch.optim.SGD``: dampening 0, no Nesterov; ``torch.optim.AdamW``: no
amsgrad), with the learning rate a (G,) tensor broadcast over each parameter's net axis.
Gradient clipping is per net too: each net's global gradient norm, as
``clip_grad_norm_`` computes it for a net alone. Everything is elementwise within a net,
so a net's update never depends on the others in its stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from study.config import OptimConfig, Optimizer
from study.engine.stack import Stack


def per_net(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (G,) tensor shaped to broadcast over ``like`` (G, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class StackOptimizer:
    """The optimizer of ``stack``; ``select`` keeps it aligned when nets leave the stack."""

    def __init__(self, stack: Stack, cfg: OptimConfig, lrs: Sequence[float]):
        self.stack, self.cfg = stack, cfg
        device = next(iter(stack.params.values())).device
        self.lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.state: dict[str, list[torch.Tensor]] = {}  # name -> per-parameter buffers
        self.steps = 0

    def select(self, keep: torch.Tensor) -> None:
        self.lr = self.lr[keep]
        self.state = {name: [b[keep] for b in bufs] for name, bufs in self.state.items()}

    def clip(self, max_norm: float) -> None:
        grads = [p.grad for p in self.stack.params.values()]
        squares = torch.stack([g.reshape(g.shape[0], -1).square().sum(dim=1) for g in grads])
        norms = squares.sum(dim=0).sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(per_net(coef, g))

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        params = list(self.stack.params.values())
        grads = [p.grad for p in params]
        lrs = [per_net(self.lr, p) for p in params]
        if self.cfg.name == Optimizer.sgd:
            self._sgd(params, grads, lrs)
        else:
            self._adamw(params, grads, lrs)

    def _sgd(self, params: list, grads: list, lrs: list) -> None:
        o = self.cfg
        if o.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=o.weight_decay)
        if o.momentum:
            if "momentum" not in self.state:
                self.state["momentum"] = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.state["momentum"], o.momentum)
                torch._foreach_add_(self.state["momentum"], grads)
            grads = self.state["momentum"]
        self._descend(params, grads, lrs)

    def _adamw(self, params: list, grads: list, lrs: list) -> None:
        o = self.cfg
        beta1, beta2 = o.betas
        eps = 1e-8  # torch.optim.AdamW's default
        if o.weight_decay:
            for p, lr in zip(params, lrs, strict=True):
                p.mul_(1 - lr * o.weight_decay)
        if "exp_avg" not in self.state:
            self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1**self.steps
        bias2_sqrt = (1 - beta2**self.steps) ** 0.5
        denom = torch._foreach_div(torch._foreach_sqrt(exp_avg_sq), bias2_sqrt)
        torch._foreach_add_(denom, eps)
        self._descend(params, torch._foreach_div(exp_avg, denom), [lr / bias1 for lr in lrs])

    def _descend(self, params: list, directions: list, lrs: list) -> None:
        """params -= lr * direction, per net: one broadcasting call per tensor (foreach ops
        broadcast slowly, 3x). The same call whatever the group, so that a net's update is
        bitwise the same alone and in any group."""
        for p, d, lr in zip(params, directions, lrs, strict=True):
            p.addcmul_(d, lr, value=-1)
