"""The paper's tables (booktabs), each from one analysis output, every cell escaped.

Each table's caption ends with its provenance macro (``\\SourceTable<Name>``, defined in
``numbers.tex`` by ``study.report``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis import claims, verdicts
from study.report.latex import escape, interval, macro_name, number, table
from study.report.numbers import pvalue_text
from study.report.style import INIT_LABELS

# Which sweeps each table draws on.
SWEEPS = {
    "claims": ("init", "train", "optim", "scale", "regularize", "curriculum"),
    "theory": ("init", "train", "optim", "scale", "theory"),
    "factors": ("init", "train"),
    "trainable": ("train",),
    "grids": ("init", "train", "optim", "scale", "theory", "regularize", "curriculum"),
}


def _source(name: str) -> str:
    return "\\" + macro_name("source table", name)


def short_stratum(stratum: str) -> str:
    """A stratum as the paper writes it."""
    return (stratum.replace("norm=none, skip=none", "plain nets")
            .replace("norm=batch, skip=residual", "residual nets with batch norm")
            .replace("dropout=0.0", "without dropout")
            .replace("activation in {relu, leaky_relu, prelu}", "rectifiers")
            .replace("init_quality=badly", "badly initialized")
            .replace("init_quality=well", "well initialized").replace("family=", "family ")
            .replace("depth>=", "depth ≥ "))  # fmt: skip


FORM_WORDS = {"superiority": "sup.", "non-inferiority": "non-inf.", "level": "level"}


def claims_table(rows: pd.DataFrame) -> str:
    """One line per target row, grouped by claim: the claim's one word (its parts combined by
    ``verdicts.combine``) and how many parts are undecided on its first line; each row's
    form, margin, effect with its interval at the row's level, p-value and verdict (†:
    fragile, it changes when one seed is left out)."""
    target = rows[rows["carries_verdict"].astype(bool)]
    by_claim = verdicts.claim_verdicts(rows)
    statements = {h.part: h.statement for h in claims.HYPOTHESES}
    body, seen, parts = [], set(), set()
    for r in target.itertuples():
        entry = by_claim[r.claim]
        claim = ""
        if r.claim not in seen:
            claim = (f"\\textbf{{{escape(r.claim)}}}\\newline\\emph{{{entry['verdict']}}}"
                     f"\\newline{entry['parts'] - entry['undecided']} of {entry['parts']} "
                     "decided")  # fmt: skip
        seen.add(r.claim)
        if r.note.startswith("not tested"):
            effect = escape(r.note.removeprefix("not tested: "))
        else:
            effect = f"{interval(r.effect, r.effect_low, r.effect_high)} {escape(r.unit)}"
        said = f"{escape(r.part)}: {escape(statements[r.part])}"
        hypothesis = said if r.part not in parts else ""
        parts.add(r.part)
        fragile = "$^\\dagger$" if bool(getattr(r, "fragile", False)) else ""
        body.append([claim, hypothesis, FORM_WORDS.get(r.form, escape(r.form)),
                     number(r.margin), escape(short_stratum(r.stratum)), effect,
                     str(r.n) if r.n else "--", pvalue_text(r.p_decisive),
                     escape(r.verdict) + fragile])  # fmt: skip
    caption = ("Every claim and its target rows. A claim's word combines its decided parts by "
               "the declared rule (Section~\\ref{sec:verdicts}); the parts follow, each with "
               "its form (sup.: superiority, non-inf.: non-inferiority), its margin (the "
               "smallest effect of interest, in the outcome's unit), the population where the "
               "article makes the claim, the mean effect over clusters with its interval at "
               "the row's level, the number of cells, the row's decisive one-sided $p$ and its "
               f"verdict ($^\\dagger$: fragile). {_source('claims')}")  # fmt: skip
    return table(["claim", "hypothesis", "form", "margin", "target", "effect [interval]", "$n$",
                  "$p$", "verdict"], body, r"Q{1.5cm}Q{2.9cm}lrQ{2.1cm}Q{2.6cm}rrQ{1.5cm}",
                 caption, "tab:claims", long=True, size=r"\scriptsize")  # fmt: skip


def needs_table(rows: pd.DataFrame) -> str:
    """What would decide each inconclusive target row: the units (clusters) and cells a
    test at the row's level would need at the observed mean and spread."""
    target = rows[rows["carries_verdict"].astype(bool) & (rows["verdict"] == "inconclusive")]
    body = [[escape(r.part), escape(short_stratum(r.stratum)), FORM_WORDS.get(r.form, r.form),
             number(r.margin), f"{interval(r.effect, r.effect_low, r.effect_high)} "
             f"{escape(r.unit)}", number(r.clusters), number(r.n),
             number(r.units_needed) if pd.notna(r.units_needed) else "--",
             number(r.cells_needed) if pd.notna(r.cells_needed) else "--"]
            for r in target.itertuples()]  # fmt: skip
    if not body:
        body = [["--"] * 9]
    caption = ("What each inconclusive target row would need: the clusters (units of the test) "
               "and cells it has, and those that would decide it at its observed mean and "
               "spread (--: no number of cells would, the estimate sits on the margin). "
               f"{_source('claims')}")  # fmt: skip
    return table(["part", "target", "form", "margin", "effect [interval]", "clusters", "cells",
                  "clusters needed", "cells needed"], body, r"lQ{2.8cm}lrQ{3cm}rrrr", caption,
                 "tab:needs", size=r"\scriptsize")  # fmt: skip


