"""Exponential back-off with full jitter."""

from __future__ import annotations

import random


def full_jitter_delay(retry: int, base_s: float, max_s: float) -> float:
    """Return a random delay in seconds before retry number ``retry`` (from 1).

    The delay is uniform in ``[0, min(max_s, base_s * 2 ** (retry - 1))]``
    ("full jitter"), so that clients that failed together do not retry
    together.
    """
    ceiling = min(max_s, base_s * 2 ** max(retry - 1, 0))
    return random.uniform(0.0, ceiling)
