"""The training loop of a group of nets of one shape: probes on their schedule,
evaluation, divergence.

The group trains as one stack (``study.engine.stack``): one forward, backward and update per step
for all its nets, each net on its own batches in its own order. Between scheduled steps a
step is plain PyTorch: forward (with each net's dropout masks), backward, (clip), update,
and the losses kept on the device. Nothing is read back to the host until a probe or an
evaluation is due, which is also when divergence is checked. Evaluations and probes run
without dropout. A single run is a group of one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from study.config import Config
from study.data import Splits
from study.engine import curriculum
from study.engine.optimizers import StackOptimizer
from study.engine.probes import STATS, Probe, probe_steps
from study.engine.stack import Dropout, Stack, per_net_loss
from study.records import Status

# A learning curve's columns, one value per evaluation: the mean training loss since the
# previous one (training mode, on the batches seen), the validation loss and accuracy, and,
# with train.eval_train, the whole training split's (evaluation mode).
CURVE_KEYS = ("step", "train_loss", "val_loss", "val_accuracy")
TRAIN_SPLIT_CURVE = ("train_split_loss", "train_split_accuracy")
# Evaluated once training ends, in evaluation mode (no dropout, batch norm's running
# statistics): split -> its metrics' prefix ("train_loss" is the curve's, above).
FINAL_SPLITS = {"test": "test", "val": "val", "train": "train_split"}
FINAL_METRICS = tuple(f"{p}_{m}" for p in FINAL_SPLITS.values() for m in ("loss", "accuracy"))


@dataclass
class Outcome:
    """What a run measured; ``train.py`` turns it into records and MLflow entries."""

    status: Status  # finished or diverged (a crash is recorded by train.py as failed)
    layers: dict[str, np.ndarray]  # column -> values, one row per (step, layer)
    curve: dict[str, list[float]] = field(default_factory=dict)  # one row per evaluation
    steps_done: int = 0
    diverged_at_step: int | None = None
    steps_to_target: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def evaluate(stack: Stack, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each net's (loss, accuracy) on (x, y), in eval mode: batch norm uses running statistics."""
    was_training = stack.training
    stack.train(False)
    logits = stack(x)
    stack.train(was_training)
    labels = y.expand(logits.shape[0], -1)
    loss = per_net_loss(logits, labels).double().cpu().numpy()
    accuracy = (logits.argmax(dim=-1) == labels).double().mean(dim=1).cpu().numpy()
    return loss, accuracy


class Nets:
    """What the loop keeps per net; ``alive`` maps stack positions to the group's nets."""

    def __init__(self, cfgs: Sequence[Config], difficulty: np.ndarray):
        self.alive = list(range(len(cfgs)))
        self.rows: list[list[tuple[int, dict[str, np.ndarray]]]] = [[] for _ in cfgs]
        # Separate streams, so that probing more or less never changes the training batches.
        self.batches = [
            curriculum.batches(difficulty, c.train.batch_size, c.train.steps,
                               c.train.curriculum, c.seed, torch.Generator().manual_seed(c.seed))
            for c in cfgs
        ]  # fmt: skip

    def next_batch(self, device: torch.device) -> torch.Tensor:
        return torch.stack([next(self.batches[i]) for i in self.alive]).to(device)

    def record(self, step: int, stats: dict[str, np.ndarray]) -> None:
        for position, i in enumerate(self.alive):
            self.rows[i].append((step, {k: v[position] for k, v in stats.items()}))


def probe_batches(data_x: torch.Tensor, data_y: torch.Tensor, cfgs: Sequence[Config]):
    """Each net's fixed probe batches, from its own stream: [(x (G, B, in), y (G, B))]."""
    per_net = []
    for c in cfgs:
        stream = torch.Generator().manual_seed(c.seed + 1_000_003)
        order = torch.randperm(len(data_x), generator=stream)
        size = c.probe.batch_size
        per_net.append([order[k * size : (k + 1) * size] for k in range(c.probe.batches)])
    batches = []
    for k in range(cfgs[0].probe.batches):
        idx = torch.stack([net[k] for net in per_net]).to(data_x.device)
        batches.append((data_x[idx], data_y[idx]))
    return batches


