"""The training loop of one run: probes on their schedule, evaluation, divergence.

Between scheduled steps a step is plain PyTorch: forward, backward, (clip), update, and
the loss kept on the device. Nothing is read back to the host until a probe or an
evaluation is due, which is also when divergence is checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from study.config import Config, Optimizer
from study.data import Splits
from study.nets import MLP
from study.probes import STATS, Probe, probe_steps
from study.records import Status


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


def make_optimizer(model: MLP, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name is Optimizer.sgd:
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs; the last partial batch is dropped (batch norm needs full ones)."""
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


@torch.no_grad()
def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) in eval mode: batch norm uses its running statistics."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    return loss, accuracy


def run(model: MLP, data: Splits, cfg: Config, device: torch.device) -> Outcome:
    t0 = time.perf_counter()
    tensors = {
        name: torch.as_tensor(getattr(data, name), device=device)
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    if cfg.data.input_scale != 1.0:
        for name in ("x_train", "x_val", "x_test"):
            tensors[name] = tensors[name] * cfg.data.input_scale
    x_train, y_train = tensors["x_train"], tensors["y_train"]
    steps = cfg.train.steps

    # Separate streams, so that probing more or less never changes the training batches.
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    probe_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    probe_idx = torch.randperm(len(x_train), generator=probe_gen)
    probe_batches = []
    for k in range(cfg.probe.batches):
        idx = probe_idx[k * cfg.probe.batch_size : (k + 1) * cfg.probe.batch_size].to(device)
        probe_batches.append((x_train[idx], y_train[idx]))

    probe = Probe(model, cfg.model.activation, probe_batches)
    due = set(probe_steps(cfg.probe.schedule, steps)) if cfg.probe.enabled else set()
    rows: list[tuple[int, dict[str, np.ndarray]]] = []
    probe_time = 0.0

    def measure(step: int, update_ratio: torch.Tensor | None = None) -> None:
        nonlocal probe_time
        tp = time.perf_counter()
        stats = probe.measure()
        if update_ratio is not None:
            stats["update_ratio"] = update_ratio.numpy()
        rows.append((step, stats))
        probe_time += time.perf_counter() - tp

    if 0 in due:
        measure(0)

    optimizer = make_optimizer(model, cfg)
    losses = torch.empty(steps, device=device)
    curve: dict[str, list[float]] = {
        k: [] for k in ("step", "train_loss", "val_loss", "val_accuracy")
    }
    outcome = Outcome(status=Status.finished, layers={})
    batches = batch_indices(len(x_train), cfg.train.batch_size, batch_gen)
    last_eval = 0
    clip = cfg.optim.clip_norm
    model.train()

    for step in range(1, steps + 1):
        idx = next(batches).to(device)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        probe_due = step in due
        if probe_due:
            probe.before_update()
        optimizer.step()
        losses[step - 1] = loss.detach()

        eval_due = step % cfg.train.eval_every == 0 or step == steps
        if not (probe_due or eval_due):
            continue
        finite = torch.isfinite(losses[:step])
        if not bool(finite.all()):
            outcome.status = Status.diverged
            outcome.diverged_at_step = int((~finite).nonzero()[0].item()) + 1
            outcome.steps_done = step
            break
        if probe_due:
            measure(step, probe.update_ratio())
        if eval_due:
            val_loss, val_acc = evaluate(model, tensors["x_val"], tensors["y_val"])
            curve["step"].append(step)
            curve["train_loss"].append(losses[last_eval:step].mean().item())
            curve["val_loss"].append(val_loss)
            curve["val_accuracy"].append(val_acc)
            last_eval = step
            if outcome.steps_to_target is None and val_acc >= cfg.data.target_accuracy:
                outcome.steps_to_target = step
    else:
        outcome.steps_done = steps

    train_time = time.perf_counter() - t0 - probe_time
    if outcome.status is Status.finished and steps > 0:
        test_loss, test_acc = evaluate(model, tensors["x_test"], tensors["y_test"])
        val_loss, val_acc = evaluate(model, tensors["x_val"], tensors["y_val"])
    else:  # diverged, or probe-only (nothing was trained to evaluate)
        test_loss = test_acc = val_loss = val_acc = math.nan
    outcome.metrics = {
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "train_loss": curve["train_loss"][-1] if curve["train_loss"] else math.nan,
    }
    outcome.curve = curve
    outcome.layers = stack_rows(rows, len(model.blocks))
    outcome.timings = {"train_s": train_time, "probe_s": probe_time}
    return outcome


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
