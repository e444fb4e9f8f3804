"""Per-chat order end to end: one run at a time, in message order, and on_busy."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import httpx
from sqlalchemy import select

from bulkhead.devstack import Stack
from chat_service.store.database import Database
from chat_service.store.tables import runs
from tests.support.api import auth, post_chat, wait_for_run
from tests.support.eventually import assert_eventually
from tests.support.fake_models import FakeModelThread

SLOW_ANSWER = "the slow answer"
# Three chunks, 0.4 s apart: a call lasts about a second.
SLOW = {"reply": SLOW_ANSWER, "chunk_delay_s": 0.4, "first_chunk_delay_s": 0.2}


async def test_order_runs_of_chat_one_at_a_time(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(slow=SLOW)
    first = await post_chat(model_client, model_key, "message 1", model="slow")
    chat_id = first.json()["chat_id"]
    posted = [first]
    for number in (2, 3):
        posted.append(
            await post_chat(
                model_client,
                model_key,
                f"message {number}",
                model="slow",
                chat_id=chat_id,
            )
        )
    assert [p.status_code for p in posted] == [202, 202, 202]

    runs = [
        await wait_for_run(model_client, model_key, p.json()["run"]["id"], 30.0)
        for p in posted
    ]

    assert [r["status"] for r in runs] == ["completed"] * 3
    calls = fake_model.calls("slow")
    assert len(calls) == 3
    for earlier, later in itertools.pairwise(calls):
        assert earlier.ended is not None
        assert later.started >= earlier.ended  # never two calls of a chat at once
    contexts = [
        [(m["role"], m["content"]) for m in call.request["messages"]] for call in calls
    ]
    assert contexts[0] == [("user", "message 1")]
    assert contexts[1] == [
        ("user", "message 1"),
        ("assistant", SLOW_ANSWER),
        ("user", "message 2"),
    ]
    assert contexts[2][-3:] == [
        ("user", "message 2"),
        ("assistant", SLOW_ANSWER),
        ("user", "message 3"),
    ]
    messages = await model_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(model_key)
    )
    roles = [(m["role"], m["content"]) for m in messages.json()["items"]]
    assert roles == [
        ("user", "message 1"),
        ("assistant", SLOW_ANSWER),
        ("user", "message 2"),
        ("assistant", SLOW_ANSWER),
        ("user", "message 3"),
        ("assistant", SLOW_ANSWER),
    ]


async def test_order_on_busy_reject_conflicts(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(slow=SLOW)
    first = await post_chat(model_client, model_key, "first", model="slow")
    chat_id = first.json()["chat_id"]

    rejected = await post_chat(
        model_client, model_key, "second", chat_id=chat_id, on_busy="reject"
    )

    assert rejected.status_code == 409, rejected.text
    assert rejected.headers["content-type"].startswith("application/problem+json")
    assert rejected.json()["active_run_id"] == first.json()["run"]["id"]
    await wait_for_run(model_client, model_key, first.json()["run"]["id"])
    accepted = await post_chat(
        model_client, model_key, "second", chat_id=chat_id, on_busy="reject"
    )
    assert accepted.status_code == 202, accepted.text
    messages = await model_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(model_key)
    )
    users = [m["content"] for m in messages.json()["items"] if m["role"] == "user"]
    assert users == ["first", "second"]  # the rejected message was not stored


async def test_order_on_busy_interrupt_cancels_active_run(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        slow={"reply": " ".join(["word"] * 50), "chunk_delay_s": 0.2},
        solo={"reply": "the new answer"},
    )
    first = await post_chat(model_client, model_key, "first", model="slow")
    chat_id = first.json()["chat_id"]

    def streaming() -> None:
        calls = fake_model.calls("slow")
        assert calls and calls[0].chunks_sent > 0

    await assert_eventually(streaming, timeout=20.0)

    second = await post_chat(
        model_client,
        model_key,
        "second",
        model="solo",
        chat_id=chat_id,
        on_busy="interrupt",
    )

    assert second.status_code == 202, second.text
    first_run = await wait_for_run(model_client, model_key, first.json()["run"]["id"])
    second_run = await wait_for_run(model_client, model_key, second.json()["run"]["id"])
    assert first_run["status"] == "cancelled"
    assert second_run["status"] == "completed"
    assert second_run["assistant_message"]["content"] == "the new answer"

    def first_call_closed() -> None:
        [call] = fake_model.calls("slow")
        assert call.client_closed

    await assert_eventually(first_call_closed, timeout=3.0)
    [solo_call] = fake_model.calls("solo")
    [slow_call] = fake_model.calls("slow")
    assert slow_call.ended is not None
    assert solo_call.started >= slow_call.ended - 0.5
    await asyncio.sleep(0)


async def test_order_interrupt_cancels_waiting_runs_undispatched(
    model_stack: Stack,
    model_client: httpx.AsyncClient,
    model_key: str,
    fake_model: FakeModelThread,
) -> None:
    fake_model.reset(
        slow={"reply": " ".join(["word"] * 50), "chunk_delay_s": 0.2},
        solo={"reply": "the new answer"},
    )
    first = await post_chat(model_client, model_key, "first", model="slow")
    chat_id = first.json()["chat_id"]
    waiting = [
        await post_chat(
            model_client, model_key, f"waiting {n}", model="solo", chat_id=chat_id
        )
        for n in range(3)
    ]
    assert [w.status_code for w in waiting] == [202, 202, 202]

    interrupt = await post_chat(
        model_client,
        model_key,
        "now",
        model="solo",
        chat_id=chat_id,
        on_busy="interrupt",
    )

    assert interrupt.status_code == 202, interrupt.text
    final = await wait_for_run(model_client, model_key, interrupt.json()["run"]["id"])
    assert final["status"] == "completed"
    for posted in waiting:
        run = await wait_for_run(model_client, model_key, posted.json()["run"]["id"])
        assert run["status"] == "cancelled"
    # A waiting run is cancelled without being dispatched first, so no task
    # is published for it and the model is never called for it.
    db = Database(model_stack.config.database_url, pool_size=1)
    try:
        async with db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(runs.c.id, runs.c.dispatched).where(
                        runs.c.id.in_(
                            [uuid.UUID(w.json()["run"]["id"]) for w in waiting]
                        )
                    )
                )
            ).all()
    finally:
        await db.dispose()
    assert len(rows) == 3
    assert [row.dispatched for row in rows] == [False, False, False]
    assert len(fake_model.calls("solo")) == 1
