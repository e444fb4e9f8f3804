"""Rules for text that Bulkhead stores, applied the same way on every database.

PostgreSQL cannot store NUL in a text column, and asyncpg cannot encode a
lone surrogate (valid in a Python str after ``json.loads``). Model output
therefore has both replaced by U+FFFD before it is stored; user input that
contains them is rejected at the API with 422, so nothing a user sends is
silently altered.

Text that is cut short (chat titles) is cut between grapheme clusters, so
that a cut never splits an emoji sequence or a letter from its accents.
"""

from __future__ import annotations

import re

import regex

# An idempotency key: 1 to 255 printable ASCII characters, spaces only inside.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
REPLACEMENT_CHARACTER = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_GRAPHEME = regex.compile(r"\X")
ELLIPSIS = "\u2026"


def find_unstorable(text: str) -> int | None:
    """Return the index of the first NUL or lone surrogate, or None."""
    match = _UNSTORABLE.search(text)
    return match.start() if match else None


def sanitize(text: str) -> str:
    """Replace NUL and lone surrogates with U+FFFD, leaving all else unchanged."""
    return _UNSTORABLE.sub(REPLACEMENT_CHARACTER, text)


def shorten(text: str, max_chars: int) -> str:
    """Return ``text``, or as many whole grapheme clusters as fit in
    ``max_chars`` code points together with a closing ellipsis."""
    if len(text) <= max_chars:
        return text
    end = 0
    for cluster in _GRAPHEME.finditer(text):
        if cluster.end() > max_chars - len(ELLIPSIS):
            break
        end = cluster.end()
    return text[:end] + ELLIPSIS
