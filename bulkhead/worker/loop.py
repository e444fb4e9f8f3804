"""Pull tasks from a JetStream consumer and run a handler per message.

What the loop guarantees for every message it fetches:

- It is held alive with ``in_progress()`` every ``heartbeat_s`` seconds while
  the handler runs, so slow work is not redelivered.
- It is settled as the handler's :class:`Outcome` specifies. When the
  handler raises, the message is nak'ed with an exponential delay; on the
  last delivery the handler's ``give_up`` records the failure on the run and
  the message is terminated. If even that fails, the message is nak'ed and
  stays in the stream at max deliveries, where the server's max-deliveries
  advisory reports it, so it is never dropped silently.
- On shutdown, tasks still running after the grace period are cancelled,
  released with ``ReleaseRun`` and nak'ed without delay, so another worker
  takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import grpc
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from bulkhead.log import bound_context, get_logger
from bulkhead.messaging import (
    TASK_HEARTBEAT_S,
    Topology,
    connect_nats,
    ensure_consumer,
    ensure_stream,
)
from bulkhead.rpc import HealthServicer, add_port, create_server, mark_serving
from bulkhead.settings import CommonSettings
from bulkhead.tls import GrpcTls
from bulkhead.worker.backoff import full_jitter_delay

logger = get_logger(__name__)

# The nak delay after failed delivery d is NAK_BASE_S plus a random share of
# min(NAK_MAX_S, NAK_BASE_S * 2 ** (d - 1)). With 5 deliveries the four delays
# add up to 4 to 19 s, which rides out a chat_service restart.
NAK_BASE_S = 1.0
NAK_MAX_S = 30.0
CONNECT_BASE_S = 0.5
CONNECT_MAX_S = 15.0
RELEASE_TIMEOUT_S = 2.0


class Action(StrEnum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True)
class Outcome:
    """Settlement of a message after the handler returns: ack, nak or term."""

    action: Action
    delay_s: float | None = None
    reason: str = ""

    @classmethod
    def ack(cls, reason: str = "") -> Outcome:
        return cls(Action.ACK, reason=reason)

    @classmethod
    def nak(cls, delay_s: float | None, reason: str = "") -> Outcome:
        return cls(Action.NAK, delay_s=delay_s, reason=reason)

    @classmethod
    def term(cls, reason: str = "") -> Outcome:
        return cls(Action.TERM, reason=reason)


@dataclass
class Task:
    """One fetched message and what the handler learned about it."""

    msg: Msg
    delivery: int
    max_deliver: int
    # Set by the handler once known, for logs, give_up and release.
    run_id: str = ""
    attempt: int | None = None
    details: dict[str, object] = field(default_factory=dict)

    @property
    def is_last_delivery(self) -> bool:
        return self.max_deliver > 0 and self.delivery >= self.max_deliver


class TaskHandler(Protocol):
    async def handle(self, task: Task) -> Outcome:
        """Process one task. Raise for failures that a later delivery may fix."""
        ...

    async def give_up(self, task: Task, error: BaseException) -> bool:
        """Record on the run that its last delivery failed; return True if stored."""
        ...

    async def release(self, task: Task, reason: str) -> None:
        """Give a claimed run back without a result (``task.attempt`` is set)."""
        ...


@dataclass(frozen=True)
class WorkerOptions:
    """Configuration of one worker process: its consumer, limits and timings.

    Attributes:
        service: Service name, used as NATS connection name and in logs.
        durable: Durable consumer name.
        subject: Filter subject of the consumer.
        concurrency: Maximum number of tasks handled at once.
        health_listen: host:port of the health and reflection gRPC server;
            empty to run without one.
        health_tls: TLS files for that server; plaintext when None.
        shutdown_grace_s: Seconds in-flight tasks get to finish on shutdown.
        heartbeat_s: Seconds between ``in_progress()`` acks of a held task.
        fetch_timeout_s: Seconds one fetch waits for messages; also bounds
            how long a stop request waits for the fetch loop.
        consumer_config: Consumer to create instead of the topology's
            declaration (tests use a short ack wait).
    """

    service: str
    durable: str
    subject: str
    concurrency: int
    health_listen: str = ""
    health_tls: GrpcTls | None = None
    shutdown_grace_s: float = 20.0
    heartbeat_s: float = TASK_HEARTBEAT_S
    fetch_timeout_s: float = 1.0
    consumer_config: ConsumerConfig | None = None


def make_worker_id(service: str) -> str:
    """Return an id unique to this process, readable in logs and claims."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def connect_with_retry(
    settings: CommonSettings, name: str, stop: asyncio.Event | None = None
) -> Client | None:
    """Connect to NATS, retrying until it works or ``stop`` is set.

    With ``max_reconnect_attempts=-1`` (set by ``connect_nats``) nats-py 2.16
    retries a failed first connection inside ``connect()`` every
    ``reconnect_time_wait`` and reports each failure to the error callback,
    so the call is raced against ``stop`` here. The loop around it covers
    failures that nats-py does raise. Returns None only when ``stop`` was set
    first.
    """
    failures = 0
    while stop is None or not stop.is_set():
        connecting = asyncio.create_task(connect_nats(settings, name))
        if stop is not None:
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {connecting, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
                return None
        try:
            return await connecting
        except (OSError, TimeoutError, nats.errors.Error) as error:
            failures += 1
            delay = CONNECT_BASE_S + full_jitter_delay(
                failures, CONNECT_BASE_S, CONNECT_MAX_S
            )
            logger.warning(
                "nats connection failed, retrying",
                failures=failures,
                retry_in_s=round(delay, 2),
                error=str(error) or type(error).__name__,
            )
            await _wait_or_stop(stop, delay)
    return None


class TaskWorker:
    """Fetch tasks from one durable consumer and run a handler for each.

    Call :meth:`run` once; it returns after :meth:`stop` and a clean shutdown.
    """

    def __init__(
        self,
        settings: CommonSettings,
        topology: Topology,
        options: WorkerOptions,
        handler: TaskHandler,
        on_connected: Callable[[Client], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._topology = topology
        self._options = options
        self._handler = handler
        self._on_connected = on_connected
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._max_deliver = -1
        self._in_flight: dict[asyncio.Task[None], Task] = {}
        self._handler_tasks: dict[asyncio.Task[None], asyncio.Task[Outcome]] = {}
        self._draining = False
        self._health: grpc.aio.Server | None = None
        self.nc: Client | None = None
        self.ready = asyncio.Event()
        self.health_port = 0

    def stop(self) -> None:
        """Ask the loop to stop fetching and shut down (safe from signal handlers)."""
        if not self._stop.is_set():
            logger.info("worker stop requested")
        self._stop.set()
        self._wakeup.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        health = await self._start_health_server()
        try:
            nc = await connect_with_retry(
                self._settings, self._options.service, self._stop
            )
            if nc is None:
                return
            self.nc = nc
            try:
                subscription = await self._subscribe(nc)
                if subscription is None:
                    return
                if self._on_connected is not None:
                    await self._on_connected(nc)
                if health is not None:
                    await mark_serving(health, [])
                self.ready.set()
                logger.info(
                    "worker started",
                    durable=self._options.durable,
                    concurrency=self._options.concurrency,
                    max_deliver=self._max_deliver,
                )
                await self._fetch_loop(nc, subscription)
                if health is not None:
                    await mark_serving(health, [], serving=False)
                await self._drain()
            finally:
                await _close_nats(nc)
        finally:
            if self._health is not None:
                await self._health.stop(grace=1.0)
            logger.info("worker stopped")

    async def _start_health_server(self) -> HealthServicer | None:
        if not self._options.health_listen:
            return None
        server, servicer = create_server([])
        port = add_port(server, self._options.health_listen, self._options.health_tls)
        if port == 0:
            raise RuntimeError(
                f"cannot listen on {self._options.health_listen} for the health server"
            )
        await mark_serving(servicer, [], serving=False)
        await server.start()
        self._health = server
        self.health_port = port
        logger.info("health server listening", address=self._options.health_listen)
        return servicer

    async def _subscribe(self, nc: Client) -> JetStreamContext.PullSubscription | None:
        """Create the consumer and bind to it, retrying while JetStream fails."""
        js = nc.jetstream()
        failures = 0
        while not self._stop.is_set():
            try:
                await self._ensure_consumer(js)
                info = await js.consumer_info(
                    self._topology.stream, self._options.durable
                )
                self._max_deliver = info.config.max_deliver or -1
                return await js.pull_subscribe_bind(
                    durable=self._options.durable, stream=self._topology.stream
                )
            except (OSError, TimeoutError, nats.errors.Error) as error:
                failures += 1
                delay = CONNECT_BASE_S + full_jitter_delay(
                    failures, CONNECT_BASE_S, CONNECT_MAX_S
                )
                logger.warning(
                    "jetstream consumer setup failed, retrying",
                    stream=self._topology.stream,
                    durable=self._options.durable,
                    failures=failures,
                    retry_in_s=round(delay, 2),
                    error=str(error) or type(error).__name__,
                )
                await _wait_or_stop(self._stop, delay)
        return None

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        config = self._options.consumer_config
        if config is None:
            await ensure_consumer(
                js, self._topology, self._options.durable, self._options.subject
            )
            return
        await ensure_stream(js, self._topology)
        await js.add_consumer(self._topology.stream, config)

    async def _fetch_loop(
        self, nc: Client, subscription: JetStreamContext.PullSubscription
    ) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_check = loop.time() + self._topology.ack_wait_s
        while not self._stop.is_set():
            free = self._options.concurrency - len(self._in_flight)
            if free <= 0:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                messages = await subscription.fetch(
                    batch=free, timeout=self._options.fetch_timeout_s
                )
            except (nats.errors.TimeoutError, TimeoutError):
                # An idle fetch: nats-py raises either timeout class here. A
                # fetch from a deleted consumer times out the same way, so
                # the consumer is checked once per ack wait while idle.
                failures = 0
                if loop.time() >= next_check:
                    next_check = loop.time() + self._topology.ack_wait_s
                    subscription = await self._check_consumer(nc, subscription)
                continue
            except nats.js.errors.APIError as error:
                # nats-server 2.15 rejects a fetch from a deleted consumer
                # with 503, where 2.9 leaves it unanswered.
                failures += 1
                logger.warning(
                    "fetch rejected by jetstream",
                    failures=failures,
                    error=str(error) or type(error).__name__,
                )
                if loop.time() >= next_check or failures == 1:
                    next_check = loop.time() + self._topology.ack_wait_s
                    subscription = await self._check_consumer(nc, subscription)
                delay = full_jitter_delay(failures, CONNECT_BASE_S, CONNECT_MAX_S)
                await _wait_or_stop(self._stop, delay)
                continue
            except (OSError, nats.errors.Error) as error:
                # Typically a disconnect: nats-py reconnects by itself.
                failures += 1
                delay = full_jitter_delay(failures, CONNECT_BASE_S, CONNECT_MAX_S)
                logger.warning(
                    "fetch failed, retrying",
                    failures=failures,
                    retry_in_s=round(delay, 2),
                    error=str(error) or type(error).__name__,
                )
                await _wait_or_stop(self._stop, delay)
                continue
            failures = 0
            for msg in messages:
                self._start_task(msg)

    async def _check_consumer(
        self, nc: Client, subscription: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription:
        """Return the subscription, bound anew if its consumer was deleted.

        A consumer disappears with its stream, for example when NATS restarts
        with a lost store; its tasks then come back through the sweeper.
        """
        try:
            await nc.jetstream().consumer_info(
                self._topology.stream, self._options.durable, timeout=5.0
            )
            return subscription
        except nats.js.errors.NotFoundError as error:
            logger.warning(
                "jetstream consumer or stream missing, creating it again",
                stream=self._topology.stream,
                durable=self._options.durable,
                error=str(error) or type(error).__name__,
            )
        except (OSError, TimeoutError, nats.errors.Error) as error:
            # Not known to be missing: keep fetching, and check again later.
            logger.warning(
                "jetstream consumer check failed",
                durable=self._options.durable,
                error=str(error) or type(error).__name__,
            )
            return subscription
        with contextlib.suppress(OSError, nats.errors.Error):
            await subscription.unsubscribe()
        bound = await self._subscribe(nc)
        if bound is None:
            return subscription
        logger.info("jetstream consumer bound again", durable=self._options.durable)
        return bound

    def _start_task(self, msg: Msg) -> None:
        try:
            delivery = int(msg.metadata.num_delivered)
        except (ValueError, TypeError, AttributeError):
            delivery = 1
        task = Task(msg=msg, delivery=delivery, max_deliver=self._max_deliver)
        runner = asyncio.create_task(self._process(task))
        self._in_flight[runner] = task
        runner.add_done_callback(self._on_task_done)

    def _on_task_done(self, runner: asyncio.Task[None]) -> None:
        self._in_flight.pop(runner, None)
        self._handler_tasks.pop(runner, None)
        if not runner.cancelled() and runner.exception() is not None:
            logger.error("task runner crashed", exc_info=runner.exception())
        self._wakeup.set()

    async def _process(self, task: Task) -> None:
        runner = asyncio.current_task()
        assert runner is not None
        with bound_context(delivery=task.delivery):
            heartbeat = asyncio.create_task(self._heartbeat(task.msg))
            handler_task = asyncio.create_task(self._handler.handle(task))
            self._handler_tasks[runner] = handler_task
            try:
                outcome = await handler_task
            except asyncio.CancelledError:
                if runner.cancelling() or not self._draining:
                    raise
                await self._release_on_shutdown(task)
                return
            except Exception as error:  # noqa: BLE001 - every failure settles the message
                await self._settle_failure(task, error)
                return
            finally:
                heartbeat.cancel()
            await self._settle(task, outcome)

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._options.heartbeat_s)
            try:
                await msg.in_progress()
            except (OSError, nats.errors.Error) as error:
                logger.warning("in-progress ack failed", error=str(error))

    async def _settle(self, task: Task, outcome: Outcome) -> None:
        log = logger.bind(run_id=task.run_id or None, attempt=task.attempt)
        try:
            if outcome.action is Action.ACK:
                await task.msg.ack()
            elif outcome.action is Action.TERM:
                await task.msg.term()
                log.warning("task terminated", reason=outcome.reason)
            else:
                await task.msg.nak(delay=outcome.delay_s)
                log.info("task nak'ed", delay_s=outcome.delay_s, reason=outcome.reason)
        except (OSError, nats.errors.Error) as error:
            # The server redelivers the message after the ack wait.
            log.warning(
                "settling the task failed",
                action=outcome.action.value,
                error=str(error) or type(error).__name__,
            )

    async def _settle_failure(self, task: Task, error: Exception) -> None:
        log = logger.bind(run_id=task.run_id or None, attempt=task.attempt)
        if not task.is_last_delivery:
            delay = NAK_BASE_S + full_jitter_delay(task.delivery, NAK_BASE_S, NAK_MAX_S)
            log.warning(
                "task failed, will be redelivered",
                error=_describe(error),
                delivery=task.delivery,
                max_deliver=task.max_deliver,
                retry_in_s=round(delay, 2),
            )
            if task.attempt is not None:
                await self._release_quietly(task, "task failed, retrying")
            await self._settle(task, Outcome.nak(delay, "handler failed"))
            return

        log.error(
            "task failed on its last delivery",
            error=_describe(error),
            delivery=task.delivery,
            exc_info=error,
        )
        try:
            recorded = await self._handler.give_up(task, error)
        except Exception as give_up_error:  # noqa: BLE001 - logged, then settled
            log.error("recording the failed run failed", error=_describe(give_up_error))
            recorded = False
        if recorded:
            await self._settle(task, Outcome.term("deliveries exhausted"))
        else:
            # Left at max deliveries: the server keeps the message and sends
            # its max-deliveries advisory, which chat_service can act on.
            await self._settle(
                task, Outcome.nak(None, "deliveries exhausted, unrecorded")
            )

    async def _drain(self) -> None:
        """Wait for in-flight tasks, then release and nak what is still running."""
        self._draining = True
        pending = set(self._in_flight)
        if not pending:
            return
        logger.info(
            "waiting for in-flight tasks",
            count=len(pending),
            grace_s=self._options.shutdown_grace_s,
        )
        _, still_running = await asyncio.wait(
            pending, timeout=self._options.shutdown_grace_s
        )
        if not still_running:
            return
        logger.warning(
            "cancelling tasks after the grace period", count=len(still_running)
        )
        for runner in still_running:
            handler_task = self._handler_tasks.get(runner)
            if handler_task is not None:
                handler_task.cancel()
        await asyncio.wait(still_running, timeout=RELEASE_TIMEOUT_S * 2 + 1.0)

    async def _release_on_shutdown(self, task: Task) -> None:
        if task.attempt is not None:
            await self._release_quietly(task, "worker shutdown")
        await self._settle(task, Outcome.nak(None, "worker shutdown"))

    async def _release_quietly(self, task: Task, reason: str) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._handler.release(task, reason)
        except Exception as error:  # noqa: BLE001 - best effort, the lease expires anyway
            logger.warning(
                "releasing the run failed",
                run_id=task.run_id,
                attempt=task.attempt,
                error=_describe(error),
            )


async def _wait_or_stop(stop: asyncio.Event | None, delay_s: float) -> None:
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()


async def _close_nats(nc: Client) -> None:
    try:
        # close() flushes pending acks before it closes the socket.
        await nc.close()
    except (OSError, nats.errors.Error) as error:
        logger.warning("closing the nats connection failed", error=str(error))


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name
