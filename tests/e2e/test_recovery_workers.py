"""Worker and NATS failures end to end, on ``recovery_stack`` (see model_stacks).

That stack runs its own nats-server, with an ack wait of 3 s, leases of 3 s
renewed every second and a sweep every 0.5 s, so each recovery here takes
seconds. Tests that stop a process start it again before they end.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import ConsumerConfig

from bulkhead.devstack import Stack
from bulkhead.devstack.ports import free_port
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.proto.executor.v1 import executor_pb2
from bulkhead.rpc import create_channel
from bulkhead.worker import RunClient, RunLostError
from tests.support.api import (
    answer_from,
    auth,
    post_chat,
    read_events,
    wait_for_run,
)
from tests.support.eventually import assert_eventually
from tests.support.fake_models import FakeModelThread

REPLY = " ".join(f"w{i}" for i in range(30))
ZOMBIE_WORKER = "test-zombie-worker"


@pytest.fixture
async def run_client(recovery_stack: Stack) -> AsyncIterator[RunClient]:
    """A RunService client that acts as a worker of the stack."""
    channel = create_channel(recovery_stack.chat_service_addr)
    yield RunClient(channel, service_token=recovery_stack.worker_service_token)
    await channel.close()


async def _post(client: httpx.AsyncClient, key: str, content: str, model: str) -> str:
    posted = await post_chat(client, key, content, model=model)
    assert posted.status_code == 202, posted.text
    return str(posted.json()["run"]["id"])


async def _get_run(client: httpx.AsyncClient, key: str, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{run_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


async def _claim_when_free(runs: RunClient, run_id: str) -> int:
    """Claim the executor stage as the zombie worker once the lease is free."""

    async def claimed() -> int:
        claim = await runs.claim(run_id, run_pb.STAGE_EXECUTOR, ZOMBIE_WORKER, 1)
        assert claim.outcome == run_pb.CLAIM_OUTCOME_CLAIMED, claim.outcome
        return claim.attempt

    return await assert_eventually(claimed, timeout=15.0, interval=0.3)


async def _check_stream_replay(
    client: httpx.AsyncClient, key: str, run: dict[str, Any]
) -> None:
    content = run["assistant_message"]["content"]
    response, events = await read_events(client, key, run["id"])
    assert response.status_code == 200
    assert answer_from(events) == content
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    resume_after = random.choice(events[:-1]).id
    _, tail = await read_events(client, key, run["id"], resume_after)
    assert tail == [e for e in events if e.id > resume_after]


async def test_recovery_killed_executor_is_fenced_and_replaced(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
    run_client: RunClient,
) -> None:
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 0.2})
    run_id = await _post(recovery_client, recovery_key, "tell me", "slow")

    def streaming() -> None:
        calls = fake_model.calls("slow")
        assert calls and calls[0].chunks_sent >= 3

    await assert_eventually(streaming, timeout=20.0)
    await asyncio.to_thread(recovery_stack.kill, "executor_service")
    partial = (await _get_run(recovery_client, recovery_key, run_id))[
        "assistant_message"
    ]["content"]

    # A new attempt takes the run; the killed one's reports are now stale.
    attempt = await _claim_when_free(run_client, run_id)
    stale = attempt - 1
    zombie_text = run_pb.OutputEvent(delta=run_pb.Delta(text="zombie text"))
    with pytest.raises(RunLostError) as appended:
        await run_client.append_output(run_id, stale, 10_000, [zombie_text])
    assert appended.value.reason == "STALE_ATTEMPT"
    with pytest.raises(RunLostError) as completed:
        await run_client.complete(run_id, stale, "slow", types_pb2.Usage(), [])
    assert completed.value.reason == "STALE_ATTEMPT"
    fenced = await _get_run(recovery_client, recovery_key, run_id)
    assert fenced["status"] == "running"
    assert fenced["assistant_message"]["content"] == partial

    await run_client.release(run_id, attempt, "test hands the run back")
    await asyncio.to_thread(recovery_stack.start_process, "executor_service")
    run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=30.0)

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    calls = fake_model.calls("slow")
    assert len(calls) == 2
    assert calls[0].client_closed
    await _check_stream_replay(recovery_client, recovery_key, run)


async def test_recovery_heartbeats_keep_slow_call_on_one_worker(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
) -> None:
    # 20 chunks 0.5 s apart: about 10 s, more than three ack waits of 3 s.
    fake_model.reset(slow={"reply": REPLY, "chunks": 20, "chunk_delay_s": 0.5})
    started = time.monotonic()

    run_id = await _post(recovery_client, recovery_key, "take your time", "slow")
    run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=40.0)

    assert run["status"] == "completed", run
    assert time.monotonic() - started >= 9.0
    assert len(fake_model.calls("slow")) == 1  # never redelivered to a second call
    assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    executor_log = recovery_stack.read_log("executor_service")
    claims = [
        line
        for line in executor_log.splitlines()
        if run_id in line and '"run claimed"' in line
    ]
    assert len(claims) == 1, claims


async def test_recovery_chat_service_restart_keeps_model_call(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
) -> None:
    # About 2 s of streaming. chat_service dies early in it and stays down
    # until the model has finished, so output and the final report wait.
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 0.07})
    run_id = await _post(recovery_client, recovery_key, "keep going", "slow")

    def streaming() -> None:
        calls = fake_model.calls("slow")
        assert calls and calls[0].chunks_sent >= 3

    await assert_eventually(streaming, timeout=20.0)
    await asyncio.to_thread(recovery_stack.kill, "chat_service")
    try:

        def model_done() -> None:
            assert fake_model.calls("slow")[0].outcome == "completed"

        await assert_eventually(model_done, timeout=20.0)
    finally:
        await asyncio.to_thread(recovery_stack.start_process, "chat_service")
    run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=40.0)

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    assert len(fake_model.calls("slow")) == 1
    executor_log = recovery_stack.read_log("executor_service")
    retried = {
        json.loads(line)["method"]
        for line in executor_log.splitlines()
        if run_id in line and "call to chat_service failed, retrying" in line
    }
    assert retried, "no report was retried"
    await _check_stream_replay(recovery_client, recovery_key, run)


async def test_recovery_claim_waits_for_chat_service(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
) -> None:
    fake_model.reset(solo={"reply": "claimed after the restart"})
    agent = recovery_stack.process("agent_service")
    agent.send_signal(signal.SIGSTOP)
    try:
        run_id = await _post(recovery_client, recovery_key, "wait for me", "solo")
        # Let the relay publish the agent task before chat_service goes away.
        await asyncio.sleep(1.0)
        await asyncio.to_thread(recovery_stack.kill, "chat_service")
    finally:
        agent.send_signal(signal.SIGCONT)
    try:
        # The agent now fetches the task while chat_service is down.
        await asyncio.sleep(3.0)
    finally:
        await asyncio.to_thread(recovery_stack.start_process, "chat_service")
    run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=40.0)

    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == "claimed after the restart"
    agent_log = [
        json.loads(line)
        for line in recovery_stack.read_log("agent_service").splitlines()
        if run_id in line
    ]
    retried = [
        r for r in agent_log if r["event"] == "call to chat_service failed, retrying"
    ]
    assert {r["method"] for r in retried} == {"ClaimRun"}
    # The first delivery waited for chat_service instead of being nak'ed.
    claims = [r for r in agent_log if r["event"] == "run claimed"]
    assert [r["delivery"] for r in claims] == [1]


async def test_recovery_nats_outage_accepts_messages(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
) -> None:
    fake_model.reset(solo={"reply": "after the outage"})
    await asyncio.to_thread(recovery_stack.kill, "nats")
    try:

        async def degraded() -> None:
            response = await recovery_client.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["nats"] == "degraded"

        await assert_eventually(degraded, timeout=10.0, interval=0.2)
        run_ids = []
        for number in range(3):
            sent = time.monotonic()
            run_ids.append(
                await _post(recovery_client, recovery_key, f"m{number}", "solo")
            )
            assert time.monotonic() - sent < 2.0
        for run_id in run_ids:
            queued = await _get_run(recovery_client, recovery_key, run_id)
            assert queued["status"] == "queued"
    finally:
        await asyncio.to_thread(recovery_stack.start_process, "nats")

    for run_id in run_ids:
        run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=45.0)
        assert run["status"] == "completed", run
        assert run["assistant_message"]["content"] == "after the outage"

    async def ready() -> None:
        response = await recovery_client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["checks"] == {"chat_service": "ok", "nats": "ok"}

    await assert_eventually(ready, timeout=10.0)


async def test_recovery_deleted_stream_is_created_again(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
) -> None:
    # As when NATS restarts with its store lost: the stream and both
    # consumers are gone, while every service stays connected.
    fake_model.reset(solo={"reply": "after the loss"})
    nc = await nats.connect(recovery_stack.nats_url)
    try:
        js = nc.jetstream()
        await js.delete_stream(recovery_stack.config.nats_stream)

        run_id = await _post(recovery_client, recovery_key, "lost stream", "solo")
        run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=45.0)

        assert run["status"] == "completed", run
        assert run["assistant_message"]["content"] == "after the loss"
        info = await js.stream_info(recovery_stack.config.nats_stream)
        assert info.config.subjects
        for durable in ("agent", "executor"):
            consumer = await js.consumer_info(
                recovery_stack.config.nats_stream, durable
            )
            assert consumer.name == durable
    finally:
        await nc.close()


async def _take_executor_tasks(stack: Stack, count: int) -> list[str]:
    """Pull ``count`` executor tasks and acknowledge them: tasks lost in NATS."""
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe_bind(
            durable="executor", stream=stack.config.nats_stream
        )
        run_ids: list[str] = []
        deadline = time.monotonic() + 20.0
        while len(run_ids) < count and time.monotonic() < deadline:
            try:
                messages = await subscription.fetch(count - len(run_ids), timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                run_ids.append(executor_pb2.ExecutorTask.FromString(msg.data).run_id)
                await msg.ack()
        assert len(run_ids) == count, run_ids
        return run_ids
    finally:
        await nc.close()


async def test_recovery_sweeper_reschedules_or_fails_expired_leases(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
    run_client: RunClient,
) -> None:
    fake_model.reset(solo={"reply": "rescheduled"})
    await asyncio.to_thread(recovery_stack.terminate, "executor_service")
    try:
        first = await _post(recovery_client, recovery_key, "first", "solo")
        second = await _post(recovery_client, recovery_key, "second", "solo")
        taken = await _take_executor_tasks(recovery_stack, 2)
        assert sorted(taken) == sorted([first, second])
        # A zombie claims both runs and disappears. The second run has then
        # used every attempt (5: one agent claim and four executor claims).
        await _claim_when_free(run_client, first)
        for _ in range(4):
            attempt = await _claim_when_free(run_client, second)
        assert attempt == 5
    finally:
        await asyncio.to_thread(recovery_stack.start_process, "executor_service")

    rescheduled = await wait_for_run(recovery_client, recovery_key, first, 40.0)
    exhausted = await wait_for_run(recovery_client, recovery_key, second, 40.0)

    assert rescheduled["status"] == "completed", rescheduled
    assert rescheduled["assistant_message"]["content"] == "rescheduled"
    assert exhausted["status"] == "failed", exhausted
    assert exhausted["error"]["code"] == "lease_expired"
    assert len(fake_model.calls("solo")) == 1
    log = recovery_stack.read_log("chat_service")
    assert "lease expired, run rescheduled" in log
    assert "run failed: lease expired" in log


async def _stream_messages(stack: Stack) -> int:
    nc = await nats.connect(stack.nats_url)
    try:
        info = await nc.jetstream().stream_info(stack.config.nats_stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_recovery_agent_failures_end_in_failed_run(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
) -> None:
    # The agent cannot reach chat_service, so every delivery of its task
    # fails and even the last one cannot record the failure: chat_service
    # learns of it from JetStream's max-deliveries advisory.
    agent = recovery_stack.process("agent_service")
    original_env = dict(agent.env)
    await asyncio.to_thread(recovery_stack.terminate, "agent_service")
    agent.env["BULKHEAD_CHAT_SERVICE_ADDR"] = f"127.0.0.1:{free_port('127.0.0.1')}"
    # Without retries of its calls, the deliveries run out in seconds.
    agent.env["BULKHEAD_AGENT_RPC_RETRY_S"] = "0"
    await asyncio.to_thread(recovery_stack.start_process, "agent_service")
    try:
        content = "the agent never plans this"
        run_id = await _post(recovery_client, recovery_key, content, "solo")
        run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=60.0)
    finally:
        await asyncio.to_thread(recovery_stack.terminate, "agent_service")
        agent.env.clear()
        agent.env.update(original_env)
        await asyncio.to_thread(recovery_stack.start_process, "agent_service")

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "agent_failed"
    assert "delivered 5 times" in run["error"]["message"]
    agent_log = recovery_stack.read_log("agent_service")
    retries = [
        line
        for line in agent_log.splitlines()
        if run_id in line and "task failed, will be redelivered" in line
    ]
    assert len(retries) == 4, retries
    messages = await recovery_client.get(
        f"/api/chats/{run['chat_id']}/messages", headers=auth(recovery_key)
    )
    assert [m["content"] for m in messages.json()["items"]] == [content]

    async def no_dead_task() -> None:
        assert await _stream_messages(recovery_stack) == 0

    await assert_eventually(no_dead_task, timeout=10.0)


@pytest.mark.parametrize(
    "service", ["gateway", "agent_service", "executor_service", "chat_service"]
)
async def test_recovery_sigterm_exits_zero(
    recovery_stack: Stack,
    recovery_client: httpx.AsyncClient,
    recovery_key: str,
    fake_model: FakeModelThread,
    service: str,
) -> None:
    fake_model.reset(slow={"reply": REPLY, "chunk_delay_s": 0.2})
    run_id = await _post(recovery_client, recovery_key, "in flight", "slow")

    def streaming() -> None:
        calls = fake_model.calls("slow")
        assert calls and calls[-1].chunks_sent >= 2

    await assert_eventually(streaming, timeout=20.0)
    started = time.monotonic()

    status = await asyncio.to_thread(recovery_stack.terminate, service)

    assert status == 0, recovery_stack.log_tail(service)
    assert time.monotonic() - started < recovery_stack.config.stop_grace_s
    await asyncio.to_thread(recovery_stack.start_process, service)
    run = await wait_for_run(recovery_client, recovery_key, run_id, timeout=40.0)
    assert run["status"] == "completed", run
    assert run["assistant_message"]["content"] == REPLY
    await _check_stream_replay(recovery_client, recovery_key, run)


async def test_recovery_consumer_uses_configured_ack_wait(
    recovery_stack: Stack,
) -> None:
    nc = await nats.connect(recovery_stack.nats_url)
    try:
        js = nc.jetstream()
        for durable in ("agent", "executor"):
            info = await js.consumer_info(recovery_stack.config.nats_stream, durable)
            config: ConsumerConfig = info.config
            assert config.ack_wait == 3.0
            assert config.max_deliver == 5
    finally:
        await nc.close()
