"""Cancel end to end: the model call stops, the partial answer stays, watchers end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.support.api import (
    auth,
    post_chat,
    read_events,
    wait_for_run,
)
from tests.support.eventually import assert_eventually
from tests.support.fake_models import FakeModelThread

LONG_REPLY = " ".join(f"word{i}" for i in range(60))
# 60 chunks, 0.2 s apart: the call lasts 12 s unless it is cancelled.
SLOW = {"reply": LONG_REPLY, "chunk_delay_s": 0.2}
# The executor must close the model connection within this many seconds.
CANCEL_CLOSE_S = 2.0


async def _get_run(client: httpx.AsyncClient, key: str, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{run_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


async def _wait_for_text(
    client: httpx.AsyncClient, key: str, run_id: str
) -> dict[str, Any]:
    async def has_text() -> dict[str, Any]:
        run = await _get_run(client, key, run_id)
        assert run["assistant_message"] is not None
        assert run["assistant_message"]["content"], "no text streamed yet"
        return run

    return await assert_eventually(has_text, timeout=20.0, interval=0.1)


async def test_cancel_stops_model_call_and_keeps_partial_answer(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(slow=SLOW)
    posted = await post_chat(
        model_client, model_key, "tell me a long story", model="slow"
    )
    assert posted.status_code == 202, posted.text
    run_id = posted.json()["run"]["id"]
    await _wait_for_text(model_client, model_key, run_id)
    watchers = [
        asyncio.create_task(read_events(model_client, model_key, run_id))
        for _ in range(2)
    ]
    await asyncio.sleep(0.3)  # both watchers are connected

    cancelled_at = time.time()
    cancel = await model_client.post(
        f"/api/runs/{run_id}/cancel", headers=auth(model_key)
    )

    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["status"] == "cancelled"
    [call] = fake_model.calls("slow")

    def closed() -> None:
        [current] = fake_model.calls("slow")
        assert current.client_closed, current.outcome

    await assert_eventually(closed, timeout=CANCEL_CLOSE_S + 1.0, interval=0.05)
    [call] = fake_model.calls("slow")
    assert call.ended is not None
    assert call.ended - cancelled_at <= CANCEL_CLOSE_S
    for watcher in watchers:
        response, events = await asyncio.wait_for(watcher, timeout=10.0)
        assert response.status_code == 200
        types = [e.event for e in events]
        assert types.count("run.cancelled") == 1, types
        assert types[-1] == "run.cancelled"
    run = await _get_run(model_client, model_key, run_id)
    partial = run["assistant_message"]["content"]
    assert run["status"] == "cancelled"
    assert run["assistant_message"]["status"] == "cancelled"
    assert partial
    assert LONG_REPLY.startswith(partial)
    assert len(partial) < len(LONG_REPLY)

    again = await model_client.post(
        f"/api/runs/{run_id}/cancel", headers=auth(model_key)
    )
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "cancelled"
    # No retry or redelivery brings the run back.
    await asyncio.sleep(2.0)
    later = await _get_run(model_client, model_key, run_id)
    assert later["status"] == "cancelled"
    assert later["assistant_message"]["content"] == partial
    assert len(fake_model.calls("slow")) == 1


async def test_cancel_finished_run_conflicts(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(solo={"reply": "done"})
    posted = await post_chat(model_client, model_key, "hi", model="solo")
    run = await wait_for_run(model_client, model_key, posted.json()["run"]["id"])
    assert run["status"] == "completed"

    cancel = await model_client.post(
        f"/api/runs/{run['id']}/cancel", headers=auth(model_key)
    )

    assert cancel.status_code == 409, cancel.text
    assert cancel.headers["content-type"].startswith("application/problem+json")
    assert (await _get_run(model_client, model_key, run["id"]))["status"] == "completed"


async def test_cancel_before_claim_never_calls_model(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    # The second run of a chat waits, unclaimed, while the first one streams.
    fake_model.reset(slow={"reply": "first answer", "chunk_delay_s": 0.5})
    first = await post_chat(model_client, model_key, "first", model="slow")
    chat_id = first.json()["chat_id"]
    second = await post_chat(
        model_client, model_key, "second", model="solo", chat_id=chat_id
    )
    assert second.status_code == 202, second.text
    second_id = second.json()["run"]["id"]

    cancel = await model_client.post(
        f"/api/runs/{second_id}/cancel", headers=auth(model_key)
    )

    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["status"] == "cancelled"
    done = await wait_for_run(model_client, model_key, first.json()["run"]["id"])
    assert done["status"] == "completed"
    await asyncio.sleep(1.0)  # time in which a wrongly dispatched run would start
    assert fake_model.calls("solo") == []
    run = await _get_run(model_client, model_key, second_id)
    assert run["status"] == "cancelled"
    assert run["attempts"] == []
    _, events = await read_events(model_client, model_key, second_id)
    assert [e.event for e in events] == ["run.cancelled"]

    # A cancelled run can be retried: a new run answers the same message.
    fake_model.configure("solo", reply="second answer")
    retried = await model_client.post(
        f"/api/runs/{second_id}/retry", headers=auth(model_key)
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["user_message_id"] == run["user_message_id"]
    new_run = await wait_for_run(model_client, model_key, retried.json()["id"])
    assert new_run["status"] == "completed"
    assert new_run["assistant_message"]["content"] == "second answer"


async def test_cancel_wins_over_pending_retry(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    # The first call fails with Retry-After: 3, so the retry waits 3 s.
    fake_model.reset(solo={"fail_status": 503, "fail_times": -1, "retry_after": "3"})
    posted = await post_chat(model_client, model_key, "cancel me", model="solo")
    run_id = posted.json()["run"]["id"]

    def failed_once() -> None:
        assert len(fake_model.calls("solo")) == 1

    await assert_eventually(failed_once, timeout=20.0, interval=0.05)

    cancel = await model_client.post(
        f"/api/runs/{run_id}/cancel", headers=auth(model_key)
    )

    assert cancel.status_code == 202, cancel.text
    await asyncio.sleep(4.0)  # past the moment the retry was due
    assert len(fake_model.calls("solo")) == 1
    run = await _get_run(model_client, model_key, run_id)
    assert run["status"] == "cancelled"
    _, events = await read_events(model_client, model_key, run_id)
    assert [e.event for e in events].count("run.cancelled") == 1
