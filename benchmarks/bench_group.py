"""Nets trained as one stack against the same nets trained one at a time.

G nets of one shape (default: 20 nets, depth 32, width 64, batch 64, relu, no norm, no
skip, SGD with momentum; seeds 0..G-1, alternating two inits), the same steps and
batches, one CPU thread, five ways:

- ``plain``: each net alone in a plain PyTorch loop (``nets.build`` + ``torch.optim.SGD``,
  no probes, no evaluation): what a single run costs without the study's engine;
- ``alone``: each net alone through ``study.engine.loop.run`` (a stack of one) with the sweep's
  probes and evaluations;
- ``stacked``: the G nets as one stack (``study.engine.stack``, ``study.engine.optimizers``) in
  a plain loop, no probes, no evaluation: what the stacked arithmetic costs in PyTorch's eager mode;
- ``vmap``: the G nets' own modules (``nets.build``) through torch.func, in the same plain
  loop: parameters stacked by ``torch.func.stack_module_state``, per-net gradients by
  ``torch.vmap(torch.func.grad(loss))`` with the loss a ``functional_call`` of the module,
  and ``torch.optim.SGD`` over the stacked tensors. It trains what ``stacked`` trains
  (``tests/test_benchmarks.py``: the parameters after 10 steps agree to float32 rounding);
  the difference is the cost of PyTorch's generic batching against the engine's hand-written
  stack (``study.engine.stack``'s docstring says what else tells them apart);
- ``group``: the G nets as one stack through ``study.engine.loop.run``, probes and evaluations
  included.

Printed side by side: seconds, per-net block-steps per second (depth x steps x nets /
seconds) and the ratio to ``plain``. Also printed: the arithmetic ceilings on this
machine, the block-steps/s the group would reach if every step cost only its three
batched matmuls per block at the rate ``torch.bmm`` reaches on the group's shapes, with
the operands in the core's caches (``ceiling``) and cycling through the net's blocks as a
real step's do (``ceiling*``); the gap between ``group`` and ``ceiling*`` is the engine's
own overhead, mostly elementwise passes over activations that no longer fit the caches.
The variants alternate within each repeat; medians are reported. Timings are printed,
never asserted.

The shape has no norm and no dropout, and the ``vmap`` variant refuses nets of different
learning rates; what torch.func does with each (torch 2.13.0, checked 2026-12-06): batch
norm in training mode runs under vmap when each net's running statistics are stacked and
passed batched (as ``VmapNets`` passes its buffers), and moves each net's statistics as its
module would; passed unbatched (one set for all nets) it stops with "Batch norm got a
batched tensor as input while the running_mean or running_var, which will be updated in
place, were not batched". Dropout
(``nn.Dropout``) stops in vmap's default ``randomness="error"``; with ``"different"`` every
net's mask is a slice of one draw from one generator, so it depends on the group.
``torch.optim.SGD`` takes one rate per tensor, and a (G,) tensor of rates fails in its
step ("add_(): argument 'alpha' must be Number, not Tensor").

    .venv/bin/python benchmarks/bench_group.py [--nets 20] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import compose_config, in_memory_splits  # noqa: E402

from study.config import Config  # noqa: E402
from study.data import Splits  # noqa: E402
from study.engine import allocator, curriculum, loop, nets  # noqa: E402
from study.engine.optimizers import StackOptimizer  # noqa: E402
from study.engine.stack import Stack, per_net_loss  # noqa: E402

DEVICE = torch.device("cpu")


def built(splits: Splits, cfgs: list[Config]) -> list[nets.MLP]:
    out = []
    for cfg in cfgs:
        out.append(nets.build(splits.num_features, splits.num_classes, cfg.model, cfg.seed))
    return out


def plain(splits: Splits, cfgs: list[Config]) -> float:
    x = torch.as_tensor(splits.x_train)
    y = torch.as_tensor(splits.y_train)
    models = built(splits, cfgs)
    t0 = time.perf_counter()
    for cfg, model in zip(cfgs, models, strict=True):
        o = cfg.optim
        optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum)
        batches = curriculum.epochs(len(x), cfg.train.batch_size,
                                     torch.Generator().manual_seed(cfg.seed))  # fmt: skip
        for _ in range(cfg.train.steps):
            idx = next(batches)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - t0


def alone(splits: Splits, cfgs: list[Config]) -> float:
    models = built(splits, cfgs)
    t0 = time.perf_counter()
    for cfg, model in zip(cfgs, models, strict=True):
        loop.run(Stack.of([model], cfg.model), splits, [cfg], DEVICE)
    return time.perf_counter() - t0


def batch_streams(n: int, cfgs: list[Config]) -> list:
    """Each net's training batches, from its own stream, as ``loop.run`` draws them."""
    return [
        curriculum.epochs(n, c.train.batch_size, torch.Generator().manual_seed(c.seed))
        for c in cfgs
    ]