THEORY_GROUPS = {
    "plain": lambda d: (d["norm"] == "none") & (d["skip"] == "none"),
    "batch norm, probe batch 128": lambda d: (d["norm"] == "batch") & (d["sweep"] != "theory"),
    "batch norm, probe batch 8--128 (theory sweep)": lambda d: (
        (d["norm"] == "batch") & (d["sweep"] == "theory")
    ),
    "layer norm": lambda d: d["norm"] == "layer",
    "residual, tanh and sigmoid": lambda d: (
        (d["skip"] == "residual") & d["activation"].isin(["tanh", "sigmoid"])
    ),
    "residual, ReLU family, GELU, SELU": lambda d: (
        (d["skip"] == "residual") & ~d["activation"].isin(["tanh", "sigmoid"])
    ),
}


def theory_table(rates: pd.DataFrame) -> str:
    judged = rates[rates["agrees"].notna()].copy()
    for column in ("norm", "skip", "activation", "sweep"):
        judged[column] = judged[column].astype(str)
    body = []
    for name, select in THEORY_GROUPS.items():
        part = judged[select(judged)]
        ratio = part["ratio_vs_theory"]
        span = f"{number(ratio.min())}--{number(ratio.max())}" if len(part) else "--"
        body.append([name, number(len(part)), number(int(part["agrees"].sum())), span])
    caption = ("Measured against predicted per-layer gradient ratio at initialization, by kind "
               "of net: cells with a prediction, cells within 10\\%, and the range of "
               f"measured/predicted. {_source('theory')}")  # fmt: skip
    return table(["nets", "cells", "agree", "ratio range"], body, "lrrr", caption, "tab:theory")


def factors_table(effects: pd.DataFrame) -> str:
    body = []
    terms = [t for t in effects["term"].unique() if t != "Residual"]
    wide = effects.pivot_table(index="term", columns="response", values="partial_eta_sq")
    for term in terms:
        cells = [wide.loc[term, c] if term in wide.index else np.nan for c in wide.columns]
        body.append([escape(term).replace(":", r" $\times$ "), *(number(v, 2) for v in cells)])
    names = {"signal_log10_rate_init": "log10 rate at init", "test_accuracy": "test accuracy"}
    caption = (
        "Partial $\\eta^2$ of each term of the factorial models (type-II ANOVA, "
        "descriptive): the per-layer signal-gradient rate at init (init sweep) and the "
        "test accuracy of the finished runs (train sweep). " + _source("factors")
    )
    header = ["term", *[escape(names.get(c, c)) for c in wide.columns]]
    return table(header, body, "l" + "r" * len(wide.columns), caption, "tab:factors")


# Column labels of the trainable-depth table (inits are labelled as in the figures).
SHORT = {"none": "", "batch": "BN", "layer": "LN", "residual": "res", "highway": "hw",
         "dense": "dense"}  # fmt: skip


