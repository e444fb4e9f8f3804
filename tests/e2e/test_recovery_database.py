"""Database outage end to end: POST /api/chat fails fast with 503, nothing is lost.

chat_service reaches its PostgreSQL database through a TCP proxy that the
test takes down (every connection reset, new ones refused) and brings back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from bulkhead.devstack import Stack
from tests.support.api import auth, post_chat, wait_for_run
from tests.support.eventually import assert_eventually
from tests.support.fake_models import FakeModelThread
from tests.support.model_stacks import FAST_RETRIES
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

# chat_service's connect timeout is 3 s and the gateway's gRPC deadline 5 s;
# a 503 must come well before a client would give up.
FAIL_FAST_S = 5.5


@pytest.fixture(scope="module")
def postgres_proxy(postgres_admin_url: str) -> Iterator[TcpProxy]:
    url = make_url(postgres_admin_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def proxied_stack(
    postgres_proxy: TcpProxy,
    create_postgres_database: Callable[[], str],
    stack_factory: Callable[..., Stack],
    fake_models_file: Path,
) -> Iterator[Stack]:
    direct_url = create_postgres_database()
    proxied_url = (
        make_url(direct_url)
        .set(host="127.0.0.1", port=postgres_proxy.port)
        .render_as_string(hide_password=False)
    )
    stack = stack_factory(
        database=proxied_url,
        models_file=fake_models_file,
        env={"BULKHEAD_DEV_MODE": "true", **FAST_RETRIES},
    )
    yield stack
    stack.stop()


async def test_recovery_database_outage_fails_fast_with_503(
    proxied_stack: Stack, postgres_proxy: TcpProxy, fake_model: FakeModelThread
) -> None:
    fake_model.reset(solo={"reply": "stored answer"})
    key = proxied_stack.create_api_key(f"user-{uuid.uuid4().hex[:12]}")
    async with httpx.AsyncClient(
        base_url=proxied_stack.gateway_url, timeout=15.0
    ) as client:
        before = await post_chat(client, key, "before the outage", model="solo")
        assert before.status_code == 202, before.text
        chat_id = before.json()["chat_id"]
        await wait_for_run(client, key, before.json()["run"]["id"])

        await asyncio.to_thread(postgres_proxy.down)
        try:
            for number in range(3):
                started = time.monotonic()
                during = await post_chat(
                    client,
                    key,
                    "during the outage",
                    model="solo",
                    chat_id=chat_id,
                    headers={"Idempotency-Key": f"outage-{number}"},
                )
                elapsed = time.monotonic() - started
                assert during.status_code == 503, during.text
                assert elapsed < FAIL_FAST_S
                assert during.headers["content-type"].startswith(
                    "application/problem+json"
                )
                assert during.headers["retry-after"] == "1"
                assert during.json()["status"] == 503
        finally:
            await asyncio.to_thread(postgres_proxy.up)

        async def accepted() -> httpx.Response:
            response = await post_chat(
                client,
                key,
                "during the outage",
                model="solo",
                chat_id=chat_id,
                headers={"Idempotency-Key": "outage-0"},
            )
            assert response.status_code == 202, response.text
            return response

        after = await assert_eventually(accepted, timeout=20.0, interval=0.5)
        # The key was never stored during the outage, so this is a new message.
        assert "idempotent-replayed" not in after.headers
        run = await wait_for_run(client, key, after.json()["run"]["id"], 30.0)
        assert run["status"] == "completed", run
        messages = await client.get(f"/api/chats/{chat_id}/messages", headers=auth(key))
        users = [m["content"] for m in messages.json()["items"] if m["role"] == "user"]
        assert users == ["before the outage", "during the outage"]
