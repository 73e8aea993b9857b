"""The training loop of a group of nets of one shape: probes on their schedule, evaluation,
divergence and plateaus.

The group trains as one stack (``study.engine.stack``): one forward, backward and update
per step for all its nets, each net on its own batches in its own order. Between scheduled
steps a step is plain PyTorch: forward (with each net's dropout masks), backward, (clip),
update, and the losses kept on the device. Nothing is read back to the host until a probe
or an evaluation is due, which is also when divergence and plateaus are checked. A net
whose loss turns non-finite leaves the group as ``diverged``; with ``train.early_stop`` a
net whose validation loss has stopped improving (``train.patience``) leaves it as
``finished``, evaluated where it stopped. Evaluations and probes run without dropout. A
single run is a group of one.
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
from study.engine import curriculum, jacobian
from study.engine.optimizers import StackOptimizer
from study.engine.probes import STATS, Probe, probe_steps
from study.engine.stack import Dropout, Stack, per_net_loss
from study.records import Status

# A learning curve's columns, one value per evaluation: the mean training loss since the
# previous one (training mode, on the batches seen), the validation loss and accuracy, and,
# with train.eval_train, the whole training split's (evaluation mode).
CURVE_KEYS = ("step", "train_loss", "val_loss", "val_accuracy")
TRAIN_SPLIT_CURVE = ("train_split_loss", "train_split_accuracy")
# Evaluated once a net is done (at the budget, or at its plateau with early stopping), in
# evaluation mode (no dropout, batch norm's running statistics): split -> metrics' prefix.
FINAL_SPLITS = {"test": "test", "val": "val", "train": "train_split"}
FINAL_METRICS = tuple(f"{p}_{m}" for p in FINAL_SPLITS.values() for m in ("loss", "accuracy"))


@dataclass
class Outcome:
    """What a run measured; ``study.runs.cell`` turns it into records."""

    status: Status  # finished or diverged (a crash is recorded by the cell as failed)
    layers: dict[str, np.ndarray]  # column -> values, one row per (step, layer)
    curve: dict[str, list[float]] = field(default_factory=dict)  # one row per evaluation
    steps_done: int = 0
    diverged_at_step: int | None = None
    steps_to_target: int | None = None
    # The first evaluation at which the validation loss had not improved (by
    # train.min_delta, relative) for train.patience evaluations; None: still improving at
    # the end of its steps (or no plateau criterion: patience 0).
    plateau_at_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # The Jacobian's spectrum at initialization (probe.jacobian; study.engine.jacobian).
    jacobian: dict[str, float | bool | None] = field(default_factory=dict)


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


class Roster:
    """The group's nets still in the stack: ``alive[position]`` is the net (its index in the
    group) at that position of every stacked tensor. Retiring nets removes them from every
    object registered with it (each keeps only the positions given to ``select``), so no
    stacked state is ever left out of step with the stack."""

    def __init__(self, size: int, device: torch.device):
        self.alive = list(range(size))
        self.device = device
        self.members: list = []

    def register(self, *members) -> None:
        self.members.extend(members)

    def retire(self, positions: Sequence[int]) -> None:
        keep = [p for p in range(len(self.alive)) if p not in set(positions)]
        self.alive = [self.alive[p] for p in keep]
        if self.alive:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            for member in self.members:
                member.select(index)


class Losses:
    """Each alive net's training loss at every step, kept on the device until it is read."""

    def __init__(self, nets: int, steps: int, device: torch.device):
        self.values = torch.empty(nets, steps, device=device)

    def select(self, keep: torch.Tensor) -> None:
        self.values = self.values[keep]

    def non_finite(self, step: int) -> list[tuple[int, int]]:
        """(position, first bad step) of each net whose loss was not finite by ``step``."""
        finite = torch.isfinite(self.values[:, :step])
        bad = (~finite.all(dim=1)).nonzero().flatten().tolist()
        return [(p, int((~finite[p]).nonzero()[0].item()) + 1) for p in bad]


class Clock:
    """Each net's share of the group's time: every interval split among the nets alive in
    it, so a net that left the stack early costs only what it shared."""

    def __init__(self, nets: int):
        self.spent = np.zeros(nets)
        self.probing = np.zeros(nets)
        self.last = time.perf_counter()

    def charge(self, alive: Sequence[int], probing: bool = False) -> None:
        now = time.perf_counter()
        if alive:
            share = (now - self.last) / len(alive)
            self.spent[list(alive)] += share
            if probing:
                self.probing[list(alive)] += share
        self.last = now


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


