"""LaTeX output: escaping, macros, booktabs tables. Every string that reaches the paper from
the data passes through :func:`escape`, headers included (pandas' ``Styler.to_latex``
escapes only when asked, and an underscore in ``kaiming_normal`` stops the build)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# Characters of the claims' and README's text that Latin-1 fonts lack.
_UNICODE = {
    "≥": r"$\geq$", "≤": r"$\leq$", "−": "-", "×": r"$\times$", "β": r"$\beta$",
    "χ": r"$\chi$", "ξ": r"$\xi$", "σ": r"$\sigma$", "φ": r"$\phi$", "√": r"$\surd$",
    "–": "--", "—": "---", "’": "'", "·": r"$\cdot$", "≈": r"$\approx$",
}  # fmt: skip


def escape(text: object) -> str:
    """Plain text as LaTeX: every special character escaped, nothing else changed."""
    out = "".join(_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(_UNICODE.get(ch, ch) for ch in out)


def breakable(text: str, every: int = 8) -> str:
    """A long token (a checksum) that may break across lines, in typewriter type."""
    chunks = [escape(text[i : i + every]) for i in range(0, len(text), every)]
    return r"\texttt{" + r"\allowbreak{}".join(chunks) + "}"


_DIGITS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def macro_name(*parts: str) -> str:
    """A LaTeX control word from free text (letters only): ("effect", "C6b") ->
    ``EffectCSixB``; digits become words, everything else separates words."""
    words = []
    for part in parts:
        for token in re.findall(r"[A-Za-z]+|\d", str(part)):
            words.append(_DIGITS[int(token)] if token.isdigit() else token[0].upper() + token[1:])
    return "".join(words)


def define(name: str, value: str) -> str:
    """One macro definition; ``value`` is LaTeX already (escape text first)."""
    return f"\\newcommand{{\\{name}}}{{{value}}}"


def number(value: float, digits: int = 3, signed: bool = False) -> str:
    """A number for the text: ``digits`` significant digits, thousands separated, a true
    minus sign (math mode where a sign or power of ten needs it); NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if math.isinf(value):
        return r"$\infty$" if value > 0 else r"$-\infty$"
    magnitude = abs(value)
    if magnitude < 1e-12:  # round-off of a closed form that is exactly 0
        return "0"
    if float(value).is_integer() and magnitude < 10**15:
        text = f"{int(magnitude):,}"
    elif magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e6):
        mantissa, exponent = f"{magnitude:.{digits - 1}e}".split("e")
        text = f"{mantissa}\\times 10^{{{int(exponent)}}}"
    else:
        text = f"{magnitude:.{digits}g}"
        if "e" in text:  # 1,000 <= magnitude < 10^6 with more digits than asked
            text = f"{magnitude:,.0f}"
    sign = "-" if value < 0 else ("+" if signed and value > 0 else "")
    if sign or "times" in text:
        return "$" + sign + text.replace(",", "{,}") + "$"
    return text


def interval(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """ "x [low, high]" with signed numbers; "--" if the estimate is missing."""
    if estimate is None or math.isnan(estimate):
        return "--"
    bounds = f" [{number(low, digits, True)}, {number(high, digits, True)}]"
    return number(estimate, digits, True) + ("" if math.isnan(low) else bounds)


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    align: str,
    caption: str,
    label: str,
    long: bool = False,
    size: str = r"\small",
) -> str:
    """A booktabs table; cells and header are LaTeX already (escape text first). ``long``
    makes a longtable that breaks across pages, its header repeated."""
    head = " & ".join(header) + r" \\"
    body = "\n".join(" & ".join(row) + r" \\" for row in rows)
    if long:
        return "\n".join([
            "{" + size, rf"\begin{{longtable}}{{{align}}}",
            rf"\caption{{{caption}}}\label{{{label}}}\\", r"\toprule", head, r"\midrule",
            r"\endfirsthead", r"\toprule", head, r"\midrule", r"\endhead",
            r"\bottomrule", r"\endlastfoot", body, r"\end{longtable}", "}",
        ])  # fmt: skip
    return "\n".join([
        r"\begin{table}[tbp]", r"\centering", size, rf"\caption{{{caption}}}\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}", r"\toprule", head, r"\midrule", body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])  # fmt: skip