def train_stacked(stack: Stack, cfgs: list[Config], x: torch.Tensor, y: torch.Tensor) -> None:
    """``cfgs[0].train.steps`` steps of the stack: forward, loss, backward, step."""
    optimizer = StackOptimizer(stack, cfgs[0].optim, [c.optim.lr for c in cfgs])
    streams = batch_streams(len(x), cfgs)
    for _ in range(cfgs[0].train.steps):
        idx = torch.stack([next(s) for s in streams])
        loss = per_net_loss(stack(x[idx]), y[idx])
        stack.zero_grad()
        loss.sum().backward()
        optimizer.step()


def stacked(splits: Splits, cfgs: list[Config]) -> float:
    """The G nets as one stack in a plain loop: forward, loss, backward, step; nothing else."""
    x = torch.as_tensor(splits.x_train)
    y = torch.as_tensor(splits.y_train)
    stack = Stack.of(built(splits, cfgs), cfgs[0].model)
    t0 = time.perf_counter()
    train_stacked(stack, cfgs, x, y)
    return time.perf_counter() - t0


class VmapNets:
    """The G nets' modules as torch.func runs them: parameters stacked by
    ``stack_module_state`` (each (G, ...), Linear weights in the module's (out, in)
    layout) and one module on the meta device whose forward ``functional_call`` runs."""

    def __init__(self, models: list[nets.MLP]):
        params, self.buffers = torch.func.stack_module_state(models)
        # Detached: parameters that require grad would make each vmap(grad) call also record
        # an outer autograd graph (for a second derivative) that nothing uses.
        self.params = {name: p.detach() for name, p in params.items()}
        self.base = copy.deepcopy(models[0]).to("meta")

    def loss(self, params: nets.Tensors, buffers: nets.Tensors, x: torch.Tensor, y: torch.Tensor):
        """One net's mean cross-entropy on its batch: x (B, in), y (B,)."""
        return F.cross_entropy(torch.func.functional_call(self.base, (params, buffers), (x,)), y)


def train_vmapped(vm: VmapNets, cfgs: list[Config], x: torch.Tensor, y: torch.Tensor) -> None:
    """``cfgs[0].train.steps`` steps of the nets: per-net gradients by ``vmap(grad(loss))``,
    then ``torch.optim.SGD`` over the stacked tensors, as it steps a net alone (``plain``)."""
    o = cfgs[0].optim
    if any(c.optim.lr != o.lr for c in cfgs):  # a stacked tensor takes one rate in torch.optim
        raise ValueError("the vmap variant trains nets of one learning rate")
    optimizer = torch.optim.SGD(list(vm.params.values()), lr=o.lr, momentum=o.momentum)
    per_net_grads = torch.vmap(torch.func.grad(vm.loss))
    streams = batch_streams(len(x), cfgs)
    for _ in range(cfgs[0].train.steps):
        idx = torch.stack([next(s) for s in streams])
        grads = per_net_grads(vm.params, vm.buffers, x[idx], y[idx])
        for name, p in vm.params.items():
            p.grad = grads[name]
        optimizer.step()


def vmapped(splits: Splits, cfgs: list[Config]) -> float:
    """The G nets' own modules through torch.func in a plain loop; nothing else."""
    x = torch.as_tensor(splits.x_train)
    y = torch.as_tensor(splits.y_train)
    vm = VmapNets(built(splits, cfgs))
    t0 = time.perf_counter()
    train_vmapped(vm, cfgs, x, y)
    return time.perf_counter() - t0