def plateaued(val_losses: Sequence[float], patience: int, min_delta: float) -> bool:
    """True when none of the last ``patience`` validation losses improved on the best one
    before them by more than ``min_delta`` (relative)."""
    if patience < 1 or len(val_losses) <= patience:
        return False
    best = min(val_losses[:-patience])
    return not math.isfinite(best) or min(val_losses[-patience:]) > best * (1 - min_delta)


class Run:
    """One group's training: what it keeps per net and how a net leaves it."""

    def __init__(self, stack: Stack, data: Splits, cfgs: Sequence[Config], device: torch.device):
        self.stack, self.cfgs, self.cfg = stack, cfgs, cfgs[0]
        self.tensors = {
            name: torch.as_tensor(getattr(data, name), device=device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        if self.cfg.data.input_scale != 1.0:
            for name in ("x_train", "x_val", "x_test"):
                self.tensors[name] = self.tensors[name] * self.cfg.data.input_scale
        group, steps = len(cfgs), self.cfg.train.steps
        self.roster = Roster(group, device)
        # Separate streams, so that probing more or less never changes the training batches.
        self.batches = [
            curriculum.batches(data.difficulty_train, c.train.batch_size, steps,
                               c.train.curriculum, c.seed, torch.Generator().manual_seed(c.seed))
            for c in cfgs
        ]  # fmt: skip
        self.dropout = Dropout([c.model.dropout for c in cfgs], [c.seed for c in cfgs], device)
        x, y = self.tensors["x_train"], self.tensors["y_train"]
        self.probe = Probe(stack, self.cfg.model.activation, probe_batches(x, y, cfgs))
        self.optimizer = StackOptimizer(stack, self.cfg.optim, [c.optim.lr for c in cfgs])
        self.losses = Losses(group, steps, device)
        self.roster.register(stack, self.dropout, self.optimizer, self.probe, self.losses)
        self.outcomes = [Outcome(status=Status.finished, layers={}) for _ in cfgs]
        keys = CURVE_KEYS + TRAIN_SPLIT_CURVE if self.cfg.train.eval_train else CURVE_KEYS
        self.curves = [{k: [] for k in keys} for _ in cfgs]
        self.rows: list[list[tuple[int, dict[str, np.ndarray]]]] = [[] for _ in cfgs]
        self.clock = Clock(group)
        self.last_eval = 0

    # -- what happens at the steps where the host looks -----------------------------------

    def measure(
        self, step: int, update_ratio: np.ndarray | None = None, only: set[int] | None = None
    ) -> None:
        """Probe the stack; record it for every alive net, or the positions ``only``."""
        self.clock.charge(self.roster.alive)
        stats = self.probe.measure()
        if update_ratio is not None:
            stats["update_ratio"] = update_ratio
        for position, i in enumerate(self.roster.alive):
            if only is None or position in only:
                self.rows[i].append((step, {k: v[position] for k, v in stats.items()}))
        self.clock.charge(self.roster.alive, probing=True)

    def measure_jacobian(self) -> None:
        """Each net's Jacobian spectrum at initialization, on its own probe batch (probing time)."""
        self.clock.charge(self.roster.alive)
        x = self.probe.batches[0][0]
        stats = jacobian.measure(self.stack, x, self.cfg.probe, [c.seed for c in self.cfgs])
        for position, i in enumerate(self.roster.alive):
            self.outcomes[i].jacobian = {key: values[position] for key, values in stats.items()}
        self.clock.charge(self.roster.alive, probing=True)

    def retire_diverged(self, step: int) -> None:
        self.clock.charge(self.roster.alive)  # the time until now is shared by all of them
        bad = self.losses.non_finite(step)
        for position, first in bad:
            out = self.outcomes[self.roster.alive[position]]
            out.status, out.diverged_at_step, out.steps_done = Status.diverged, first, step
            out.metrics = dict.fromkeys(FINAL_METRICS, math.nan)  # nothing left to evaluate
        self.roster.retire([p for p, _ in bad])

    def evaluate_curves(self, step: int) -> None:
        val_loss, val_acc = evaluate(self.stack, self.tensors["x_val"], self.tensors["y_val"])
        train_loss = self.losses.values[:, self.last_eval : step].mean(dim=1).tolist()
        if self.cfg.train.eval_train:
            fit = evaluate(self.stack, self.tensors["x_train"], self.tensors["y_train"])
        for position, i in enumerate(self.roster.alive):
            curve = self.curves[i]
            curve["step"].append(step)
            curve["train_loss"].append(train_loss[position])
            curve["val_loss"].append(float(val_loss[position]))
            curve["val_accuracy"].append(float(val_acc[position]))
            if self.cfg.train.eval_train:
                curve["train_split_loss"].append(float(fit[0][position]))
                curve["train_split_accuracy"].append(float(fit[1][position]))
            out, cfg = self.outcomes[i], self.cfgs[i]
            if out.steps_to_target is None and val_acc[position] >= cfg.data.target_accuracy:
                out.steps_to_target = step
            patience, min_delta = cfg.train.patience, cfg.train.min_delta
            if out.plateau_at_step is None and plateaued(curve["val_loss"], patience, min_delta):
                out.plateau_at_step = step
        self.last_eval = step

    def finish(self, positions: Sequence[int], step: int) -> None:
        """Evaluate the nets at ``positions`` on every split and record where they ended."""
        if not positions:
            return
        splits = [evaluate(self.stack, self.tensors[f"x_{s}"], self.tensors[f"y_{s}"])
                  for s in FINAL_SPLITS]  # fmt: skip
        for position in positions:
            out = self.outcomes[self.roster.alive[position]]
            out.steps_done = step
            out.metrics = dict(zip(FINAL_METRICS,
                                   [float(v[position]) for pair in splits for v in pair],
                                   strict=True))  # fmt: skip

    def stop_plateaued(self, step: int, probed: bool) -> None:
        """With early stopping, the nets that reached their plateau at this evaluation: probed
        there (unless this step was probed already), as every run is after its last update,
        then evaluated and retired."""
        done = [
            p for p, i in enumerate(self.roster.alive)
            if self.cfgs[i].train.early_stop and self.outcomes[i].plateau_at_step == step
        ]  # fmt: skip
        if done and self.cfg.probe.enabled and not probed:
            self.measure(step, only=set(done))
        self.finish(done, step)
        self.clock.charge(self.roster.alive)
        self.roster.retire(done)

    # -- the loop ------------------------------------------------------------------------

    def train(self) -> list[Outcome]:
        cfg, steps = self.cfg, self.cfg.train.steps
        due = set(probe_steps(cfg.probe.schedule, steps)) if cfg.probe.enabled else set()
        if cfg.probe.jacobian:
            self.measure_jacobian()
        if 0 in due:
            self.measure(0)
        clip, stack = cfg.optim.clip_norm, self.stack
        stack.train()
        step = 0
        for step in range(1, steps + 1):
            idx = torch.stack([next(self.batches[i]) for i in self.roster.alive])
            idx = idx.to(self.roster.device)
            masks = self.dropout.masks(idx.shape[1], stack.block_widths)
            x, y = self.tensors["x_train"][idx], self.tensors["y_train"][idx]
            loss = per_net_loss(stack(x, masks=masks), y)
            stack.zero_grad()
            loss.sum().backward()  # nets share no parameter: each gets its own gradient
            if clip is not None:
                self.optimizer.clip(clip)
            probe_due = step in due
            if probe_due:
                self.probe.before_update()
            self.optimizer.step()
            self.losses.values[:, step - 1] = loss.detach()
            eval_due = step % cfg.train.eval_every == 0 or step == steps
            if not (probe_due or eval_due):
                continue
            self.retire_diverged(step)
            if not self.roster.alive:
                break
            if probe_due:
                self.measure(step, self.probe.update_ratio())
            if eval_due:
                self.evaluate_curves(step)
                self.stop_plateaued(step, probe_due)
                if not self.roster.alive:
                    break
        if steps > 0:
            self.finish(range(len(self.roster.alive)), step)
        self.clock.charge(self.roster.alive)
        return self.outcomes

    def results(self) -> list[Outcome]:
        group = len(self.cfgs)
        for i, out in enumerate(self.outcomes):
            if not out.metrics:  # probe only: nothing was trained to evaluate
                out.metrics = dict.fromkeys(FINAL_METRICS, math.nan)
            losses = self.curves[i]["train_loss"]
            out.metrics["train_loss"] = losses[-1] if losses else math.nan
            out.curve = self.curves[i]
            out.layers = stack_rows(self.rows[i], self.cfg.model.depth)
            out.timings = {
                "train_s": float(self.clock.spent[i] - self.clock.probing[i]),
                "probe_s": float(self.clock.probing[i]),
                "group_size": group,
            }
        return self.outcomes


def run(stack: Stack, data: Splits, cfgs: Sequence[Config], device: torch.device) -> list[Outcome]:
    """Train and probe the nets of ``stack`` together; ``cfgs[g]`` is net g's config.

    The configs agree on everything but the seed, the init (already in the stack), the
    learning rate, the dropout rate and the curriculum.
    """
    group = Run(stack, data, cfgs, device)
    group.train()
    return group.results()


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
