"""Shortening text between grapheme clusters, as chat titles are."""

from __future__ import annotations

import pytest

from bulkhead.text import ELLIPSIS, shorten

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points
FLAG = "\U0001f1eb\U0001f1f7"  # two regional indicators
E_ACUTE = "e\u0301"  # e and a combining acute accent


def test_shorten_keeps_text_that_fits() -> None:
    assert shorten("x" * 80, 80) == "x" * 80
    assert shorten(FAMILY * 2, 14) == FAMILY * 2


def test_shorten_plain_text() -> None:
    assert shorten("abcdefghij", 5) == "abcd" + ELLIPSIS


@pytest.mark.parametrize(
    ("text", "max_chars", "expected"),
    [
        # 3 + 7 code points: the second family does not fit before the ellipsis.
        ("abc" + FAMILY * 3, 16, "abc" + FAMILY + ELLIPSIS),
        ("abc" + FAMILY * 3, 11, "abc" + FAMILY + ELLIPSIS),
        ("abc" + FAMILY * 3, 10, "abc" + ELLIPSIS),
        ("a" + FLAG * 3, 5, "a" + FLAG + ELLIPSIS),
        ("ab" + E_ACUTE * 4, 6, "ab" + E_ACUTE + ELLIPSIS),
    ],
)
def test_shorten_keeps_grapheme_clusters(
    text: str, max_chars: int, expected: str
) -> None:
    shortened = shorten(text, max_chars)

    assert shortened == expected
    assert len(shortened) <= max_chars


def test_shorten_first_cluster_too_long() -> None:
    assert shorten(FAMILY + "abc", 4) == ELLIPSIS
