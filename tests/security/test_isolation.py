"""Per-user isolation: every route and user RPC, as another user and as nobody."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import httpx

from bulkhead.devstack import Stack
from tests.security.grpc_calls import gateway_calls, metadata, status_of
from tests.support.api import auth, post_chat, wait_for_run


async def _snapshot(
    client: httpx.AsyncClient, key: str, chat_id: str, run_id: str
) -> dict[str, Any]:
    run = await client.get(f"/api/runs/{run_id}", headers=auth(key))
    messages = await client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(key), params={"limit": 100}
    )
    chats = await client.get("/api/chats", headers=auth(key))
    assert run.status_code == messages.status_code == chats.status_code == 200
    return {"run": run.json(), "messages": messages.json(), "chats": chats.json()}


def _intrusions(chat_id: str, run_id: str, last_event_id: int) -> list[dict[str, Any]]:
    return [
        {"method": "GET", "url": f"/api/runs/{run_id}"},
        {"method": "POST", "url": f"/api/runs/{run_id}/cancel"},
        {"method": "POST", "url": f"/api/runs/{run_id}/retry"},
        {"method": "GET", "url": f"/api/runs/{run_id}/events"},
        {
            "method": "GET",
            "url": f"/api/runs/{run_id}/events",
            "headers": {"Last-Event-ID": str(last_event_id)},
        },
        {"method": "GET", "url": f"/api/runs/{run_id}/events?last_event_id=1"},
        {"method": "GET", "url": f"/api/chats/{chat_id}/messages"},
        {
            "method": "POST",
            "url": "/api/chat",
            "json": {"content": "let me in", "chat_id": chat_id},
        },
        {
            "method": "POST",
            "url": "/api/chat",
            "json": {
                "content": "interrupt",
                "chat_id": chat_id,
                "on_busy": "interrupt",
            },
        },
    ]


async def test_rest_routes_isolated(
    gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    owner, intruder = api_key(), api_key()
    posted = await post_chat(gateway_client, owner, "my private message")
    chat_id, run_id = posted.json()["chat_id"], posted.json()["run"]["id"]
    run = await wait_for_run(gateway_client, owner, run_id)
    # The intruder's own run, to resume "its" stream with the owner's ids.
    own = await post_chat(gateway_client, intruder, "mine")
    await wait_for_run(gateway_client, intruder, own.json()["run"]["id"])
    before = await _snapshot(gateway_client, owner, chat_id, run_id)

    for request in _intrusions(chat_id, run_id, run["last_event_id"]):
        extra = request.pop("headers", {})
        as_intruder = await gateway_client.request(
            **request, headers=auth(intruder, **extra)
        )
        assert as_intruder.status_code == 404, (request, as_intruder.text)
        assert "private" not in as_intruder.text
        as_nobody = await gateway_client.request(**request, headers=extra)
        assert as_nobody.status_code == 401, (request, as_nobody.text)
        forged = await gateway_client.request(
            **request, headers=auth("bk_" + uuid.uuid4().hex, **extra)
        )
        assert forged.status_code == 401, request

    listed = await gateway_client.get("/api/chats", headers=auth(intruder))
    assert chat_id not in listed.text
    assert await _snapshot(gateway_client, owner, chat_id, run_id) == before


async def test_user_rpcs_isolated(
    stack: Stack, gateway_client: httpx.AsyncClient, api_key: Callable[..., str]
) -> None:
    owner = api_key()
    posted = await post_chat(gateway_client, owner, "my private message")
    chat_id, run_id = posted.json()["chat_id"], posted.json()["run"]["id"]
    await wait_for_run(gateway_client, owner, run_id)
    before = await _snapshot(gateway_client, owner, chat_id, run_id)

    token = stack.gateway_service_token
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        calls = gateway_calls(channel, run_id=run_id, chat_id=chat_id)
        calls.pop("AuthenticateApiKey")
        for name, call in calls.items():
            if name == "ListChats":
                response = call(metadata(token, user_id="intruder"))
                assert chat_id not in str(response), name
                continue
            code = status_of(call, metadata(token, user_id="intruder"))
            assert code == grpc.StatusCode.NOT_FOUND, name
            code = status_of(call, metadata(token))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name

    assert await _snapshot(gateway_client, owner, chat_id, run_id) == before
