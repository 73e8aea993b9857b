"""The group's training loop (study.engine.loop): plateaus and early stopping, the roster
that retires nets from every stacked object, and each net's share of the group's time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from study.engine import loop, nets
from study.engine.loop import Roster, plateaued
from study.engine.stack import Stack
from study.records import Status

from .conftest import compose_config


@pytest.mark.parametrize(
    ("losses", "patience", "expected"),
    [
        ([1.0, 0.9, 0.95, 0.96], 2, True),  # no better than 0.9 for two evaluations
        ([1.0, 0.9, 0.95, 0.85], 2, False),  # the last one improved
        ([1.0, 0.9, 0.95, 0.895], 2, True),  # improved, but by less than min_delta (1%)
        ([1.0, 0.9, 0.95], 3, False),  # not enough evaluations yet
        ([1.0, 0.9, 0.95, 0.96], 0, False),  # no criterion
        ([float("nan"), 0.5, 0.5], 2, True),  # nothing finite to improve on: stuck
    ],
)
def test_a_plateau_is_patience_evaluations_without_a_relative_improvement(
    losses, patience, expected
):
    assert plateaued(losses, patience, 0.01) is expected


class Member:
    def __init__(self):
        self.kept: list[list[int]] = []

    def select(self, keep: torch.Tensor) -> None:
        self.kept.append(keep.tolist())


def test_the_roster_retires_nets_from_every_registered_object():
    roster = Roster(5, torch.device("cpu"))
    members = [Member(), Member()]
    roster.register(*members)
    roster.retire([1, 3])
    assert roster.alive == [0, 2, 4]
    roster.retire([0])  # positions now: net 0 leaves
    assert roster.alive == [2, 4]
    assert all(m.kept == [[0, 2, 4], [1, 2]] for m in members)
    roster.retire([0, 1])
    assert roster.alive == [] and all(len(m.kept) == 2 for m in members)  # nothing to keep


def group(splits, cfgs):
    states = [nets.initial_state(splits.num_features, splits.num_classes, c.model, c.seed)
              for c in cfgs]  # fmt: skip
    return loop.run(Stack(states, cfgs[0].model, torch.device("cpu")), splits, cfgs,
                    torch.device("cpu"))  # fmt: skip


EARLY = ("data=digits", "model.depth=3", "model.width=16", "train.steps=300",
         "train.eval_every=5", "train.patience=3", "train.min_delta=0.01",
         "train.early_stop=true")  # fmt: skip


@pytest.mark.numeric
def test_a_net_stopped_at_its_plateau_equals_the_same_net_trained_that_long(prepared):
    from study.data import load

    cfgs = [compose_config(*EARLY, f"data.dir={prepared}", f"optim.lr={lr}", f"seed={seed}")
            for lr, seed in itertools.product((0.03, 0.3), (0, 1))]  # fmt: skip
    splits = load(cfgs[0].data)
    outcomes = group(splits, cfgs)
    stopped = [(c, o) for c, o in zip(cfgs, outcomes, strict=True) if o.steps_done < 300]
    assert stopped, "no net reached its plateau: the test would check nothing"
    for cfg, out in stopped:
        assert out.status is Status.finished and out.plateau_at_step == out.steps_done
        assert out.curve["step"][-1] == out.steps_done
        cfg.train.steps, cfg.train.early_stop = out.steps_done, False
        [alone] = group(splits, [cfg])
        assert alone.curve == out.curve
        np.testing.assert_array_equal(list(alone.metrics.values()), list(out.metrics.values()))
        # Probed where it stopped, as a run is after its last update (whose update ratio
        # only a scheduled probe brackets).
        assert out.layers["step"].max() == out.steps_done
        for name in out.layers:
            if name != "update_ratio":
                np.testing.assert_array_equal(alone.layers[name], out.layers[name], name)


def test_each_net_is_charged_its_share_of_the_time_it_was_in_the_group(prepared, monkeypatch):
    from study.data import load

    ticks = itertools.count()
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))
    cfgs = [compose_config("data=digits", f"data.dir={prepared}", "model.depth=3",
                           "model.width=16", "train.steps=40", "train.eval_every=10",
                           f"optim.lr={lr}", "seed=0") for lr in (0.01, 1e4)]  # fmt: skip
    first = next(ticks)  # the clock's reading before the group starts
    normal, diverged = group(load(cfgs[0].data), cfgs)
    last = next(ticks)
    assert diverged.status is Status.diverged and normal.status is Status.finished
    spent = [o.timings["train_s"] + o.timings["probe_s"] for o in (normal, diverged)]
    assert sum(spent) <= last - first  # every interval charged once, to the nets in it
    assert sum(spent) >= last - first - 2  # ... up to the readings outside the clock
    assert spent[1] < spent[0]  # it left early: it shared fewer intervals
    assert normal.timings["probe_s"] > 0 and normal.timings["group_size"] == 2