def trainable_table(depth: pd.DataFrame) -> str:
    """First failing depth per activation x init (rows) and norm x skip (columns)."""
    depth = depth.copy()
    norm, skip = depth["norm"].astype(str), depth["skip"].astype(str)
    depth["config"] = [("+".join(SHORT.get(x, x) for x in pair if SHORT.get(x, x)) or "plain")
                       for pair in zip(norm, skip, strict=True)]  # fmt: skip
    pairs = zip(depth["activation"].astype(str), depth["init"].astype(str), strict=True)
    depth["row"] = [f"{a}, {INIT_LABELS.get(i, i)}" for a, i in pairs]
    deepest = max(int(d) for ds in depth["depths"] for d in ds.split(","))
    depth["cell"] = [escape(str(f)) if pd.notna(f) else f"$>${deepest}" for f in depth["fails_at"]]
    order = list(dict.fromkeys(depth["config"]))
    wide = depth.pivot(index="row", columns="config", values="cell")[order]
    xi = depth[depth["config"] == "plain"].set_index("row")["six_xi_c"]
    body = [[escape(row), *[wide.loc[row, c] for c in wide.columns],
             number(xi.get(row, np.nan), 3)] for row in wide.index]  # fmt: skip
    header = ["activation, init", *[escape(c) for c in wide.columns], r"$6\xi_c$"]
    caption = ("The first depth that fails to train (most seeds diverged, or mean test "
               "accuracy more than 0.05 below the shallowest depth's), by normalization (BN: "
               "batch, LN: layer) and skip (res: residual, hw: highway), beside $6\\xi_c$ of "
               "the plain net ($\\infty$: edge of chaos; --: no fixed point). "
               f"{_source('trainable')}")  # fmt: skip
    return table(header, body, "l" + "c" * (len(wide.columns) + 1), caption, "tab:trainable",
                 size=r"\scriptsize\setlength{\tabcolsep}{3.5pt}")  # fmt: skip


TRAINING_ONLY = ("optimizer", "lr", "clip_norm", "batch_size", "dropout", "curriculum")
GRID_ROWS = {  # row label -> runs.parquet column whose levels the row lists
    "dataset": "dataset", "depth": "depth", "width": "width", "activation": "activation",
    "init": "init", "norm": "norm", "skip": "skip", "residual scale": "residual_scale",
    "input scale": "input_scale", "dropout": "dropout", "curriculum": "curriculum",
    "optimizer": "optimizer", "learning rate": "lr",
    "clip norm": "clip_norm", "steps": "steps", "batch size": "batch_size",
    "probe batch": "probe_batch_size", "seeds": "seed",
}  # fmt: skip


def grids_table(runs: pd.DataFrame) -> str:
    """The exact grid and budget of every sweep (columns), read back from the runs."""
    sweeps = [s for s in runs["sweep"].cat.categories if (runs["sweep"] == s).any()]
    parts = {s: runs[runs["sweep"] == s] for s in sweeps}

    def levels(part: pd.DataFrame, column: str) -> str:
        if column in TRAINING_ONLY and part["steps"].max() == 0:
            return "--"  # probed at initialization only: nothing optimizes
        values = part[column]
        if isinstance(values.dtype, pd.CategoricalDtype):  # in the order of study.config
            present = [c for c in values.cat.categories if (values == c).any()]
        else:
            present = sorted(values.dropna().unique())
        text = [f"{v:g}" if isinstance(v, float) else str(v) for v in present]
        if values.isna().any():
            text.insert(0, "none")
        return escape(", ".join(text) or "none")

    body = [["cells", *(number(parts[s]["cell_id"].nunique()) for s in sweeps)],
            ["runs", *(number(len(parts[s])) for s in sweeps)]]  # fmt: skip
    body += [
        [name, *(levels(parts[s], column) for s in sweeps)] for name, column in GRID_ROWS.items()
    ]
    caption = ("The sweeps as run (steps 0: probed at initialization only; the optimizer and "
               f"its settings then play no part). {_source('grids')}")  # fmt: skip
    width = f"Q{{{11.5 / len(sweeps):.2f}cm}}"
    return table(["", *(escape(s) for s in sweeps)], body, "l" + width * len(sweeps), caption,
                 "tab:grids", size=r"\scriptsize")  # fmt: skip


def all_tables(runs, rates, rows, effects, depth) -> dict[str, str]:
    return {
        "claims": claims_table(rows),
        "needs": needs_table(rows),
        "theory": theory_table(rates),
        "factors": factors_table(effects),
        "trainable": trainable_table(depth),
        "grids": grids_table(runs),
    }
