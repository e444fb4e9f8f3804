"""Property tests: idempotency fingerprints, pagination cursors, text rules."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bulkhead.text import find_unstorable, sanitize
from chat_service.errors import InvalidArgumentError
from chat_service.idempotency import fingerprint
from chat_service.store.queries import (
    _MAX_CURSOR_INT,
    _MIN_CURSOR_INT,
    CHATS_LISTING,
    decode_cursor,
    encode_cursor,
    messages_listing,
)
from gateway.schemas import PostMessageRequest

requests = st.tuples(
    st.text(), st.text(max_size=40), st.text(max_size=40), st.integers(0, 3)
)
cursor_ints = st.integers(_MIN_CURSOR_INT, _MAX_CURSOR_INT)


@given(requests, requests)
def test_fingerprint_equal_only_for_equal_requests(
    first: tuple[str, str, str, int], second: tuple[str, str, str, int]
) -> None:
    assert (fingerprint(*first) == fingerprint(*second)) == (first == second)


@given(requests)
def test_fingerprint_is_sha256_hex(request_fields: tuple[str, str, str, int]) -> None:
    value = fingerprint(*request_fields)

    assert len(value) == 64
    assert set(value) <= set("0123456789abcdef")
    assert value == fingerprint(*request_fields)


@given(st.text(), st.text())
def test_fingerprint_fields_not_confused(content: str, chat_id: str) -> None:
    # Moving text from one field to another is a different request.
    if content != chat_id:
        assert fingerprint(content, chat_id, "", 0) != fingerprint(
            chat_id, content, "", 0
        )


@given(cursor_ints, st.uuids())
def test_cursor_round_trip(number: int, identifier: uuid.UUID) -> None:
    cursor = encode_cursor(CHATS_LISTING, [number, identifier])

    assert decode_cursor(cursor, CHATS_LISTING, (int, uuid.UUID)) == [
        number,
        identifier,
    ]
    assert cursor.isascii()


@given(cursor_ints, st.uuids(), st.uuids(), st.uuids())
def test_cursor_other_listing_rejected(
    number: int, identifier: uuid.UUID, chat_id: uuid.UUID, other_chat_id: uuid.UUID
) -> None:
    listings = [CHATS_LISTING, messages_listing(chat_id)]
    if other_chat_id != chat_id:
        listings.append(messages_listing(other_chat_id))

    for made_for in listings:
        cursor = encode_cursor(made_for, [number, identifier])
        for passed_to in listings:
            if passed_to == made_for:
                continue
            with pytest.raises(InvalidArgumentError):
                decode_cursor(cursor, passed_to, (int, uuid.UUID))


@given(st.text(max_size=200))
@settings(max_examples=500)
def test_cursor_decode_only_invalid_argument(cursor: str) -> None:
    try:
        decode_cursor(cursor, CHATS_LISTING, (int, uuid.UUID))
    except InvalidArgumentError:
        pass


@given(
    st.lists(
        st.one_of(
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=40),
            st.booleans(),
            st.none(),
        ),
        max_size=3,
    )
)
def test_cursor_decode_rejects_forged_values(values: list[object]) -> None:
    raw = json.dumps([CHATS_LISTING, *values]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    try:
        number, identifier = decode_cursor(cursor, CHATS_LISTING, (int, uuid.UUID))
    except InvalidArgumentError:
        return
    assert _MIN_CURSOR_INT <= number <= _MAX_CURSOR_INT
    assert isinstance(identifier, uuid.UUID)


@given(st.text())
def test_sanitize_makes_text_storable(text: str) -> None:
    cleaned = sanitize(text)

    assert find_unstorable(cleaned) is None
    assert len(cleaned) == len(text)
    assert sanitize(cleaned) == cleaned
    cleaned.encode("utf-8")  # never raises: no lone surrogate is left
    assert (cleaned == text) == (find_unstorable(text) is None)


@given(st.text())
def test_sanitize_changes_only_unstorable(text: str) -> None:
    for before, after in zip(text, sanitize(text), strict=True):
        if find_unstorable(before) is None:
            assert after == before
        else:
            assert after == "\ufffd"


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_post_body_accepts_only_storable_content(content: str) -> None:
    try:
        body = PostMessageRequest(content=content)
    except ValidationError:
        assert not content.strip() or find_unstorable(content) is not None
        return
    assert body.content == content
    assert find_unstorable(body.content) is None


@pytest.mark.parametrize("value", ["\x00", "a\ud800", "\udc00b", "ok\x00\udfff"])
def test_post_body_rejects_unstorable(value: str) -> None:
    with pytest.raises(ValidationError):
        PostMessageRequest(content=value)
