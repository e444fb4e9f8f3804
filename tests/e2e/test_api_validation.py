"""Bad requests get RFC 9457 problems and store nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.api import auth, parse_sse, post_chat, wait_for_run

PROBLEM_FIELDS = {"type", "title", "status", "detail"}

INVALID_BODIES = [
    pytest.param({"content": "hi", "extra": 1}, id="unknown-field"),
    pytest.param({"content": 5}, id="content-not-string"),
    pytest.param({"content": ""}, id="empty-content"),
    pytest.param({"content": " \n\t "}, id="blank-content"),
    pytest.param({"content": "x" * 32_001}, id="content-over-limit"),
    pytest.param({}, id="missing-content"),
    pytest.param({"content": "hi", "chat_id": "not-a-uuid"}, id="chat-id-not-uuid"),
    pytest.param({"content": "hi", "chat_id": 7}, id="chat-id-number"),
    pytest.param({"content": "hi", "model": "no-such-model"}, id="unknown-model"),
    pytest.param({"content": "hi", "model": 3}, id="model-number"),
    pytest.param({"content": "hi", "on_busy": "sometimes"}, id="on-busy-unknown"),
    pytest.param({"content": "a\u0000b"}, id="nul-character"),
    pytest.param(["content"], id="not-an-object"),
]


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert PROBLEM_FIELDS <= problem.keys()
    assert problem["status"] == status
    return problem


async def _chat_count(client: httpx.AsyncClient, key: str) -> int:
    response = await client.get("/api/chats", headers=auth(key))
    assert response.status_code == 200
    return len(response.json()["items"])


@pytest.mark.parametrize("body", INVALID_BODIES)
async def test_invalid_body_is_422(
    gateway_client: httpx.AsyncClient, api_key, body: object
) -> None:
    key = api_key()

    response = await gateway_client.post("/api/chat", json=body, headers=auth(key))

    assert_problem(response, 422)
    assert await _chat_count(gateway_client, key) == 0


async def test_content_at_limit_is_accepted(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()

    response = await post_chat(gateway_client, key, "x" * 32_000)

    assert response.status_code == 202
    assert len(response.json()["message"]["content"]) == 32_000


async def test_malformed_json_is_422(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()

    response = await gateway_client.post(
        "/api/chat",
        content=b'{"content": "unterminated',
        headers=auth(key, **{"Content-Type": "application/json"}),
    )

    assert_problem(response, 422)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"content": "caf\xe9"}',
            "Invalid JSON: the body is not UTF-8: byte 0xE9 at offset 16.",
        ),
        (
            b'{"content": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "Invalid JSON: arrays or objects are nested too deeply.",
        ),
        (
            b'{"content": "x", "n": ' + b"9" * 5000 + b"}",
            "Invalid JSON: a number has too many digits.",
        ),
    ],
    ids=["latin-1", "nested", "long-number"],
)
async def test_unparsable_json_422_reason(
    gateway_client: httpx.AsyncClient, api_key, body: bytes, message: str
) -> None:
    key = api_key()

    response = await gateway_client.post(
        "/api/chat",
        content=body,
        headers=auth(key, **{"Content-Type": "application/json"}),
    )

    problem = assert_problem(response, 422)
    assert problem["errors"] == [{"field": "body", "message": message}]
    assert await _chat_count(gateway_client, key) == 0


@pytest.mark.parametrize(
    "idempotency_key",
    ["k" * 256, "caf\u00e9", "tab\there"],
    ids=["too-long", "non-ascii", "tab"],
)
async def test_invalid_idempotency_key_is_422(
    gateway_client: httpx.AsyncClient, api_key, idempotency_key: str
) -> None:
    key = api_key()

    response = await gateway_client.post(
        "/api/chat",
        json={"content": "hi"},
        headers=[
            ("Authorization", f"Bearer {key}"),
            ("Idempotency-Key", idempotency_key.encode("utf-8")),
        ],
    )

    assert_problem(response, 422)
    assert await _chat_count(gateway_client, key) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer bk_wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
async def test_missing_or_wrong_key_is_401(
    gateway_client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await gateway_client.post(
        "/api/chat", json={"content": "hi"}, headers=headers
    )

    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_unknown_chat_is_404(gateway_client: httpx.AsyncClient, api_key) -> None:
    key = api_key()

    response = await post_chat(gateway_client, key, "hi", chat_id=str(uuid.uuid4()))

    assert_problem(response, 404)
    assert await _chat_count(gateway_client, key) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/{run}",
        "/api/runs/{run}/events",
        "/api/chats/{chat}/messages",
    ],
)
async def test_unknown_ids_are_404(
    gateway_client: httpx.AsyncClient, api_key, path: str
) -> None:
    key = api_key()

    for value in (str(uuid.uuid4()), "not-a-uuid"):
        response = await gateway_client.get(
            path.format(run=value, chat=value), headers=auth(key)
        )
        assert_problem(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "detail"),
    [
        ("GET", "/api/runs/{id}", "The run was not found."),
        ("GET", "/api/runs/{id}/events", "The run was not found."),
        ("POST", "/api/runs/{id}/cancel", "The run was not found."),
        ("POST", "/api/runs/{id}/retry", "The run was not found."),
        ("GET", "/api/chats/{id}/messages", "The chat was not found."),
    ],
)
async def test_unknown_and_malformed_ids_same_detail(
    gateway_client: httpx.AsyncClient, api_key, method: str, path: str, detail: str
) -> None:
    key = api_key()

    for value in (str(uuid.uuid4()), "not-a-uuid"):
        response = await gateway_client.request(
            method, path.format(id=value), headers=auth(key)
        )
        problem = assert_problem(response, 404)
        assert problem["type"] == "urn:bulkhead:problem:not-found", value
        assert problem["detail"] == detail, value


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
async def test_bad_page_limit_is_422(
    gateway_client: httpx.AsyncClient, api_key, limit: str
) -> None:
    key = api_key()

    response = await gateway_client.get(f"/api/chats?limit={limit}", headers=auth(key))

    assert_problem(response, 422)


async def test_bad_cursor_is_422(gateway_client: httpx.AsyncClient, api_key) -> None:
    key = api_key()

    response = await gateway_client.get(
        "/api/chats?cursor=%%%garbage", headers=auth(key)
    )

    assert_problem(response, 422)


async def test_cursor_of_other_listing_is_422(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    first = (await post_chat(gateway_client, key, "first chat")).json()
    await post_chat(gateway_client, key, "second chat")
    await wait_for_run(gateway_client, key, first["run"]["id"])
    messages_path = f"/api/chats/{first['chat_id']}/messages"
    chats_page = await gateway_client.get(
        "/api/chats", params={"limit": 1}, headers=auth(key)
    )
    messages_page = await gateway_client.get(
        messages_path, params={"limit": 1}, headers=auth(key)
    )
    chats_cursor = chats_page.json()["next_cursor"]
    messages_cursor = messages_page.json()["next_cursor"]
    assert chats_cursor is not None
    assert messages_cursor is not None

    messages_with_chats_cursor = await gateway_client.get(
        messages_path, params={"cursor": chats_cursor}, headers=auth(key)
    )
    chats_with_messages_cursor = await gateway_client.get(
        "/api/chats", params={"cursor": messages_cursor}, headers=auth(key)
    )

    for response in (messages_with_chats_cursor, chats_with_messages_cursor):
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["field"] == "cursor"


async def test_bad_last_event_id_is_422(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    run_id = (await post_chat(gateway_client, key, "hi")).json()["run"]["id"]

    response = await gateway_client.get(
        f"/api/runs/{run_id}/events", headers=auth(key, **{"Last-Event-ID": "abc"})
    )

    assert_problem(response, 422)


async def test_empty_last_event_id_means_none(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    run_id = (await post_chat(gateway_client, key, "hi")).json()["run"]["id"]
    await wait_for_run(gateway_client, key, run_id)
    path = f"/api/runs/{run_id}/events"

    full = await gateway_client.get(path, headers=auth(key))
    empty = await gateway_client.get(path, headers=auth(key, **{"Last-Event-ID": ""}))
    # The empty header does not hide the query parameter.
    resumed = await gateway_client.get(
        f"{path}?last_event_id=1", headers=auth(key, **{"Last-Event-ID": ""})
    )

    assert (full.status_code, empty.status_code, resumed.status_code) == (200,) * 3
    ids = [event.id for event in parse_sse(full.text)[0]]
    assert [event.id for event in parse_sse(empty.text)[0]] == ids
    assert [event.id for event in parse_sse(resumed.text)[0]] == ids[1:]
