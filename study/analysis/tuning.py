"""Was each configuration trained to convergence at a rate the grid brackets? Per
configuration of the sweeps whose nets are judged at their best learning rate: the chosen
rate, whether it is interior to the configuration's grid, whether the net learned at all,
and whether its runs at that rate were still improving at their last step (no plateau
before it: ``plateau_at_step`` empty, ``study.config.TrainConfig.patience``), and whether
the configuration lies in a target stratum of a claim tested on that sweep.

Written by ``study.analysis.analyze`` as ``convergence.parquet``; the paper prints the
shares of the target configurations still improving and with an interior rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis import hypotheses, outcomes
from study.analysis.verdicts import Hypothesis
from study.records import Status

# The outcome tables of the claims, by the sweep whose tuned configurations they hold.
SWEEP_OF_FRAME = {"train": "train", "train_runs": "train", "degradation": "train",
                  "regularize": "regularize", "dropout_gain": "regularize",
                  "curriculum": "curriculum"}  # fmt: skip
# A configuration learned if its validation accuracy at the chosen rate (diverged runs 0)
# is this far above chance: an interior rate means nothing for a net that never moves.
LEARNED_ABOVE_CHANCE = 0.10
# A configuration is still improving if more than this share of its runs at the chosen rate
# finished without reaching the plateau criterion before their last step.
STILL_IMPROVING_SHARE = 0.5


def configurations(values: pd.DataFrame, datasets: dict) -> pd.DataFrame:
    """One row per configuration of each tuned sweep (see the module's docstring); ``values``
    are ``outcomes.run_values``, ``datasets`` the prepared data's manifest."""
    parts = []
    sweeps = dict.fromkeys(SWEEP_OF_FRAME.values())
    for sweep in sweeps:
        runs = values[(values["sweep"] == sweep) & (values["status"] != Status.failed)]
        if runs.empty:
            continue
        keys = list(outcomes.FRAME_KEYS[sweep])
        best = outcomes.best_lr(runs, tuple(keys))
        grid = runs.groupby(keys, observed=True)["lr"].agg(["min", "max"]).reset_index()
        best = best.merge(grid, on=keys)
        chosen = runs.merge(best[[*keys, "lr"]], on=[*keys, "lr"])
        last = chosen["plateau_at_step"].isna() & (chosen["status"] == Status.finished)
        improving = chosen.assign(improving=last.astype(float)).groupby(
            keys, observed=True)["improving"].mean().rename("share_improving")  # fmt: skip
        classes = chosen["dataset"].astype(str).map(
            {name: entry["num_classes"] for name, entry in datasets.items()})  # fmt: skip
        chance = (1.0 / classes.astype(float)).groupby(
            [chosen[k] for k in keys], observed=True).first().rename("chance")  # fmt: skip
        # Derived axes a target may name (family, init_quality, ...): one level per config.
        extra = [c for c in ("family", "init_quality", "phase", "scaling", "label_noise",
                             "dataset") if c in chosen and c not in keys]  # fmt: skip
        first = chosen.groupby(keys, observed=True)[extra].first()
        best = best.merge(pd.concat([improving, chance, first], axis=1).reset_index(), on=keys)
        best["interior"] = (best["lr"] > best["min"]) & (best["lr"] < best["max"])
        best["learned"] = best["val_accuracy"] > best["chance"] + LEARNED_ABOVE_CHANCE
        best["still_improving"] = best["share_improving"] > STILL_IMPROVING_SHARE
        parts.append(best.drop(columns=["min", "max"]).assign(sweep=sweep))
    if not parts:
        return pd.DataFrame(columns=["sweep", "lr", "interior", "learned", "still_improving",
                                     "in_target"])  # fmt: skip
    out = pd.concat(parts, ignore_index=True)
    out["in_target"] = False
    return out


def mark_targets(configs: pd.DataFrame, claimed: list[Hypothesis]) -> pd.DataFrame:
    """``in_target``: the configuration lies in the target population of a hypothesis tested
    on a table of its sweep (the hypothesis's ``where`` and ``min_depth``)."""
    configs = configs.copy()
    for h in claimed:
        sweep = SWEEP_OF_FRAME.get(h.frame)
        if sweep is None:
            continue
        of = configs[configs["sweep"] == sweep]
        where = {k: v for k, v in h.where.items() if k in of}
        configs.loc[hypotheses.select(of, where, h.min_depth).index, "in_target"] = True
    return configs


def summary(configs: pd.DataFrame) -> dict[str, float]:
    """The shares the paper prints, over the target configurations: still improving at the
    end, and (among those that learned) a chosen rate interior to the grid."""
    target = configs[configs["in_target"].astype(bool)] if len(configs) else configs
    learned = target[target["learned"].astype(bool)] if len(target) else target
    return {"configs": len(target),
            "still_improving": float(target["still_improving"].mean()) if len(target)
            else np.nan,
            "learned": len(learned),
            "interior": float(learned["interior"].mean()) if len(learned) else np.nan}  # fmt: skip
