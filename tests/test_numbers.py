"""The paper's macro table: known values give known macro lines, data pick the sentences
through flags (never prose in Python), plurals and percentages come out right, every macro
main.tex uses is defined by the table or a family."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.analysis import tuning, verdicts
from study.report import numbers, style
from study.report.numbers import Macro, count, flag, percent, render


def runs() -> pd.DataFrame:
    rows = []
    for act in ("relu", "tanh", "elu"):
        for dropout, lr, seed in ((0.0, 0.01, 0), (0.0, 0.01, 1), (0.1, 0.01, 0), (0.0, 0.1, 0)):
            rows.append({"sweep": "regularize", "activation": act, "dropout": dropout, "lr": lr,
                         "seed": seed, "dataset": "mnist1d", "status": "finished",
                         "run_name": f"{act}-{dropout}-{lr}-{seed}", "steps": 1000,
                         "width": 64, "batch_size": 64, "depth": 4,
                         "train_split_accuracy": 1.0, "test_accuracy": 0.6 if lr == 0.01
                         else 0.95})  # fmt: skip
    return pd.DataFrame(rows)


def chosen(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["sweep", "run_name"]].assign(chosen=frame["lr"] == 0.01)


def test_known_values_give_known_macro_lines():
    table = (Macro("NThings", "runs", len, count),
             Macro("ShareHalf", "runs", lambda r: 0.5, percent),
             Macro("Small", "runs", lambda r: 0.034, percent),
             Macro("IsBig", "runs", lambda r: len(r) > 100, flag),
             Macro("Missing", "runs", lambda r: r["no such column"].max()))  # fmt: skip
    values = render(table, {"runs": runs()})
    assert values == {"NThings": "12", "ShareHalf": "50", "Small": "3.4", "IsBig": "0",
                      "Missing": "--"}  # fmt: skip
    text = numbers.macros(values)
    assert "\\newcommand{\\NThings}{12}" in text.splitlines()
    assert "\\newcommand{\\IsBig}{0}" in text.splitlines()


def test_sweep_text_is_generated_from_the_data():
    r = runs()
    values = render(numbers.TABLE, {"runs": r, "chosen": chosen(r)})
    assert values["RegularizeActivations"] == "tanh, ReLU and ELU"  # study.config order
    assert values["RegularizeDatasets"] == "mnist1d"
    assert values["DropoutRates"] == "0 and 0.1"
    # the gap without dropout, at the chosen rate only (0.01): 1.0 - 0.6 = 40 points
    assert values["FitNoDropoutPercent"] == "100"
    assert values["TestNoDropoutPercent"] == "60"
    assert values["GapNoDropoutPoints"] == "40"
    assert values["GapNoDropoutEnough"] == "1"


def claims_rows(verdict_list: list[str]) -> pd.DataFrame:
    return pd.DataFrame([
        {"claim": f"C{i + 1}", "part": f"C{i + 1}a", "stratum": "", "role": "target",
         "carries_verdict": True, "verdict": v, "form": "superiority", "margin": 0.1,
         "effect": 0.2, "effect_low": 0.1, "effect_high": 0.3, "n": 4, "clusters": 2,
         "p_decisive": 0.01, "q_claim": 0.02, "fragile": i == 0}
        for i, v in enumerate(verdict_list)])  # fmt: skip


def test_claim_counts_are_integers_the_text_can_test():
    table = claims_rows(["refuted", "supported", "supported", "no effect of the claimed size"])
    values = render(numbers.TABLE, {"claims": table})
    assert values["NClaimsRefuted"] == "1"  # main.tex: \are{\NClaimsRefuted} -> "is"
    assert values["NClaimsSupported"] == "2"
    assert values["NClaimsNoEffectOfTheClaimedSize"] == "1"
    assert values["NClaimsMixed"] == "0"
    assert values["NFragileRows"] == "1" and values["NTargetRows"] == "4"
    parts = numbers.claim_macros(table)
    assert parts["VerdictCOne"] == "refuted"
    assert parts["PartsCOne"] == "C1a refuted (fragile)"


def test_convergence_shares_over_the_target_configurations():
    configs = pd.DataFrame({"in_target": [True, True, True, True, False],
                            "learned": [True, True, True, False, True],
                            "interior": [True, True, False, False, False],
                            "still_improving": [False, False, False, True, True]})  # fmt: skip
    assert tuning.summary(configs) == {"configs": 4, "still_improving": 0.25, "learned": 3,
                                       "interior": pytest.approx(2 / 3)}  # fmt: skip
    # the train sweep's (trainability) apart from the sweeps trained for a fixed budget
    budget = configs.assign(sweep="curriculum", still_improving=True, interior=True)
    values = render(numbers.TABLE, {"convergence": pd.concat(
        [configs.assign(sweep="train"), budget], ignore_index=True)})  # fmt: skip
    assert values["StillImprovingPercent"] == "25" and values["StillImprovingFew"] == "0"
    assert values["InteriorPercent"] == "67" and values["InteriorMost"] == "0"
    assert values["NTargetConfigs"] == values["NTargetConfigsBudget"] == "4"
    assert values["StillImprovingBudgetPercent"] == values["InteriorBudgetPercent"] == "100"


def test_no_prose_is_generated_and_every_macro_of_the_paper_is_defined():
    tex = (Path(__file__).parents[1] / "paper" / "main.tex").read_text()
    used = set(re.findall(r"\\([A-Z][A-Za-z]+)", tex))
    table = {m.name for m in numbers.TABLE}
    families = re.compile(
        r"^(NRuns|NCells|NDiverged|N[A-Z][a-z]+|Source|Rate|Theory|BN|"
        r"Residual|ResRelu|NDisagree|DisagreeOtherList|NCellsPredicted|"
        r"NCellsAgree|AgreementPercent|Profile|ClaimSays|Verdict|Parts|Pi$)"
    )
    missing = {m for m in used - table if not families.match(m)}
    assert not missing, missing
    # the removed prose macros are gone from the text
    assert not used & {"ExcessVerdict", "FitNoDropout", "TestNoDropout"}
    assert not any(name.startswith("Summary") for name in used)


def test_every_verdict_has_a_colour_and_a_label():
    assert set(style.VERDICT_COLORS) == set(verdicts.VERDICTS)
    assert set(style.LABELS["verdict"]) == set(verdicts.VERDICTS)
    assert np.all([style.label("verdict", v) for v in verdicts.VERDICTS])
