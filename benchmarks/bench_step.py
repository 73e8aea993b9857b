"""Wall-clock cost of the study's instrumentation, against a bare PyTorch training loop.

Three variants train the same network (depth 32, width 128, batch 128, relu, kaiming_normal,
no norm, no skip, SGD with momentum, one CPU thread) for the same number of steps on the same
batches, in one process:

- ``bare``: a plain PyTorch loop over the same net (``nets.build``, ``torch.optim.SGD``,
  ``curriculum.epochs``: the batches of training without a curriculum): forward,
  cross_entropy, zero_grad, backward, step. Nothing else.
- ``instrumented``: ``loop.run`` (a stack of one net) with probes on the default log-spaced
  schedule (0, 1, 2, 5, ..., steps) and evaluation pushed out of the way
  (``train.eval_every = steps``). Its excess over ``bare`` is the cost of the
  schedule-driven instrumentation; the target is at most 10% over a 1000-step run.
- ``full``: ``loop.run`` with the default evaluation schedule (``train.eval_every = 50``),
  reported for information.

Within each repeat the variants alternate (bare, instrumented, full, bare, ...) so that machine
noise hits all of them alike; each timing gets a fresh model built with the same seed, and the
table reports medians over repeats. Timings are printed, never asserted.

The learning rate defaults to 0.01 rather than the study's 0.05: at depth 32 the default
diverges (seed 0: at step 479), and ``loop.run`` stops at divergence, which would time less
work than the bare loop does. The learning rate does not change the work per step.

    .venv/bin/python benchmarks/bench_step.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from study.config import Config, DataConfig, Dataset
from study.data import Splits, build
from study.engine import allocator, curriculum, loop, nets
from study.engine.stack import Stack

CONF = Path(__file__).resolve().parent.parent / "conf"
DEVICE = torch.device("cpu")


def compose_config(*overrides: str) -> Config:
    """The project's own conf/, composed with overrides, as the typed Config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def in_memory_splits(num_samples: int) -> Splits:
    arrays = build(DataConfig(name=Dataset.mnist1d, num_samples=num_samples))
    labels = [arrays[f"y_{s}"] for s in ("train", "val", "test")]
    return Splits(
        **arrays,
        num_features=int(arrays["x_train"].shape[1]),
        num_classes=int(max(y.max() for y in labels)) + 1,
        sha256="in-memory",
    )


def fresh_model(splits: Splits, cfg: Config) -> nets.MLP:
    # As study.train initializes it: the same init for every timing.
    return nets.build(splits.num_features, splits.num_classes, cfg.model, cfg.seed).to(DEVICE)


def bare(splits: Splits, cfg: Config) -> tuple[float, float]:
    """(seconds, probe seconds = 0) of a plain loop over the batches ``loop.run`` would use."""
    model = fresh_model(splits, cfg)
    t0 = time.perf_counter()
    x_train = torch.as_tensor(splits.x_train, device=DEVICE)
    y_train = torch.as_tensor(splits.y_train, device=DEVICE)
    o = cfg.optim
    optimizer = torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = curriculum.epochs(len(x_train), cfg.train.batch_size, gen)
    model.train()
    for _ in range(cfg.train.steps):
        idx = next(batches).to(DEVICE)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0, 0.0


def instrumented(splits: Splits, cfg: Config) -> tuple[float, float]:
    """(seconds, seconds inside probes) of ``loop.run``."""
    stack = Stack.of([fresh_model(splits, cfg)], cfg.model)
    t0 = time.perf_counter()
    [outcome] = loop.run(stack, splits, [cfg], DEVICE)
    seconds = time.perf_counter() - t0
    if outcome.status != "finished":  # a diverged run would time less work
        raise RuntimeError(f"run {outcome.status} at step {outcome.diverged_at_step}")
    return seconds, outcome.timings["probe_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (see above)")
    parser.add_argument("--samples", type=int, default=5000, help="MNIST-1D examples made")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant first")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    allocator.keep_freed_memory()  # as every sweep worker does (study.runs.cell.execute_group)
    common = [
        f"model.depth={args.depth}",
        f"model.width={args.width}",
        "model.activation=relu",
        "model.init=kaiming_normal",
        "model.norm=none",
        "model.skip=none",
        "optim=sgd",
        f"optim.lr={args.lr}",
        f"train.batch_size={args.batch}",
        "train.device=cpu",
        "train.threads=1",
        "probe.enabled=true",
        "probe.schedule=log125",
        "tracking.enabled=false",
    ]

    def configs(steps: int) -> dict[str, Config]:
        return {
            "bare": compose_config(*common, f"train.steps={steps}"),
            "instrumented": compose_config(
                *common, f"train.steps={steps}", f"train.eval_every={max(steps, 1)}"
            ),
            "full": compose_config(*common, f"train.steps={steps}", "train.eval_every=50"),
        }

    runners: dict[str, Callable[[Splits, Config], tuple[float, float]]] = {
        "bare": bare,
        "instrumented": instrumented,
        "full": instrumented,
    }
    cfgs = configs(args.steps)
    n_probes = len(loop.probe_steps(cfgs["instrumented"].probe.schedule, args.steps))
    print(
        f"depth {args.depth}, width {args.width}, batch {args.batch}, {args.steps} steps, "
        f"{args.repeats} repeats, lr {args.lr}, {n_probes} probes, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread"
    )

    splits = in_memory_splits(args.samples)
    for name, cfg in configs(args.warmup).items():  # first-call costs out of the timings
        runners[name](splits, cfg)

    seconds: dict[str, list[float]] = {name: [] for name in runners}
    probe_s: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        for name, run in runners.items():
            s, p = run(splits, cfgs[name])
            seconds[name].append(s)
            probe_s[name].append(p)
        print(f"  repeat {r + 1}: " + "  ".join(f"{n} {v[-1]:.2f}s" for n, v in seconds.items()))

    median = {name: statistics.median(v) for name, v in seconds.items()}
    print()
    print(f"{'variant':<14}{'median s':>10}{'ms/step':>10}{'vs bare':>10}")
    for name, s in median.items():
        ms = 1e3 * s / max(args.steps, 1)
        print(f"{name:<14}{s:>10.2f}{ms:>10.2f}{s / median['bare']:>10.3f}")
    probes = statistics.median(probe_s["instrumented"])
    extra = median["instrumented"] - median["bare"]
    print(
        f"probes in instrumented run: {probes:.2f}s ({n_probes} probes, "
        f"{1e3 * probes / max(n_probes, 1):.1f} ms each) = {100 * probes / median['bare']:.1f}% "
        f"of bare; rest of the excess: {extra - probes:+.2f}s"
    )
    overhead = 100 * (median["instrumented"] / median["bare"] - 1)
    print(f"instrumentation overhead: {overhead:+.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
