"""A hung model route and a second task for one run, end to end.

The stack of this module runs its executor with 4 run slots, of which one
model route may take 2 (``BULKHEAD_EXECUTOR_ROUTE_CONCURRENCY``). Its routes
call the session's fake model server (tests.support.fake_models): "hung"
waits a few seconds before it sends the response headers, "slow" streams its
reply word by word, and "bulkhead-echo" is the built-in model, which makes
no network call.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from bulkhead.devstack import Stack
from bulkhead.messaging import Subjects
from bulkhead.proto.executor.v1 import executor_pb2
from tests.support.api import answer_from, post_chat, read_events, wait_for_run
from tests.support.eventually import assert_eventually
from tests.support.fake_models import FakeModelThread, write_models_file
from tests.support.fake_openai import CallRecord
from tests.support.model_stacks import DATABASE_KINDS

EXECUTOR_SLOTS = 4
ROUTE_SLOTS = 2
HUNG_RUNS = 6
HANG_S = 3.0
REPLY = " ".join(f"w{i}" for i in range(20))
ROUTES: dict[str, dict[str, Any]] = {
    # Calls wait HANG_S for the response headers, well inside these limits,
    # so that each one ends with the full reply.
    "hung": {
        "max_retries": 0,
        "connect_timeout_s": 2.0,
        "first_token_timeout_s": 60.0,
        "idle_timeout_s": 10.0,
        "timeout_s": 90.0,
    },
    "slow": {"max_retries": 0, "idle_timeout_s": 10.0, "timeout_s": 60.0},
    "bulkhead-echo": {"provider": "builtin"},
}
ROUTE_ENV = {
    "BULKHEAD_DEV_MODE": "true",
    # Far beyond any test here, so that only the executor, never the sweeper,
    # can publish a task again.
    "BULKHEAD_REDISPATCH_AFTER_S": "600",
}
EXECUTOR_ENV = {
    "BULKHEAD_EXECUTOR_CONCURRENCY": str(EXECUTOR_SLOTS),
    "BULKHEAD_EXECUTOR_ROUTE_CONCURRENCY": str(ROUTE_SLOTS),
}


@pytest.fixture(scope="module")
def route_models_file(
    fake_model: FakeModelThread, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("route-models") / "models.toml"
    return write_models_file(path, fake_model.base_url, ROUTES, "bulkhead-echo")


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def route_stack(
    request: pytest.FixtureRequest,
    stack_factory: Callable[..., Stack],
    route_models_file: Path,
) -> Iterator[Stack]:
    started = stack_factory(
        database=request.param,
        models_file=route_models_file,
        env=ROUTE_ENV,
        service_env={"executor_service": EXECUTOR_ENV},
    )
    yield started
    started.stop()


@pytest.fixture
def route_key(route_stack: Stack) -> str:
    return route_stack.create_api_key(f"user-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def route_client(route_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=route_stack.gateway_url, timeout=15.0
    ) as client:
        yield client


async def _post(client: httpx.AsyncClient, key: str, content: str, model: str) -> str:
    posted = await post_chat(client, key, content, model=model)
    assert posted.status_code == 202, posted.text
    return str(posted.json()["run"]["id"])


def _executor_log(stack: Stack, event: str) -> list[dict[str, Any]]:
    records = []
    for line in stack.read_log("executor_service").splitlines():
        if event in line:
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


def _max_concurrent(calls: list[CallRecord]) -> int:
    """The largest number of these calls that were in progress together."""
    changes = sorted(
        [(call.started, 1) for call in calls]
        + [(call.ended, -1) for call in calls if call.ended is not None]
    )
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


def _user_content(call: CallRecord) -> str:
    return str(call.request["messages"][-1]["content"])


async def test_hung_route_leaves_slots_to_other_routes(
    route_stack: Stack,
    route_client: httpx.AsyncClient,
    route_key: str,
    fake_model: FakeModelThread,
) -> None:
    fake_model.reset(hung={"reply": REPLY, "headers_delay_s": HANG_S})
    contents = [f"hang {number}" for number in range(HUNG_RUNS)]
    hung_runs = [
        await _post(route_client, route_key, content, "hung") for content in contents
    ]

    def executor_full() -> None:
        # Every slot the hung route may take is taken, and the executor has
        # seen as many hung tasks as it has slots.
        running = [c for c in fake_model.calls("hung") if c.ended is None]
        assert len(running) >= ROUTE_SLOTS, running
        put_back = {
            record["run_id"]
            for record in _executor_log(
                route_stack, "model route at its limit, task put back"
            )
        }
        assert len(running) + len(put_back) >= EXECUTOR_SLOTS, put_back

    await assert_eventually(executor_full, timeout=20.0, interval=0.1)
    echo_id = await _post(route_client, route_key, "still there?", "bulkhead-echo")
    echo = await wait_for_run(route_client, route_key, echo_id, timeout=20.0)

    assert echo["status"] == "completed", echo
    assert echo["assistant_message"]["content"] == "You said: still there?"
    # Nak delays of up to 38 s, and the hang itself.
    done = [
        await wait_for_run(route_client, route_key, run_id, timeout=60.0)
        for run_id in hung_runs
    ]
    calls = fake_model.calls("hung")
    assert all(call.ended is not None for call in calls), calls
    first_end = min(call.ended for call in calls if call.ended is not None)
    echo_finished = datetime.fromisoformat(echo["finished_at"]).timestamp()
    assert echo_finished < first_end, (echo_finished, first_end)
    assert _max_concurrent(calls) == ROUTE_SLOTS
    for run in done:
        assert run["status"] == "completed", run
        assert run["assistant_message"]["content"] == REPLY
        assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    # One model call per run: no task was served twice.
    assert sorted(_user_content(call) for call in calls) == sorted(contents)
    assert [call.outcome for call in calls] == ["completed"] * HUNG_RUNS


async def test_duplicate_executor_task_dropped(
    route_stack: Stack,
    route_client: httpx.AsyncClient,
    route_key: str,
    fake_model: FakeModelThread,
) -> None:
    # 20 words 0.2 s apart: about 4 s of streaming.
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 0.2})
    run_id = await _post(route_client, route_key, "one call only", "slow")

    def streaming() -> None:
        calls = fake_model.calls("slow")
        assert calls, "no call yet"
        assert calls[0].chunks_sent >= 3, calls

    await assert_eventually(streaming, timeout=20.0)
    # As the sweeper does for a run that it considers unclaimed.
    task = executor_pb2.ExecutorTask(run_id=run_id, model="slow")
    nc = await nats.connect(route_stack.nats_url)
    try:
        await nc.jetstream().publish(
            Subjects(route_stack.config.nats_subject_prefix).executor_tasks,
            task.SerializeToString(),
            stream=route_stack.config.nats_stream,
        )
    finally:
        await nc.close()
    run = await wait_for_run(route_client, route_key, run_id, timeout=30.0)

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    [call] = fake_model.calls("slow")
    assert call.outcome == "completed"
    assert not call.client_closed
    _, events = await read_events(route_client, route_key, run_id)
    assert "message.reset" not in [e.event for e in events]
    assert answer_from(events) == REPLY
    # The second task reached the executor while it held the run.
    dropped = _executor_log(
        route_stack, "second task for a run this worker is handling, dropped"
    )
    assert [record["run_id"] for record in dropped] == [run_id]


async def test_busy_route_task_published_again(
    route_stack: Stack,
    route_client: httpx.AsyncClient,
    route_key: str,
    fake_model: FakeModelThread,
) -> None:
    # Longer than the 8 to 38 s of nak delays over five deliveries, so the
    # third run's task reaches its last delivery while the route is full.
    fake_model.reset(hung={"reply": REPLY, "headers_delay_s": 45.0})
    contents = [f"wait {number}" for number in range(ROUTE_SLOTS + 1)]
    run_ids = [
        await _post(route_client, route_key, content, "hung") for content in contents
    ]

    def published_again() -> None:
        records = _executor_log(
            route_stack,
            "model route at its limit on the last delivery, task published again",
        )
        assert [record["run_id"] for record in records] == [run_ids[-1]]

    await assert_eventually(published_again, timeout=45.0, interval=0.5)
    # The calls under way keep their delay, and the third run's call gets no delay.
    fake_model.configure("hung", reply=REPLY)
    runs = [
        await wait_for_run(route_client, route_key, run_id, timeout=60.0)
        for run_id in run_ids
    ]

    for run in runs:
        assert run["status"] == "completed", run
        assert run["assistant_message"]["content"] == REPLY
        assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    calls = fake_model.calls("hung")
    assert sorted(_user_content(call) for call in calls) == sorted(contents)
