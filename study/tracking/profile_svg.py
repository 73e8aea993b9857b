"""A cell's gradient profile as a small SVG picture: log10 gradient norm against the layer.

Drawn as text, not with matplotlib: a matplotlib PNG of the same plot cost 37 ms a cell
here (a probe-only cell's whole bookkeeping costs ~5 ms), this costs well under a
millisecond, and a vector picture stays sharp at any zoom of the MLflow UI. Layers are
numbered from 1 (input side) to the depth, on integer ticks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

from study import records

WIDTH, HEIGHT = 520, 320
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 52, 46  # margins around the plot area
MARKED = 32  # nets this deep or shallower get a dot per layer
# (gradient, probe point) -> colour and dash: init blue, last probe orange; weight dashed.
STYLES = {
    ("signal", "init"): ("#0072B2", ""),
    ("signal", "final"): ("#D55E00", ""),
    ("weight", "init"): ("#0072B2", "5 3"),
    ("weight", "final"): ("#D55E00", "5 3"),
}


def nice_step(span: float, most: int) -> float:
    """The smallest of 1, 2, 5 x 10^k that cuts ``span`` into at most ``most`` intervals."""
    raw = max(span, 1e-12) / most
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def ticks(low: float, high: float, most: int, integer: bool = False) -> list[float]:
    step = nice_step(high - low, most)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def layer_ticks(depth: int) -> list[int]:
    """Integer ticks on the layer axis: round numbers, with the first layer (the input side)
    and the last always among them."""
    inner = [int(t) for t in ticks(1, depth, 8, integer=True)]
    gap = (inner[1] - inner[0]) / 2 if len(inner) > 1 else 1
    inner = [t for t in inner if t - 1 >= gap and depth - t >= gap]
    return sorted({1, *inner, depth})


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.0e}"


def series(layers: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(gradient, probe point, layers, log10 norms) of each line to draw; zeros dropped."""
    out = []
    for when, rows in records.profile_points(layers):
        for grad in records.GRADIENTS:
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.log10(layers[f"{grad}_grad_norm"][rows].astype(float))
            out.append((grad, when, layers["layer"][rows].astype(float), values))
    return out


def _polylines(xs: np.ndarray, ys: np.ndarray, x, y) -> list[str]:
    """Point lists of the finite runs of a line (a zero gradient breaks it)."""
    parts, current = [], []
    for a, b in zip(xs, ys, strict=True):
        if math.isfinite(b):
            current.append(f"{x(a):.1f},{y(b):.1f}")
        elif current:
            parts.append(" ".join(current))
            current = []
    if current:
        parts.append(" ".join(current))
    return parts


def svg(layers: dict[str, np.ndarray], title: str, steps: Sequence[int] = ()) -> str:
    """The picture; ``steps`` name the probe points in the legend (init, last probe)."""
    lines = series(layers)
    finite = np.concatenate([v[np.isfinite(v)] for *_, v in lines] or [np.zeros(0)])
    depth = float(layers["layer"].max()) if len(layers["layer"]) else 1.0
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 0.0)
    if high - low < 0.2:  # a flat profile still gets a readable range
        low, high = low - 0.1, high + 0.1
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(layer: float) -> float:
        return LEFT + (w * (layer - 1) / (depth - 1) if depth > 1 else w / 2)

    def y(value: float) -> float:
        return TOP + h * (high - value) / (high - low)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#444"/>',
    ]
    for t in layer_ticks(int(depth)):
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP + h}" x2="{x(t):.1f}" y2="{TOP + h + 4}" '
                   f'stroke="#444"/><text x="{x(t):.1f}" y="{TOP + h + 17}" '
                   f'text-anchor="middle" class="layer">{int(t)}</text>')  # fmt: skip
    for t in ticks(low, high, 6):
        out.append(f'<line x1="{LEFT}" y1="{y(t):.1f}" x2="{LEFT + w}" y2="{y(t):.1f}" '
                   f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y(t) + 4:.1f}" '
                   f'text-anchor="end">{_label(t)}</text>')  # fmt: skip
    out.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
               "layer (1 = input side)</text>")  # fmt: skip
    out.append(f'<text transform="translate(16 {TOP + h / 2}) rotate(-90)" '
               'text-anchor="middle">log10 gradient norm</text>')  # fmt: skip
    names = {"init": f"step {steps[0]}" if steps else "init",
             "final": f"step {steps[-1]}" if steps else "last probe"}  # fmt: skip
    for i, (grad, when, xs, ys) in enumerate(lines):
        colour, dash = STYLES[grad, when]
        stroke = f'stroke="{colour}" stroke-width="1.8" fill="none"'
        stroke += f' stroke-dasharray="{dash}"' if dash else ""
        for points in _polylines(xs, ys, x, y):
            out.append(f'<polyline points="{points}" {stroke}/>')
        if depth <= MARKED:  # few layers: each one a dot, so that a line of one shows too
            out += [f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{colour}"/>'
                    for a, b in zip(xs, ys, strict=True) if math.isfinite(b)]  # fmt: skip
        lx, ly = LEFT + 115 * i, 36  # the legend: one row above the plot (4 lines at most)
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" {stroke}/>'
                   f'<text x="{lx + 26}" y="{ly + 4}" font-size="11">{grad}, {names[when]}'
                   "</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"
