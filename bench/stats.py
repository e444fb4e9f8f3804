"""Medians and spreads of figures measured over repeated runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the ``fraction`` percentile (0..1) by nearest rank, None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Summarise one figure over repeats: median, min, max and every value.

    Repeats that produced no value (None) are left out of the median and
    counted in ``missing``.
    """
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": list(values)}
    return {
        "median": round(statistics.median(present), 4),
        "min": round(min(present), 4),
        "max": round(max(present), 4),
        "runs": [None if v is None else round(float(v), 4) for v in values],
        "missing": len(values) - len(present),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, None if either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def median_of(summary: dict[str, Any] | None) -> float | None:
    """Return the median of a :func:`spread` summary, None if absent."""
    if not summary:
        return None
    value = summary.get("median")
    return None if value is None else float(value)
