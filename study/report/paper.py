"""Stage ``report``: tables, number macros and provenance for the paper, then the PDF.

    python -m study.report.paper

reads ``results/tables/runs.parquet``, ``results/analysis/`` and the figures' manifest, and
writes ``paper/generated/``: ``numbers.tex`` (``study.report.numbers``), ``tables/*.tex``
(``study.report.tables``) and ``provenance.tex`` (the reproducibility section); then
``latexmk`` builds ``paper/main.pdf``. Without TeX it stops with one line saying what to
install.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from study import records
from study.config import interruptible
from study.report import numbers, tables, tables_beyond
from study.report.latex import breakable, escape, macro_name, number

TEX_PACKAGES = "latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended"
SOFTWARE = ("torch", "numpy", "pandas", "scipy", "statsmodels", "matplotlib", "seaborn",
            "hydra-core", "omegaconf", "mlflow", "dvc")  # fmt: skip


def provenance(
    runs: pd.DataFrame, stage: str, sweeps: tuple[str, ...], drawn: str | None = None
) -> str:
    """A caption's last sentence: stage, code version, data checksum(s), what it drew on
    (``drawn``, e.g. "34 runs", or else every run of its sweeps)."""
    part = runs[runs["sweep"].isin(sweeps)]
    code = ", ".join(sorted(part["code_version"].unique()))
    data = ", ".join(
        f"{escape(name)} {sha[:12]}"
        for name, sha in part.groupby("dataset", observed=True)["data_sha256"].first().items()
    )
    drawn = drawn or f"{number(len(part))} runs"
    return (f"Source: stage \\texttt{{{stage}}}, code \\texttt{{{code}}}, data {data}; "
            f"{drawn} ({escape(', '.join(sweeps))} sweep{'s' * (len(sweeps) > 1)}).")  # fmt: skip


def reproducibility(runs: pd.DataFrame, profile: str) -> str:
    """The paper's reproducibility section, from the records themselves."""
    versions = []
    for package in SOFTWARE:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    commits = sorted({c.removesuffix("-dirty")[:12] for c in runs["git_commit"].dropna()})
    data = runs.groupby("dataset", observed=True)["data_sha256"].first()
    seeds = ", ".join(
        f"{escape(s)} {{{', '.join(map(str, sorted(p['seed'].unique())))}}}"
        for s, p in runs.groupby("sweep", observed=True)
    )
    lines = [
        r"\begin{itemize}\sloppy",
        rf"\item Commands: \texttt{{make study}} on a fresh clone (set-up, then "
        rf"\texttt{{dvc repro}}); this paper is profile \texttt{{{escape(profile)}}} "
        rf"(\texttt{{params.yaml}}); \texttt{{make test}} runs the test suite.",
        rf"\item Code version of every run (SHA-256 of the run modules): "
        rf"\texttt{{{', '.join(sorted(runs['code_version'].unique()))}}}; git commits of the "
        rf"runs: \texttt{{{', '.join(commits) or '--'}}}.",
        r"\item Data (SHA-256 of the prepared files): "
        + "; ".join(f"{escape(n)} {breakable(sha)}" for n, sha in data.items())
        + ".",
        rf"\item Seeds by sweep: {seeds}; every random draw of the analysis is seeded or absent.",
        rf"\item Software: Python {platform.python_version()}, {escape(', '.join(versions))}.",
        rf"\item Runs: {number(len(runs))} records in \texttt{{results/tables/runs.parquet}}, "
        r"mirrored in MLflow (\texttt{mlflow.db}).",
        r"\end{itemize}",
    ]
    return "\n".join(lines) + "\n"


def build_pdf(paper: Path) -> Path:
    if shutil.which("latexmk") is None:
        fail(f"latexmk not found: install Debian's {TEX_PACKAGES} (`make setup` as root)")
    # LaTeX's own files stay in paper/build/; only the PDF is put beside main.tex.
    cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet",
           "-outdir=build", "main.tex"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=paper, capture_output=True, text=True)
    log_file = paper / "build" / "main.log"
    if proc.returncode != 0:
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        errors = [line for line in log.splitlines() if line.startswith("!")]
        fail(f"latexmk failed: {errors[0] if errors else proc.stdout.strip()[-300:]} "
             f"(see {log_file})")  # fmt: skip
    pdf = paper / "main.pdf"
    records.atomic_write(pdf, lambda tmp: shutil.copyfile(paper / "build" / "main.pdf", tmp))
    return pdf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.report.paper",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--analysis", type=Path, default=Path("results/analysis"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--paper", type=Path, default=Path("paper"))
    parser.add_argument("--profile", default=None, help="default: params.yaml's profile")
    parser.add_argument("--no-pdf", action="store_true", help="write the generated files only")
    args = parser.parse_args(argv)
    generated = args.paper / "generated"
    try:
        runs = pd.read_parquet(args.tables / "runs.parquet")
        rates = pd.read_parquet(args.analysis / "decay_rates.parquet")
        table = pd.read_parquet(args.analysis / "claims.parquet")
        effects = pd.read_parquet(args.analysis / "factor_effects.parquet")
        depth = pd.read_parquet(args.analysis / "trainable_depth.parquet")
        tuning = pd.read_parquet(args.analysis / "tuning.parquet")
        convergence = pd.read_parquet(args.analysis / "convergence.parquet")
        chosen = pd.read_parquet(args.analysis / "chosen_runs.parquet")
        figures = json.loads((generated / "figures" / "figures.json").read_text())
        manifest = json.loads((args.data / "manifest.json").read_text())
    except FileNotFoundError as exc:
        fail(f"{exc.filename} not found; run `dvc repro figures` first")
    profile = args.profile or str(runs["profile"].iloc[0])
    inputs = {"runs": runs, "rates": rates, "claims": table, "tuning": tuning,
              "convergence": convergence, "chosen": chosen, "manifest": manifest}  # fmt: skip
    values = {"Profile": escape(profile), **numbers.all_macros(inputs)}
    for stem, entry in figures.items():
        drawn = f"{number(entry['n'])} {escape(entry['unit'])}"
        sweeps = tuple(entry["sweeps"])
        values[macro_name("source", stem)] = provenance(runs, "figures", sweeps, drawn)
    for name, sweeps in tables.SWEEPS.items():
        values[macro_name("source table", name)] = provenance(runs, "report", sweeps)
    texts = {
        "numbers.tex": numbers.macros(values),
        "provenance.tex": reproducibility(runs, profile),
        **{f"tables/{name}.tex": text
           for name, text in tables.all_tables(runs, rates, table, effects, depth).items()},
        **tables_beyond.texts(args.analysis),  # paper/beyond.tex's tables and macros
    }  # fmt: skip
    for name, text in texts.items():
        records.atomic_write(generated / name, lambda tmp, text=text: tmp.write_text(text))
    print(f"report: {len(values)} macros, {len(texts) - 2} tables -> {generated}")
    if not args.no_pdf:
        pdf = build_pdf(args.paper)
        print(f"report: {pdf}")


def fail(message: str) -> None:
    print(f"study.report: error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    interruptible("study.report.paper", main)
