"""Request limits: body size, content length, messages per minute, open streams."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import httpx

from bulkhead.devstack import Stack
from tests.support import assert_eventually
from tests.support.api import auth, post_chat

DEFAULT_MESSAGES_PER_MINUTE = 60
DEFAULT_STREAMS_PER_USER = 5


async def test_body_over_limit_413(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    body = b'{"content": "' + b"a" * (256 * 1024) + b'"}'
    response = await gateway_client.post(
        "/api/chat",
        content=body,
        headers=auth(api_key(), **{"Content-Type": "application/json"}),
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_content_over_limit_422(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key = api_key()
    at_limit = await post_chat(gateway_client, key, "é" * 32_000)
    over_limit = await post_chat(gateway_client, key, "é" * 32_001)

    assert at_limit.status_code == 202, at_limit.text
    assert over_limit.status_code == 422
    assert over_limit.json()["errors"][0]["field"] == "content"


async def test_messages_per_minute_429(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key, other = api_key(), api_key()
    accepted = 0
    first_key = "replay-" + uuid.uuid4().hex
    # Fixed one-minute windows: a test that starts late in a minute may see
    # the count reset once, so up to twice the limit can pass before a 429.
    for number in range(2 * DEFAULT_MESSAGES_PER_MINUTE + 5):
        headers = {"Idempotency-Key": first_key if number == 0 else uuid.uuid4().hex}
        response = await post_chat(gateway_client, key, f"m{number}", headers=headers)
        if response.status_code == 429:
            break
        assert response.status_code == 202, response.text
        accepted += 1

    assert DEFAULT_MESSAGES_PER_MINUTE <= accepted <= 2 * DEFAULT_MESSAGES_PER_MINUTE
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["content-type"] == "application/problem+json"
    # A replay is not a new message, and another user has a budget of their own.
    replay = await post_chat(
        gateway_client, key, "m0", headers={"Idempotency-Key": first_key}
    )
    assert replay.status_code == 202
    assert replay.headers["idempotent-replayed"] == "true"
    assert (await post_chat(gateway_client, other, "hi")).status_code == 202


async def test_rate_limited_post_stores_nothing(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key = api_key()
    first = await post_chat(gateway_client, key, "first")
    chat_id = first.json()["chat_id"]
    statuses = []
    # Fixed one-minute windows: a test that starts late in a minute may see
    # the count reset once, so up to twice the limit can pass before a 429.
    for number in range(2 * DEFAULT_MESSAGES_PER_MINUTE + 5):
        response = await post_chat(gateway_client, key, f"m{number}", chat_id=chat_id)
        statuses.append(response.status_code)
    accepted = 1 + statuses.count(202)

    messages = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(key), params={"limit": 100}
    )
    user_messages = [m for m in messages.json()["items"] if m["role"] == "user"]
    assert 429 in statuses
    assert len(user_messages) <= accepted


@contextlib.asynccontextmanager
async def _open_stream(
    client: httpx.AsyncClient, key: str, run_id: str
) -> AsyncIterator[httpx.Response]:
    async with client.stream(
        "GET", f"/api/runs/{run_id}/events", headers=auth(key)
    ) as response:
        yield response


async def test_open_streams_per_user_429(
    model_stack: Stack, model_key: str, fake_model: object
) -> None:
    # A slow model keeps the runs, and so their streams, open for seconds.
    fake_model.reset(slow={"reply": "slow " * 40, "chunks": 40, "chunk_delay_s": 0.5})  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        base_url=model_stack.gateway_url, timeout=30
    ) as client:
        run_ids = []
        for number in range(DEFAULT_STREAMS_PER_USER + 1):
            posted = await post_chat(client, model_key, f"s{number}", model="slow")
            assert posted.status_code == 202, posted.text
            run_ids.append(posted.json()["run"]["id"])

        async with contextlib.AsyncExitStack() as streams:
            for run_id in run_ids[:DEFAULT_STREAMS_PER_USER]:
                response = await streams.enter_async_context(
                    _open_stream(client, model_key, run_id)
                )
                assert response.status_code == 200
            refused = await client.get(
                f"/api/runs/{run_ids[-1]}/events", headers=auth(model_key)
            )
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1

        # Closed streams free their slots, as soon as the gateway has seen
        # the disconnects (a moment later on a loaded machine).
        async def reopened() -> None:
            async with _open_stream(client, model_key, run_ids[-1]) as response:
                assert response.status_code in (200, 204)

        await assert_eventually(reopened, timeout=30, interval=0.5)


async def test_message_page_bounded_by_size(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    key = api_key()
    first = await post_chat(gateway_client, key, "😀" * 32_000)
    chat_id = first.json()["chat_id"]
    for _ in range(9):
        posted = await post_chat(gateway_client, key, "😀" * 32_000, chat_id=chat_id)
        assert posted.status_code == 202

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = await gateway_client.get(
            f"/api/chats/{chat_id}/messages", headers=auth(key), params=params
        )
        assert page.status_code == 200
        body = page.json()
        assert sum(len(m["content"]) for m in body["items"][1:]) <= 256_000
        seen += [m["id"] for m in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break

    user_messages = 10
    assert pages >= 2
    assert len(seen) == len(set(seen)) >= user_messages
