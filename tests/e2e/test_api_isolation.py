"""Another user's chats and runs do not exist for a caller: always 404, never listed."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api import auth, post_chat, wait_for_run


@pytest.fixture
async def owned(gateway_client: httpx.AsyncClient, api_key) -> dict:
    """A chat with one finished run, owned by a user other than the caller."""
    owner = api_key()
    posted = (await post_chat(gateway_client, owner, "private words")).json()
    run = await wait_for_run(gateway_client, owner, posted["run"]["id"])
    return {"owner": owner, "chat_id": posted["chat_id"], "run": run}


async def test_other_users_resources_are_404(
    gateway_client: httpx.AsyncClient, api_key, owned: dict
) -> None:
    stranger = api_key()
    run_id, chat_id = owned["run"]["id"], owned["chat_id"]
    requests = [
        ("GET", f"/api/runs/{run_id}", None),
        ("GET", f"/api/runs/{run_id}/events", None),
        ("POST", f"/api/runs/{run_id}/cancel", None),
        ("POST", f"/api/runs/{run_id}/retry", None),
        ("GET", f"/api/chats/{chat_id}/messages", None),
        ("POST", "/api/chat", {"content": "intrude", "chat_id": chat_id}),
    ]

    for method, path, body in requests:
        response = await gateway_client.request(
            method, path, json=body, headers=auth(stranger, **{"Last-Event-ID": "1"})
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_other_users_chats_not_listed(
    gateway_client: httpx.AsyncClient, api_key, owned: dict
) -> None:
    stranger = api_key()

    response = await gateway_client.get("/api/chats", headers=auth(stranger))

    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_intrusion_changes_nothing(
    gateway_client: httpx.AsyncClient, api_key, owned: dict
) -> None:
    stranger = api_key()
    owner, chat_id = owned["owner"], owned["chat_id"]
    before = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(owner)
    )

    await post_chat(gateway_client, stranger, "intrude", chat_id=chat_id)
    await gateway_client.post(
        f"/api/runs/{owned['run']['id']}/retry", headers=auth(stranger)
    )

    after = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(owner)
    )
    assert after.json() == before.json()
    run = await gateway_client.get(
        f"/api/runs/{owned['run']['id']}", headers=auth(owner)
    )
    assert run.json() == owned["run"]
