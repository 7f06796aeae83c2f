"""How numbers are printed, shared by the HTML and the Markdown so both show the same text.

One function per kind of number: a reader (and the tests) can tell from a column
which precision it was printed at. Missing values print as an em dash, never "nan".
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MISSING = "—"


def _missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fixed(x: float | None, digits: int = 3) -> str:
    """Correlations, fractions, redundancy: fixed decimals, so columns line up."""
    if _missing(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


def sig(x: float | None, digits: int = 3) -> str:
    """Quantities of any scale (energies, distances, H1 per parameter): significant digits."""
    if _missing(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def count(n: int | float | None) -> str:
    """Integers (parameters, bytes, experts) exactly, with thousands separators."""
    if _missing(n):
        return MISSING
    return f"{int(n):,}"


def flag(value: bool | None) -> str:
    if value is None:
        return MISSING
    return "yes" if value else "no"


def listing(values: Iterable[object], empty: str = "none") -> str:
    """A short list such as layers '1, 2, 5'."""
    items = [str(v) for v in values]
    return ", ".join(items) if items else empty


def interval(low: float | None, high: float | None, digits: int = 3) -> str:
    if _missing(low) or _missing(high):
        return MISSING
    return f"[{fixed(low, digits)},\u00a0{fixed(high, digits)}]"  # no break inside
