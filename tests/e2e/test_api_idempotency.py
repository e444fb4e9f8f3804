"""Idempotency-Key: one (user, key) is one message, whatever the retries."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support.api import auth, post_chat


async def test_replay_returns_same_response(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    idempotency_key = f"replay-{uuid.uuid4()}"
    headers = {"Idempotency-Key": idempotency_key}

    first = await post_chat(gateway_client, key, "only once", headers=headers)
    second = await post_chat(gateway_client, key, "only once", headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["location"] == first.headers["location"]


async def test_key_with_other_body_is_422(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    headers = {"Idempotency-Key": f"reuse-{uuid.uuid4()}"}
    first = await post_chat(gateway_client, key, "original body", headers=headers)

    reused = await post_chat(gateway_client, key, "a different body", headers=headers)

    assert first.status_code == 202
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    problem = reused.json()
    assert problem["status"] == 422
    assert problem["type"].endswith("idempotency-key-reused")
    chats = await gateway_client.get("/api/chats", headers=auth(key))
    assert len(chats.json()["items"]) == 1


async def test_key_is_scoped_to_user(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    alice, bob = api_key(), api_key()
    headers = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}

    for_alice = await post_chat(gateway_client, alice, "same text", headers=headers)
    for_bob = await post_chat(gateway_client, bob, "same text", headers=headers)

    assert for_alice.status_code == 202
    assert for_bob.status_code == 202
    assert "idempotent-replayed" not in for_bob.headers
    assert for_bob.json()["run"]["id"] != for_alice.json()["run"]["id"]


async def test_concurrent_duplicates_store_one(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    headers = {"Idempotency-Key": f"burst-{uuid.uuid4()}"}

    responses = await asyncio.gather(
        *(
            post_chat(gateway_client, key, "twenty at once", headers=headers)
            for _ in range(20)
        )
    )

    assert [r.status_code for r in responses] == [202] * 20
    assert len({r.json()["run"]["id"] for r in responses}) == 1
    assert len({r.json()["message"]["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    chats = (await gateway_client.get("/api/chats", headers=auth(key))).json()["items"]
    assert len(chats) == 1
    messages = await gateway_client.get(
        f"/api/chats/{chats[0]['id']}/messages", headers=auth(key)
    )
    user_messages = [m for m in messages.json()["items"] if m["role"] == "user"]
    assert len(user_messages) == 1


async def test_follow_up_key_replays_in_chat(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    chat_id = (await post_chat(gateway_client, key, "start")).json()["chat_id"]
    headers = {"Idempotency-Key": f"follow-{uuid.uuid4()}"}

    first = await post_chat(
        gateway_client, key, "again", chat_id=chat_id, headers=headers
    )
    second = await post_chat(
        gateway_client, key, "again", chat_id=chat_id, headers=headers
    )

    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    messages = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(key)
    )
    contents = [m["content"] for m in messages.json()["items"] if m["role"] == "user"]
    assert contents == ["start", "again"]