def run(stack: Stack, data: Splits, cfgs: Sequence[Config], device: torch.device) -> list[Outcome]:
    """Train and probe the nets of ``stack`` together; ``cfgs[g]`` is net g's config.

    The configs agree on everything but the seed, the init (already in the stack), the
    learning rate, the dropout rate and the curriculum. A net whose loss turns non-finite is
    recorded as diverged at the check that sees it and leaves the stack; the others go on.
    """
    t0 = time.perf_counter()
    cfg = cfgs[0]
    tensors = {
        name: torch.as_tensor(getattr(data, name), device=device)
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    if cfg.data.input_scale != 1.0:
        for name in ("x_train", "x_val", "x_test"):
            tensors[name] = tensors[name] * cfg.data.input_scale
    x_train, y_train = tensors["x_train"], tensors["y_train"]
    steps = cfg.train.steps
    group = len(cfgs)

    nets = Nets(cfgs, data.difficulty_train)
    dropout = Dropout([c.model.dropout for c in cfgs], [c.seed for c in cfgs], device)
    widths = stack.block_widths
    probe = Probe(stack, cfg.model.activation, probe_batches(x_train, y_train, cfgs))
    due = set(probe_steps(cfg.probe.schedule, steps)) if cfg.probe.enabled else set()
    probe_time = 0.0

    def measure(step: int, update_ratio: np.ndarray | None = None) -> None:
        nonlocal probe_time
        tp = time.perf_counter()
        stats = probe.measure()
        if update_ratio is not None:
            stats["update_ratio"] = update_ratio
        nets.record(step, stats)
        probe_time += time.perf_counter() - tp

    if 0 in due:
        measure(0)

    optimizer = StackOptimizer(stack, cfg.optim, [c.optim.lr for c in cfgs])
    losses = torch.empty(group, steps, device=device)
    outcomes = [Outcome(status=Status.finished, layers={}) for _ in cfgs]
    keys = CURVE_KEYS + TRAIN_SPLIT_CURVE if cfg.train.eval_train else CURVE_KEYS
    curves = [{k: [] for k in keys} for _ in cfgs]
    last_eval = 0
    clip = cfg.optim.clip_norm
    stack.train()

    for step in range(1, steps + 1):
        idx = nets.next_batch(device)
        masks = dropout.masks(idx.shape[1], widths)
        loss = per_net_loss(stack(x_train[idx], masks=masks), y_train[idx])
        stack.zero_grad()
        loss.sum().backward()  # nets share no parameter: each gets its own gradient
        if clip is not None:
            optimizer.clip(clip)
        probe_due = step in due
        if probe_due:
            probe.before_update()
        optimizer.step()
        losses[:, step - 1] = loss.detach()

        eval_due = step % cfg.train.eval_every == 0 or step == steps
        if not (probe_due or eval_due):
            continue
        finite = torch.isfinite(losses[:, :step])
        bad = (~finite.all(dim=1)).nonzero().flatten().tolist()
        if bad:
            for position in bad:
                out = outcomes[nets.alive[position]]
                out.status = Status.diverged
                out.diverged_at_step = int((~finite[position]).nonzero()[0].item()) + 1
                out.steps_done = step
            keep = torch.tensor(
                [p for p in range(len(nets.alive)) if p not in bad], dtype=torch.long
            )
            nets.alive = [nets.alive[p] for p in keep.tolist()]
            if not nets.alive:
                break
            keep = keep.to(device)
            stack.select(keep)
            dropout.select(keep)
            optimizer.select(keep)
            probe.select(keep)
            losses = losses[keep]
        if probe_due:
            measure(step, probe.update_ratio())
        if eval_due:
            val_loss, val_acc = evaluate(stack, tensors["x_val"], tensors["y_val"])
            train_loss = losses[:, last_eval:step].mean(dim=1).tolist()
            if cfg.train.eval_train:
                fit = evaluate(stack, x_train, y_train)
            for position, i in enumerate(nets.alive):
                curve = curves[i]
                curve["step"].append(step)
                curve["train_loss"].append(train_loss[position])
                curve["val_loss"].append(float(val_loss[position]))
                curve["val_accuracy"].append(float(val_acc[position]))
                if cfg.train.eval_train:
                    curve["train_split_loss"].append(float(fit[0][position]))
                    curve["train_split_accuracy"].append(float(fit[1][position]))
                target = cfgs[i].data.target_accuracy
                if outcomes[i].steps_to_target is None and val_acc[position] >= target:
                    outcomes[i].steps_to_target = step
            last_eval = step

    train_time = time.perf_counter() - t0 - probe_time
    finals: dict[int, list[float]] = {}
    if nets.alive and steps > 0:
        splits = [evaluate(stack, tensors[f"x_{s}"], tensors[f"y_{s}"]) for s in FINAL_SPLITS]
        for position, i in enumerate(nets.alive):
            finals[i] = [float(v[position]) for pair in splits for v in pair]
    for i, out in enumerate(outcomes):
        if out.status is Status.finished:
            out.steps_done = steps
        # diverged, or probe-only (nothing was trained to evaluate): NaN
        values = finals.get(i, [math.nan] * 2 * len(FINAL_SPLITS))
        out.metrics = dict(zip(FINAL_METRICS, values, strict=True))
        out.metrics["train_loss"] = (
            curves[i]["train_loss"][-1] if curves[i]["train_loss"] else math.nan
        )
        out.curve = curves[i]
        out.layers = stack_rows(nets.rows[i], cfg.model.depth)
        # The group's time, shared equally: what one net cost in it.
        out.timings = {
            "train_s": train_time / group,
            "probe_s": probe_time / group,
            "group_size": group,
        }
    return outcomes


def stack_rows(rows: list[tuple[int, dict[str, np.ndarray]]], depth: int) -> dict[str, np.ndarray]:
    """Per-probe dicts -> columns of one long table: step, layer, then ``STATS``."""
    columns: dict[str, np.ndarray] = {
        "step": np.repeat(np.array([s for s, _ in rows], dtype=np.int64), depth),
        "layer": np.tile(np.arange(1, depth + 1, dtype=np.int64), len(rows)),
    }
    for name in STATS:
        parts = [stats[name] for _, stats in rows]
        columns[name] = np.concatenate(parts).astype(np.float64) if parts else np.empty(0)
    return columns