def group(splits: Splits, cfgs: list[Config]) -> float:
    stack = Stack.of(built(splits, cfgs), cfgs[0].model)
    t0 = time.perf_counter()
    outcomes = loop.run(stack, splits, cfgs, DEVICE)
    seconds = time.perf_counter() - t0
    if any(o.status != "finished" for o in outcomes):  # a diverged net would time less work
        raise RuntimeError("a net diverged; lower --lr")
    return seconds


def bmm_ceiling(nets_: int, batch: int, width: int, layers: int, steps: int) -> float:
    """Block-steps/s per net if a step were its three batched matmuls per block, no more.

    ``layers`` sets of operands, used in turn: with 1 they stay in the core's caches (the
    matmul kernel's own rate); with the net's depth each block's operands were last touched
    a whole pass earlier, as in a real step, where they come from the slower shared cache.
    """
    x = [torch.randn(nets_, batch, width) for _ in range(layers)]
    w = [torch.randn(nets_, width, width) for _ in range(layers)]
    g = [torch.randn(nets_, batch, width) for _ in range(layers)]

    def block_step(i: int) -> None:
        torch.bmm(x[i], w[i])
        torch.bmm(g[i], w[i].transpose(1, 2))
        torch.bmm(x[i].transpose(1, 2), g[i])

    for i in range(layers):
        block_step(i)
    rounds = max(1, steps // layers)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for i in range(layers):
            block_step(i)
    per_block_step = (time.perf_counter() - t0) / (rounds * layers)
    return 1.0 / per_block_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--samples", type=int, default=5000, help="MNIST-1D examples made")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    allocator.keep_freed_memory()  # as every sweep worker does (study.runs.cell.execute_group)

    def configs(steps: int) -> list[Config]:
        common = [f"model.depth={args.depth}", f"model.width={args.width}", "optim=sgd",
                  f"optim.lr={args.lr}", f"train.steps={steps}", f"train.batch_size={args.batch}",
                  "train.eval_every=50", "probe.schedule=log10", "train.device=cpu",
                  "tracking.enabled=false"]  # fmt: skip
        inits = ("xavier_normal", "kaiming_normal")
        return [compose_config(*common, f"seed={s}", f"model.init={inits[s % 2]}")
                for s in range(args.nets)]  # fmt: skip

    splits = in_memory_splits(args.samples)
    variants = {"plain": plain, "alone": alone, "stacked": stacked, "vmap": vmapped,
                "group": group}  # fmt: skip
    for run in variants.values():  # first-call costs out of the timings
        run(splits, configs(5)[:2])
    cfgs = configs(args.steps)
    print(
        f"{args.nets} nets, depth {args.depth}, width {args.width}, batch {args.batch}, "
        f"{args.steps} steps, {args.repeats} repeats, torch {torch.__version__}, 1 thread"
    )
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, run in variants.items():
            seconds[name].append(run(splits, cfgs))
        print(f"  repeat {r + 1}: " + "  ".join(f"{n} {v[-1]:.2f}s" for n, v in seconds.items()))

    work = args.depth * args.steps * args.nets  # block-steps, all nets together
    median = {name: statistics.median(v) for name, v in seconds.items()}
    print()
    print(f"{'variant':<10}{'median s':>10}{'block-steps/s per net':>24}{'vs plain':>10}")
    for name, s in median.items():
        rate = work / s / args.nets
        print(f"{name:<10}{s:>10.2f}{rate:>24.0f}{median['plain'] / s:>10.2f}x")
    plain_rate = work / median["plain"] / args.nets
    ceilings = {
        "ceiling": (1, "three torch.bmm per block-step, operands in cache"),
        "ceiling*": (args.depth, f"the same, operands cycling through {args.depth} blocks"),
    }
    for name, (layers, what) in ceilings.items():
        rate = bmm_ceiling(args.nets, args.batch, args.width, layers, 32 * 200)
        print(f"{name:<10}{'':>10}{rate:>24.0f}{rate / plain_rate:>10.2f}x   ({what})")


if __name__ == "__main__":
    main()
