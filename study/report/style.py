"""One look for every figure of the study: sizes, fonts, and one colour per factor level.

The colour maps are keyed by the enums of ``study.config`` (and
``study.analysis.verdicts.VERDICTS``) and checked against them when this module is
imported, so a new activation, init, norm, skip or verdict cannot reach a figure without a
colour of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.analysis.verdicts import VERDICTS
from study.config import Activation, Curriculum, Init, Norm, Skip
from study.records import atomic_write

COLUMN = 3.3  # inches: one column of the paper
FULL = 6.9  # inches: the full text width
PNG_DPI = 200

# Grouped by family so that related activations read as related: saturating in blues,
# the ReLU family in warm tones, the smooth ones in green and olive (Okabe-Ito and Tol).
ACTIVATION_COLORS: dict[str, str] = {
    Activation.sigmoid: "#0072B2",
    Activation.tanh: "#56B4E9",
    Activation.relu: "#D55E00",
    Activation.leaky_relu: "#E69F00",
    Activation.prelu: "#CC79A7",
    Activation.elu: "#882255",
    Activation.gelu: "#009E73",
    Activation.selu: "#999933",
}
INIT_COLORS: dict[str, str] = {
    Init.default: "#777777",
    Init.xavier_uniform: "#66CCEE",
    Init.xavier_normal: "#4477AA",
    Init.kaiming_uniform: "#EE6677",
    Init.kaiming_normal: "#AA3377",
    Init.orthogonal: "#228833",
    Init.lecun_normal: "#CCBB44",
    Init.gaussian: "#EE7733",
    Init.scaled_orthogonal: "#009988",
}
# Where a figure already spends colour on the activation, the init is a line style.
INIT_LINESTYLES: dict[str, object] = {
    Init.default: (0, (1, 1.5)),
    Init.xavier_uniform: (0, (3, 1, 1, 1)),
    Init.xavier_normal: "-",
    Init.kaiming_uniform: (0, (5, 1.5)),
    Init.kaiming_normal: (0, (2.5, 1.2)),
    Init.orthogonal: (0, (3, 1, 1, 1, 1, 1)),
    Init.lecun_normal: (0, (6, 1, 1, 1)),
    Init.gaussian: (0, (1, 3)),
    Init.scaled_orthogonal: (0, (4, 2, 1, 2)),
}
NORM_COLORS: dict[str, str] = {Norm.none: "#555555", Norm.batch: "#33BBEE", Norm.layer: "#EE3377"}
SKIP_COLORS: dict[str, str] = {
    Skip.none: "#555555",
    Skip.residual: "#CC3311",
    Skip.highway: "#009988",
    Skip.dense: "#EE7733",
}
CURRICULUM_COLORS: dict[str, str] = {
    Curriculum.none: "#555555",
    Curriculum.linear: "#117733",
    Curriculum.anti: "#AA4499",
    Curriculum.random: "#DDAA33",
}
VERDICT_COLORS: dict[str, str] = {
    "supported": "#1B9E4B",
    "refuted": "#C0392B",
    "no effect of the claimed size": "#2C7FB8",
    "mixed": "#E69F00",
    "inconclusive": "#7F7F7F",
    "not tested": "#BBBBBB",
}

ACTIVATION_LABELS: dict[str, str] = {
    Activation.sigmoid: "sigmoid",
    Activation.tanh: "tanh",
    Activation.relu: "ReLU",
    Activation.leaky_relu: "leaky ReLU",
    Activation.prelu: "PReLU",
    Activation.elu: "ELU",
    Activation.gelu: "GELU",
    Activation.selu: "SELU",
}
INIT_LABELS: dict[str, str] = {
    Init.default: "default",
    Init.xavier_uniform: "Xavier-U",
    Init.xavier_normal: "Xavier",
    Init.kaiming_uniform: "He-U",
    Init.kaiming_normal: "He",
    Init.orthogonal: "orthog.",
    Init.lecun_normal: "LeCun",
    Init.gaussian: "Gaussian",
    Init.scaled_orthogonal: "orthog. scaled",
}
NORM_LABELS: dict[str, str] = {
    Norm.none: "no norm",
    Norm.batch: "batch norm",
    Norm.layer: "layer norm",
}
SKIP_LABELS: dict[str, str] = {
    Skip.none: "no skip",
    Skip.residual: "residual",
    Skip.highway: "highway",
    Skip.dense: "dense",
}
VERDICT_LABELS: dict[str, str] = {
    "supported": "supported",
    "refuted": "refuted",
    "no effect of the claimed size": "no effect of the claimed size",
    "mixed": "mixed",
    "inconclusive": "inconclusive",
    "not tested": "not tested",
}
CURRICULUM_LABELS: dict[str, str] = {
    Curriculum.none: "random order",
    Curriculum.linear: "easiest first",
    Curriculum.anti: "hardest first",
    Curriculum.random: "paced, random ranking",
}

# Level order of each factor, as study.config declares it (figures draw in this order).
LEVELS: dict[str, tuple[str, ...]] = {
    "activation": tuple(Activation),
    "init": tuple(Init),
    "norm": tuple(Norm),
    "skip": tuple(Skip),
    "curriculum": tuple(Curriculum),
    "verdict": tuple(VERDICTS),
}
COLORS: dict[str, dict[str, str]] = {
    "activation": ACTIVATION_COLORS,
    "init": INIT_COLORS,
    "norm": NORM_COLORS,
    "skip": SKIP_COLORS,
    "curriculum": CURRICULUM_COLORS,
    "verdict": VERDICT_COLORS,
}
LABELS: dict[str, dict[str, str]] = {
    "activation": ACTIVATION_LABELS,
    "init": INIT_LABELS,
    "norm": NORM_LABELS,
    "skip": SKIP_LABELS,
    "curriculum": CURRICULUM_LABELS,
    "verdict": VERDICT_LABELS,
}


def _check(levels: Iterable[str], mapping: Mapping[str, object], what: str) -> None:
    missing = sorted(set(levels) - set(mapping))
    extra = sorted(set(mapping) - set(levels))
    if missing or extra:
        raise ValueError(f"study.report.style: {what}: no entry for {missing}, unknown {extra}")


for _factor, _levels in LEVELS.items():
    _check(_levels, COLORS[_factor], f"{_factor} colours")
    if _factor in LABELS:
        _check(_levels, LABELS[_factor], f"{_factor} labels")
_check(LEVELS["init"], INIT_LINESTYLES, "init line styles")

# Sizes chosen to stay readable when a figure is set at its natural width (no scaling).
RC: dict[str, object] = {
    "font.family": "serif",
    "font.serif": ["STIXGeneral", "DejaVu Serif"],
    "mathtext.fontset": "stix",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "pdf.fonttype": 42,  # TrueType, not Type 3: the text stays selectable and searchable
    "svg.hashsalt": "study",
}


def use() -> None:
    """Apply the study's style to every figure made from now on."""
    sns.set_theme(style="ticks", rc=RC)
    mpl.rcParams.update(RC)


