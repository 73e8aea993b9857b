"""Is the standard train sweep's budget long enough? A calibration, not a timing.

The issue's criterion for the budget: depth-4 nets of every activation but sigmoid must
converge within it. This script trains every depth-4 configuration of the standard train
sweep's target strata (6 activations x 2 inits x 3 norms x {none, residual}) for
``--reference-steps`` steps at ``--reference-rates`` (a wider and finer grid than the
sweep's), ``--seeds`` seeds each, with the sweep's own width, batch size, data and
optimizer (composed from ``conf/sweep/standard/train.yaml``). Runs of the same seed and
rate share their first steps exactly, so one long run gives both numbers:

- **budget**: the mean validation accuracy over seeds (a diverged run counts 0) at the
  sweep's budget and at the best of the sweep's own rates, as the analysis chooses it;
- **reference**: the same at the reference budget and the best of the reference rates.

A configuration has converged within the budget if budget >= reference - ``--tolerance``
(0.02 by default: about two standard errors of a 3-seed mean on the 360 validation
images). Printed: every configuration's two numbers and gap, the worst gaps, and how many
non-sigmoid configurations pass. It asserts nothing.

    .venv/bin/python benchmarks/calibrate_budget.py [--seeds 3] [--reference-steps 1000]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import compose_config  # noqa: E402

from study import data as datasets  # noqa: E402
from study.config import Config  # noqa: E402
from study.engine import loop  # noqa: E402
from study.runs import cell  # noqa: E402

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu")
INITS = ("xavier_normal", "kaiming_normal")
DEVICE = torch.device("cpu")


def sweep_budget() -> tuple[int, list[float], int]:
    """(steps, learning rates, evaluation interval) of the standard train preset."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=standard/train"],
                      return_hydra_config=True)  # fmt: skip
    rates = [float(r) for r in str(cfg.hydra.sweeper.params["optim.lr"]).split(",")]
    return int(cfg.train.steps), rates, int(cfg.train.eval_every)


def configs(act: str, norm: str, skip: str, rates: list[float], steps: int, seeds: int):
    common = ["+sweep=standard/train", "model.depth=4", f"model.activation={act}",
              f"model.norm={norm}", f"model.skip={skip}", f"train.steps={steps}",
              "probe.enabled=false", "tracking.enabled=false", "train.device=cpu"]  # fmt: skip
    return [
        compose_config(*common, f"optim.lr={lr}", f"model.init={init}", f"seed={seed}")
        for lr, init, seed in itertools.product(rates, INITS, range(seeds))
    ]


def val_at(curve: dict, step: int) -> float:
    return curve["val_accuracy"][curve["step"].index(step)] if step in curve["step"] else 0.0


def best(runs: list[tuple[Config, dict]], init: str, rates: list[float], step: int) -> float:
    """Best over ``rates`` of the seed-mean validation accuracy at ``step`` (diverged: 0)."""
    means = []
    for lr in rates:
        values = [val_at(curve, step) for cfg, curve in runs
                  if cfg.model.init == init and cfg.optim.lr == lr]  # fmt: skip
        means.append(float(np.mean(values)))
    return max(means)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--reference-rates", default="0.001,0.003,0.01,0.03,0.1,0.3")
    parser.add_argument("--tolerance", type=float, default=0.02)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, rates, every = sweep_budget()
    reference = sorted({*rates, *(float(r) for r in args.reference_rates.split(","))})
    if args.reference_steps % every or steps % every:
        raise SystemExit(f"the budgets must be multiples of the evaluation interval {every}")
    print(
        f"standard train sweep: {steps} steps at rates {rates}; reference: "
        f"{args.reference_steps} steps at rates {reference}; depth 4, {args.seeds} seeds"
    )
    splits = None
    rows = []
    t0 = time.perf_counter()
    for act, norm, skip in itertools.product(ACTIVATIONS, ("none", "batch", "layer"),
                                             ("none", "residual")):  # fmt: skip
        cfgs = configs(act, norm, skip, reference, args.reference_steps, args.seeds)
        splits = splits or datasets.load_cached(cfgs[0].data)
        cells = [cell.Cell(cfg, {}, "", Path(".")) for cfg in cfgs]
        outcomes = loop.run(cell.build_stack(cells, splits, DEVICE), splits, cfgs, DEVICE)
        runs = [(cfg, out.curve) for cfg, out in zip(cfgs, outcomes, strict=True)]
        for init in INITS:
            at_budget = best(runs, init, rates, steps)
            ref = best(runs, init, reference, args.reference_steps)
            rows.append((act, norm, skip, init, at_budget, ref, ref - at_budget))
        print(f"  {act} {norm} {skip}: {time.perf_counter() - t0:.0f}s", flush=True)

    print(f"\n{'activation':<11}{'norm':<6}{'skip':<9}{'init':<16}{'budget':>8}{'reference':>11}"
          f"{'gap':>8}")  # fmt: skip
    for act, norm, skip, init, at_budget, ref, gap in rows:
        print(f"{act:<11}{norm:<6}{skip:<9}{init:<16}{at_budget:>8.3f}{ref:>11.3f}{gap:>8.3f}")
    rest = [r for r in rows if r[0] != "sigmoid"]
    passed = sum(r[6] <= args.tolerance for r in rest)
    worst = max(rest, key=lambda r: r[6])
    sigmoid = max((r for r in rows if r[0] == "sigmoid"), key=lambda r: r[6])
    print(f"\nevery activation but sigmoid: {passed} of {len(rest)} configurations within "
          f"{args.tolerance} of the reference; the worst gap {worst[6]:.3f} "
          f"({' '.join(worst[:4])}); sigmoid's worst {sigmoid[6]:.3f} "
          f"({' '.join(sigmoid[:4])})")  # fmt: skip


if __name__ == "__main__":
    main()
