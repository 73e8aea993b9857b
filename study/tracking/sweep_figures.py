"""A sweep's summary figures, attached to its MLflow parent run when it ends.

Drawn from the cells' records (not from the tables of ``collect``: a sweep is summarized
the moment it ends, before any later stage runs). Two figures, each where the sweep has
the data for it:

- ``decay_rate.png``: the mean gradient decay rate at initialization (decades per layer,
  ``signal_log10_rate_init``, over seeds and depths) by activation x init, one panel per
  normalization x skip;
- ``accuracy_vs_depth.png``: test accuracy against depth, one line per activation (mean
  over inits and seeds; each configuration at its best learning rate by mean validation
  accuracy, a diverged run counting 0), one panel per normalization x skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DPI = 120


def table(recorded: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell with a result: its axes, seed, rate and outcomes."""
    rows = []
    for record in recorded:
        if record.get("status") not in ("finished", "diverged"):
            continue
        config, metrics = record["config"], record.get("metrics") or {}
        model = config["model"]
        rows.append({
            "depth": model["depth"], "activation": model["activation"], "init": model["init"],
            "norm": model["norm"], "skip": model["skip"], "seed": config["seed"],
            "lr": config["optim"]["lr"], "diverged": record["status"] == "diverged",
            "rate": (record.get("summary") or {}).get("signal_log10_rate_init"),
            "val_accuracy": metrics.get("val_accuracy"),
            "test_accuracy": metrics.get("test_accuracy"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _panels(frame: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted(frame["norm"].unique())
    skips = sorted(frame["skip"].unique())
    fig, axes = plt.subplots(len(norms), len(skips), figsize=(3.6 * len(skips), 3.2 * len(norms)),
                             squeeze=False, layout="constrained")  # fmt: skip
    return plt, fig, [(n, s, axes[i][j]) for i, n in enumerate(norms) for j, s in enumerate(skips)]


def decay_rate(frame: pd.DataFrame, path: Path) -> Path | None:
    frame = frame.dropna(subset=["rate"])
    if frame.empty:
        return None
    plt, fig, panels = _panels(frame)
    activations, inits = sorted(frame["activation"].unique()), sorted(frame["init"].unique())
    limit = max(float(frame["rate"].abs().quantile(0.95)), 1e-3)
    for norm, skip, ax in panels:
        part = frame[(frame["norm"] == norm) & (frame["skip"] == skip)]
        grid = part.pivot_table(index="activation", columns="init", values="rate", aggfunc="mean")
        grid = grid.reindex(index=activations, columns=inits)
        image = ax.imshow(grid.to_numpy(float), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(inits)), inits, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(activations)), activations, fontsize=7)
        ax.set_title(f"norm {norm}, skip {skip}", fontsize=8)
        if grid.size <= 64:
            for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=[ax for *_, ax in panels], shrink=0.8,
                 label="decades per layer (< 0: vanishing toward the input)")  # fmt: skip
    fig.suptitle("Gradient decay rate at initialization (signal_log10_rate_init, mean)", fontsize=9)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_vs_depth(frame: pd.DataFrame, path: Path) -> Path | None:
    if frame["test_accuracy"].isna().all():
        return None  # a probe-only sweep
    frame = frame.assign(val=frame["val_accuracy"].where(~frame["diverged"], 0.0).fillna(0.0),
                         test=frame["test_accuracy"].where(~frame["diverged"], 0.0))  # fmt: skip
    config = ["activation", "init", "norm", "skip", "depth"]
    by_rate = frame.groupby([*config, "lr"], as_index=False)[["val", "test"]].mean()
    best = by_rate.sort_values(["val", "lr"], ascending=[False, True]).drop_duplicates(config)
    plt, fig, panels = _panels(best)
    depths = sorted(best["depth"].unique())
    for norm, skip, ax in panels:
        part = best[(best["norm"] == norm) & (best["skip"] == skip)]
        for activation, lines in part.groupby("activation"):
            mean = lines.groupby("depth")["test"].mean()
            ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, label=activation)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_ylim(0, 1)
        ax.set_title(f"norm {norm}, skip {skip}", fontsize=8)
        ax.set_xlabel("depth (blocks)", fontsize=7)
        ax.set_ylabel("test accuracy", fontsize=7)
    panels[0][2].legend(fontsize=6)
    fig.suptitle("Test accuracy at each configuration's best learning rate", fontsize=9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw(recorded: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """The figures the records allow, written into ``folder``."""
    frame = table(recorded)
    if frame.empty:
        return []
    made = [
        decay_rate(frame, folder / "decay_rate.png"),
        accuracy_vs_depth(frame, folder / "accuracy_vs_depth.png"),
    ]
    return [path for path in made if path is not None]
