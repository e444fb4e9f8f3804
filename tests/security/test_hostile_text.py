"""Hostile input: a clear 4xx or stored exactly, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from bulkhead.devstack import Stack
from tests.support.api import auth, parse_sse, post_chat, wait_for_run

JSON = {"Content-Type": "application/json"}

REJECTED_BODIES = {
    "NUL": b'{"content": "a\\u0000b"}',
    "lone high surrogate": b'{"content": "a\\ud800b"}',
    "lone low surrogate": b'{"content": "\\udfff"}',
    "invalid UTF-8": b'{"content": "caf\xc3("}',
    "latin-1 byte": b'{"content": "caf\xe9"}',
    "deeply nested": b'{"content": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "huge number": b'{"content": 1' + b"0" * 5000 + b"}",
    "huge number in on_busy": b'{"content": "x", "on_busy": 1e999}',
    "number as content": b'{"content": 12}',
    "blank": b'{"content": " \\n\\t "}',
    "unknown field": b'{"content": "x", "admin": true}',
    "truncated": b'{"content": "x"',
    "not an object": b'["content", "x"]',
    "chat id not uuid": b'{"content": "x", "chat_id": "../../etc"}',
    "empty body": b"",
}

# Stored and returned exactly as sent.
KEPT_TEXTS = {
    "control characters": "bell\x07 escape\x1b[31m tab\t cr\r del\x7f",
    "emoji and ZWJ": "family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
    "combining": "e\u0301 a\u030a Z\u0351\u0327\u036b",
    "right to left": "שלום עליכם مرحبا \u202eevil\u202c",
    "astral and CJK": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 汉字 かな 한국어",
    "BOM and zero width": "\ufeffstart\u200bmiddle\u2060end",
    "U+FFFD itself": "replacement \ufffd kept",
}


@pytest.mark.parametrize("case", list(REJECTED_BODIES))
async def test_hostile_body_rejected_4xx(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str], case: str
) -> None:
    key = api_key()
    response = await gateway_client.post(
        "/api/chat", content=REJECTED_BODIES[case], headers=auth(key, **JSON)
    )

    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    chats = await gateway_client.get("/api/chats", headers=auth(key))
    assert chats.json()["items"] == []


async def test_duplicate_keys_last_wins(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key = api_key()
    body = b'{"content": "first", "content": "second"}'
    response = await gateway_client.post(
        "/api/chat", content=body, headers=auth(key, **JSON)
    )

    assert response.status_code == 202, response.text
    assert response.json()["message"]["content"] == "second"


@pytest.mark.parametrize("case", list(KEPT_TEXTS))
async def test_text_kept_exactly(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str], case: str
) -> None:
    key, text = api_key(), KEPT_TEXTS[case]
    posted = await post_chat(gateway_client, key, text)
    assert posted.status_code == 202, posted.text
    run_id, chat_id = posted.json()["run"]["id"], posted.json()["chat_id"]
    run = await wait_for_run(gateway_client, key, run_id)

    messages = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(key)
    )
    stored = messages.json()["items"]
    assert stored[0]["content"] == text
    # The built-in model echoes the message, so the reply carries it too.
    assert run["assistant_message"]["content"] == "You said: " + text
    stream = await gateway_client.get(f"/api/runs/{run_id}/events", headers=auth(key))
    events, _ = parse_sse(stream.text)
    deltas = "".join(e.data["delta"] for e in events if e.event == "message.delta")
    assert deltas == "You said: " + text


async def _split_body(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_multibyte_split_across_chunks(
    stack: Stack, api_key: Callable[..., str]
) -> None:
    key = api_key()
    text = "".join(KEPT_TEXTS.values())
    body = json.dumps({"content": text}, ensure_ascii=False).encode()

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        # One- and two-byte chunks cut every multi-byte character apart.
        for size in (1, 2, 3):
            response = await client.post(
                "/api/chat", content=_split_body(body, size), headers=auth(key, **JSON)
            )
            assert response.status_code == 202, response.text
            assert response.json()["message"]["content"] == text
            run_id = response.json()["run"]["id"]
            await wait_for_run(client, key, run_id)

            chunks = []
            async with client.stream(
                "GET", f"/api/runs/{run_id}/events", headers=auth(key)
            ) as stream:
                async for chunk in stream.aiter_raw(1):
                    chunks.append(chunk)
            events, _ = parse_sse(b"".join(chunks).decode("utf-8"))
            deltas = "".join(
                e.data["delta"] for e in events if e.event == "message.delta"
            )
            assert deltas == "You said: " + text[:200]


async def test_odd_headers_and_queries_4xx(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key = api_key()
    cases = [
        ("GET", "/api/chats?limit=1e9", {}),
        ("GET", "/api/chats?limit=-1", {}),
        ("GET", "/api/chats?cursor=" + "A" * 2000, {}),
        ("GET", "/api/chats?cursor=%00%ff", {}),
        ("GET", "/api/chats?cursor=WzEsMl0", {}),
        ("GET", "/api/chats?cursor=WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAsIngiXQ", {}),
        ("GET", "/api/runs/%00/events", {}),
        (
            "GET",
            "/api/runs/00000000-0000-0000-0000-000000000000/events",
            {"Last-Event-ID": "99999999999999999999999"},
        ),
        ("POST", "/api/chat", {"Idempotency-Key": "\x7f"}),
        ("POST", "/api/chat", {"Idempotency-Key": "k" * 256}),
    ]
    for method, url, headers in cases:
        response = await gateway_client.request(
            method, url, headers=auth(key, **headers), json={"content": "x"}
        )
        assert 400 <= response.status_code < 500, (url, headers, response.text)
