"""Stage ``publish``: the study as one MLflow run, so that the UI leads to the report.

    python -m study.tracking.publish [--profile standard] [--tracking sqlite]

After ``report``, logs to the experiment ``<profile>-study`` one run, ``study <profile>``:
the paper (``paper/main.pdf``), the figures it shows (``paper/generated/figures``), the
claims' verdicts (``results/analysis/claims.json``) as artifacts; each claim's verdict as
a tag and the verdict counts as metrics; a description that links every sweep's
experiment and parent run. The run it replaces (an earlier ``publish`` of the same
profile) goes to MLflow's trash. ``results/publish/study_run.json`` names the run (the
stage's output).

Bad input (a missing input, an unknown profile or store) is one line and exit status 2,
with nothing logged.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from mlflow.entities import Param

from study import records
from study.config import CONF_DIR, ConfigError, interruptible
from study.tracking import mirror, run_spec

PAPER = Path("paper/main.pdf")
FIGURES = Path("paper/generated/figures")
CLAIMS = Path("results/analysis/claims.json")
OUT = Path("results/publish/study_run.json")
PROFILES = ("quick", "standard", "full")  # study.profiles.Profile


def fail(message: str) -> NoReturn:
    print(f"study.tracking.publish: error: {message}", file=sys.stderr)
    sys.exit(2)


def tracking_uri(store: str) -> str:
    """The URI of ``conf/tracking/<store>.yaml``, as the sweeps resolve it."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "tracking" / f"{store}.yaml"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        fail(f"--tracking: {store!r}: expected one of {choices}")
    return str(OmegaConf.to_container(OmegaConf.load(path), resolve=True)["uri"])


def sweeps(profile: str) -> dict[str, dict[str, Any]]:
    """Each sweep of the profile that has run: its sweep.json (study.records.SWEEP_FILE)."""
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(Path("multirun", profile).glob("*/sweep.json"))
    }


def description(profile: str, ran: dict[str, dict[str, Any]], verdicts: Counter) -> str:
    lines = [
        f"**The study, `{profile}` profile**: its paper (`main.pdf`), the figures it shows "
        "(`figures/`) and the claims' verdicts (`claims.json`) are this run's artifacts; "
        "each claim's verdict is a tag (`study.claim.<id>`).",
        "",
        "Verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) + ".",
        "",
        "The sweeps it rests on (each cell a run under the sweep's parent run):",
        "",
    ]
    for name, info in ran.items():
        counts = ", ".join(f"{n} {k}" for k, n in sorted((info.get("counts") or {}).items()))
        experiment, parent = info.get("experiment_id"), info.get("parent_run_id")
        link = (f"[runs](#/experiments/{experiment}/runs?workflowType=machine_learning"
                f"&viewStateShareKey=cells), [parent run](#/experiments/{experiment}/runs/"
                f"{parent})" if experiment and parent else "not logged")  # fmt: skip
        lines.append(f"- `{name}`: {info.get('total', '?')} cells ({counts}): {link}")
    lines += ["", "Rebuilt by `dvc repro` (`make study`); `python -m study.tracking.publish` alone "
              "logs it again from the files on disk."]  # fmt: skip
    return "\n".join(lines) + "\n"


def publish(profile: str, store: str) -> dict[str, str]:
    missing = [str(p) for p in (PAPER, FIGURES, CLAIMS) if not p.exists()]
    if missing:
        fail(f"{', '.join(missing)}: missing; run `dvc repro` (make study) first")
    claims = json.loads(CLAIMS.read_text())
    ran = sweeps(profile)
    try:
        tracker = mirror.Tracker(tracking_uri(store), f"{profile}-study")
    except ConfigError as exc:  # a tracking server that refuses this client
        fail(str(exc))
    client = tracker.client
    client.set_experiment_tag(tracker.experiment_id, "mlflow.experimentKind",
                              "custom_model_development")  # fmt: skip
    client.set_experiment_tag(
        tracker.experiment_id, "mlflow.note.content",
        f"The `{profile}` study as one run: the paper, its figures and the claims' verdicts.",
    )  # fmt: skip
    earlier = client.search_runs([tracker.experiment_id], "tags.`study.role` = 'study'")
    verdicts = Counter(str(c.get("verdict")) for c in claims.values())
    tags = {
        "study.role": "study", "mlflow.user": getpass.getuser(),
        "mlflow.source.type": "LOCAL", "mlflow.source.name": "dvc repro",
        "mlflow.note.content": description(profile, ran, verdicts),
        **{f"study.claim.{claim}": str(c.get("verdict")) for claim, c in claims.items()},
    }  # fmt: skip
    if commit := records.git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(tracker.experiment_id, run_name=f"study {profile}", tags=tags)
    run_id = run.info.run_id
    try:
        params = [Param("profile", profile), Param("tracking", store)]
        params += [Param(f"cells.{n}", str(i.get("total"))) for n, i in ran.items()]
        metrics = [run_spec.metric(f"claims_{v.replace(' ', '_')}", n) for v, n in verdicts.items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.log_artifact(run_id, str(PAPER))
        client.log_artifact(run_id, str(CLAIMS))
        client.log_artifacts(run_id, str(FIGURES), artifact_path="figures")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    tracker.delete_runs(r.info.run_id for r in earlier)  # the study it replaces
    info = {"run_id": run_id, "experiment_id": tracker.experiment_id,
            "tracking_uri": tracker.uri}  # fmt: skip
    records.write_json(OUT, info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.tracking.publish",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--tracking", default="sqlite", help="conf/tracking/<name>.yaml")
    args = parser.parse_args(argv)
    if args.profile not in PROFILES:
        fail(f"--profile: {args.profile!r}: expected one of {', '.join(PROFILES)}")
    info = publish(args.profile, args.tracking)
    print(f"publish: the {args.profile} study is MLflow run {info['run_id']} "
          f"(experiment {args.profile}-study, {info['tracking_uri']})")  # fmt: skip


if __name__ == "__main__":
    interruptible("study.tracking.publish", main)