def label(factor: str, level: str) -> str:
    return LABELS.get(factor, {}).get(str(level), str(level))


def present(frame, factor: str) -> list[str]:
    """The levels of ``factor`` that ``frame`` has, in the order of ``LEVELS``."""
    have = set(frame[factor].astype(str)) if len(frame) else set()
    return [level for level in LEVELS[factor] if level in have]


def no_data(ax: Axes, note: str = "no data in this profile") -> None:
    """An empty panel that says so: the report includes every figure, whatever the profile."""
    ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center",
            fontsize=7, color="#666666", style="italic")  # fmt: skip
    # tick_params, not set_xticks([]): the latter would empty every axis shared with this one
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def facet_labels(axes, rows: Iterable[str], cols: Iterable[str]) -> None:
    """Column labels above the top row, row labels beside the right column (as seaborn)."""
    for ax, text in zip(axes[0], cols, strict=True):
        ax.set_title(text)
    for ax, text in zip(axes[:, -1], rows, strict=True):
        ax.annotate(text, xy=(1.04, 0.5), xycoords="axes fraction", rotation=-90,
                    ha="left", va="center", fontsize=mpl.rcParams["axes.titlesize"])  # fmt: skip


def legend(fig: Figure, factor: str, levels: Iterable[str], extra=(), ncol: int = 0) -> None:
    """One legend below the panels: a line per level of ``factor``, then ``extra`` handles."""
    handles = [Line2D([], [], color=COLORS[factor][v], label=label(factor, v)) for v in levels]
    handles += list(extra)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol or len(handles))


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """``stem``.pdf and ``stem``.png in ``out``, each written whole. No dates or versions in
    the metadata, so a rerun on the same data gives the same bytes."""
    paths = []
    for fmt, metadata in (("pdf", {"CreationDate": None, "Producer": None, "Creator": None}),
                          ("png", {"Software": None})):  # fmt: skip
        path = Path(out) / f"{stem}.{fmt}"
        atomic_write(path, lambda tmp, fmt=fmt, md=metadata: fig.savefig(
            tmp, format=fmt, metadata=md, dpi=PNG_DPI))  # fmt: skip
        paths.append(path)
    plt.close(fig)
    return paths
