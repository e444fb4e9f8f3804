"""Time-ordered ids for rows whose order matters."""

from __future__ import annotations

import os
import time
from uuid import UUID

_TIMESTAMP_BITS = 48
_RANDOM_BITS = 80


def uuid7() -> UUID:
    """Return a version 7 UUID (RFC 9562): a 48-bit Unix time in milliseconds
    followed by random bits, so ids sort by creation time on PostgreSQL
    (bytewise uuid order) and on SQLite (hex text order) alike."""
    millis = time.time_ns() // 1_000_000 & ((1 << _TIMESTAMP_BITS) - 1)
    random_bits = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
    value = millis << _RANDOM_BITS | random_bits
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return UUID(int=value)
