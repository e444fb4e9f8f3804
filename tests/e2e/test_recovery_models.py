"""Model failures end to end: retries, back-off, fallback, reset and retry of a run.

The stack's executor calls the fake model server (tests.support.fake_openai)
through the routes of tests.support.model_stacks: "flaky" (2 retries, falls
back to "backup") and "solo" (1 retry, no fallback).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.api import (
    answer_from,
    auth,
    post_chat,
    read_events,
    wait_for_run,
)
from tests.support.fake_models import FakeModelThread
from tests.support.model_stacks import MAX_OUTPUT_CHARS

REPLY = "one two three four five six"


async def _answer(
    client: httpx.AsyncClient, key: str, model: str, content: str = "hello"
) -> dict[str, Any]:
    posted = await post_chat(client, key, content, model=model)
    assert posted.status_code == 202, posted.text
    return await wait_for_run(client, key, posted.json()["run"]["id"], timeout=30.0)


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_model_retries_server_errors(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(flaky={"reply": REPLY, "fail_status": 503, "fail_times": 2})

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["model_used"] == "flaky"
    assert run["assistant_message"]["content"] == REPLY
    assert len(fake_model.calls("flaky")) == 3  # no hidden retries in the SDK
    assert fake_model.calls("backup") == []
    attempts = run["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "completed"]
    assert [a["error_class"] for a in attempts[:2]] == ["http_503", "http_503"]
    for attempt in attempts:
        assert attempt["model"] == "flaky"
        assert attempt["provider"] == "openai"
        assert _when(attempt["started_at"]) <= _when(attempt["ended_at"])
    assert attempts[2]["usage"]["completion_tokens"] == len(REPLY.split())
    assert run["usage"]["completion_tokens"] == len(REPLY.split())


async def test_model_retry_honours_retry_after(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        flaky={"reply": REPLY, "fail_status": 429, "fail_times": 1, "retry_after": "1"}
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    first, second = fake_model.calls("flaky")
    assert first.status == 429
    assert first.ended is not None
    # The executor's own back-off is at most 0.2 s here; the server asked for 1 s.
    assert second.started - first.ended >= 0.9


async def test_model_falls_back_after_retries(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        flaky={"fail_status": 500, "fail_times": -1},
        backup={"reply": REPLY},
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["model_used"] == "backup"
    assert run["assistant_message"]["content"] == REPLY
    assert len(fake_model.calls("flaky")) == 3
    assert len(fake_model.calls("backup")) == 1
    assert [a["model"] for a in run["attempts"]] == ["flaky"] * 3 + ["backup"]
    _, events = await read_events(model_client, model_key, run["id"])
    types = [e.event for e in events]
    assert types.count("attempt.failed") == 3
    fallbacks = [e.data for e in events if e.event == "model.fallback"]
    assert len(fallbacks) == 1
    assert fallbacks[0]["from_model"] == "flaky"
    assert fallbacks[0]["to_model"] == "backup"
    assert types[-1] == "run.completed"


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (400, None, "http_400"),
        (401, None, "http_401"),
        (403, None, "http_403"),
        (404, None, "http_404"),
        (400, "context_length_exceeded", "context_length_exceeded"),
    ],
)
async def test_model_non_retryable_error_falls_back_at_once(
    model_client: httpx.AsyncClient,
    model_key: str,
    fake_model: FakeModelThread,
    status: int,
    code: str | None,
    error_class: str,
) -> None:
    fake_model.reset(
        flaky={"fail_status": status, "fail_times": -1, "fail_code": code},
        backup={"reply": REPLY},
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["model_used"] == "backup"
    assert len(fake_model.calls("flaky")) == 1
    assert run["attempts"][0]["error_class"] == error_class


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        ({"fail_status": 503, "fail_times": -1}, "model_unavailable"),
        ({"fail_status": 429, "fail_times": -1}, "rate_limited"),
        ({"stall_after_chunks": 0}, "model_timeout"),
    ],
)
async def test_model_chain_exhausted_fails_run(
    model_client: httpx.AsyncClient,
    model_key: str,
    fake_model: FakeModelThread,
    behaviour: dict[str, Any],
    code: str,
) -> None:
    fake_model.reset(solo=behaviour)
    content = f"keep this message ({code})"

    run = await _answer(model_client, model_key, "solo", content)

    assert run["status"] == "failed", run
    assert run["error"]["code"] == code
    assert "all 1 models failed" in run["error"]["message"]
    assert len(run["attempts"]) == 2  # one call and one retry
    assert all(a["outcome"] == "failed" for a in run["attempts"])
    messages = await model_client.get(
        f"/api/chats/{run['chat_id']}/messages", headers=auth(model_key)
    )
    assert messages.status_code == 200
    user = [m for m in messages.json()["items"] if m["role"] == "user"]
    assert [m["content"] for m in user] == [content]
    _, events = await read_events(model_client, model_key, run["id"])
    assert events[-1].event == "run.failed"
    assert events[-1].data["error"]["code"] == code


async def test_model_dropped_stream_resets_answer(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        flaky={"reply": REPLY, "drop_after_chunks": 3, "drop_times": 1},
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    assert [c.outcome for c in fake_model.calls("flaky")] == ["dropped", "completed"]
    _, events = await read_events(model_client, model_key, run["id"])
    types = [e.event for e in events]
    # Text of the broken call, then its failure, a reset, and the full answer.
    assert types.index("message.delta") < types.index("attempt.failed")
    assert types.index("attempt.failed") < types.index("message.reset")
    assert answer_from(events) == REPLY
    resumed = events[types.index("message.reset") - 1].id
    _, tail = await read_events(model_client, model_key, run["id"], resumed)
    assert [e.id for e in tail] == [e.id for e in events if e.id > resumed]


async def test_model_idle_stream_times_out_and_retries(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        flaky={"reply": REPLY, "stall_after_chunks": 2, "stall_times": 1},
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    assert run["attempts"][0]["error_class"] == "idle_timeout"
    stalled = fake_model.calls("flaky")[0]
    assert stalled.client_closed  # the executor closed the silent connection
    _, events = await read_events(model_client, model_key, run["id"])
    assert "message.reset" in [e.event for e in events]
    assert answer_from(events) == REPLY


async def test_model_event_that_is_not_json_is_retried(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(
        flaky={"reply": REPLY, "garble_after_chunks": 2, "garble_times": 1},
    )

    run = await _answer(model_client, model_key, "flaky")

    assert run["status"] == "completed", run
    assert run["model_used"] == "flaky"
    assert run["assistant_message"]["content"] == REPLY
    assert [c.outcome for c in fake_model.calls("flaky")] == ["garbled", "completed"]
    attempts = run["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "completed"]
    assert attempts[0]["error_class"] == "invalid_response"
    _, events = await read_events(model_client, model_key, run["id"])
    types = [e.event for e in events]
    assert types.index("attempt.failed") < types.index("message.reset")
    assert answer_from(events) == REPLY


async def test_model_answer_is_cut_at_output_limit(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    # A server that ignores max_tokens: 40 chunks of 500 characters.
    reply = "".join(f"{i:04d}" + "x" * 496 for i in range(40))
    fake_model.reset(solo={"reply": reply, "chunks": 40, "chunk_delay_s": 0.05})

    run = await _answer(model_client, model_key, "solo")

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == reply[:MAX_OUTPUT_CHARS]
    [attempt] = run["attempts"]
    assert attempt["outcome"] == "completed"
    assert attempt["error_class"] == "output_limit"
    # The executor closed the call at the limit instead of reading on.
    [call] = fake_model.calls("solo")
    assert call.chunks_sent < 40
    _, events = await read_events(model_client, model_key, run["id"])
    assert answer_from(events) == reply[:MAX_OUTPUT_CHARS]


async def test_events_after_id_not_yet_sent_is_422(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 2.0})
    posted = await post_chat(model_client, model_key, "slowly", model="slow")
    run_id = posted.json()["run"]["id"]
    path = f"/api/runs/{run_id}/events"
    run = (
        await model_client.get(f"/api/runs/{run_id}", headers=auth(model_key))
    ).json()
    assert run["status"] not in ("completed", "failed", "cancelled")
    beyond = run["last_event_id"] + 5

    by_header = await model_client.get(
        path, headers={**auth(model_key), "Last-Event-ID": str(beyond)}
    )
    by_query = await model_client.get(
        f"{path}?last_event_id={beyond}", headers=auth(model_key)
    )

    for response, field in ((by_header, "Last-Event-ID"), (by_query, "last_event_id")):
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
    cancel = await model_client.post(
        f"/api/runs/{run_id}/cancel", headers=auth(model_key)
    )
    assert cancel.status_code == 202


async def test_wait_that_ends_first_returns_current_run(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 2.0})

    posted = await post_chat(
        model_client, model_key, "slowly", model="slow", headers={"Prefer": "wait=2"}
    )

    assert posted.status_code == 202, posted.text
    assert posted.headers["preference-applied"] == "wait=2"
    run = posted.json()["run"]
    # The run as the wait left it, not as it was accepted.
    assert run["status"] == "running"
    assert run["assistant_message"]["content"].startswith("one")
    cancel = await model_client.post(
        f"/api/runs/{run['id']}/cancel", headers=auth(model_key)
    )
    assert cancel.status_code == 202


async def test_retry_endpoint_starts_new_run(
    model_client: httpx.AsyncClient, model_key: str, fake_model: FakeModelThread
) -> None:
    fake_model.reset(solo={"fail_status": 503, "fail_times": 2, "reply": REPLY})
    failed = await _answer(model_client, model_key, "solo")
    assert failed["status"] == "failed", failed

    retried = await model_client.post(
        f"/api/runs/{failed['id']}/retry", headers=auth(model_key)
    )

    assert retried.status_code == 202, retried.text
    new_run = retried.json()
    assert new_run["id"] != failed["id"]
    assert new_run["user_message_id"] == failed["user_message_id"]
    done = await wait_for_run(model_client, model_key, new_run["id"], timeout=30.0)
    assert done["status"] == "completed", done
    assert done["assistant_message"]["content"] == REPLY
    again = await model_client.post(
        f"/api/runs/{failed['id']}/retry", headers=auth(model_key)
    )
    assert again.status_code == 409, again.text
    assert again.json()["newer_run_id"] == new_run["id"]
    completed = await model_client.post(
        f"/api/runs/{done['id']}/retry", headers=auth(model_key)
    )
    assert completed.status_code == 409, completed.text
    assert completed.headers["content-type"].startswith("application/problem+json")
    assert "newer_run_id" not in completed.json()
