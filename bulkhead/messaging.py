"""NATS subjects, the JetStream work-queue stream and its consumers, in one place.

Work (one task per run and stage) goes through a JetStream stream with
work-queue retention: a message is removed once a worker acknowledges it.
Run events and cancel notices use core NATS, because they are wake-up
signals: the database contains the events, and a lost notice costs at most one
poll interval.

Stream ``BULKHEAD_TASKS`` (name and subject prefix come from settings):

====================  =========  ========  ===========  ===============================
consumer              ack wait   max del.  heartbeat    on exhausted deliveries
====================  =========  ========  ===========  ===============================
agent                 30 s       5         every 10 s   run failed ``agent_failed``
executor              30 s       5         every 10 s   run failed ``delivery_exhausted``
====================  =========  ========  ===========  ===============================

The ack wait is the ``nats_ack_wait_s`` setting (30 s by default); the
heartbeat interval is a third of it, at most 10 s. Every service of a
deployment must use the same value, because the sweeper waits one ack wait
before it re-schedules a run whose lease expired.

Workers send ``in_progress()`` heartbeats while they hold a task, so a slow
but healthy model call is never redelivered; a worker that dies stops the
heartbeats, and the task is redelivered one ack wait later. No back-off list
is set: a BackOff list replaces the ack wait (nats-server 2.9 to 2.15), which
would shorten the window a heartbeat buys; workers nak with an explicit delay
instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from bulkhead.log import get_logger
from bulkhead.settings import CommonSettings

logger = get_logger(__name__)

TASK_ACK_WAIT_S = 30.0
TASK_MAX_DELIVER = 5
TASK_HEARTBEAT_S = 10.0
# A held task gets at least this many heartbeats per ack wait, so that one
# late heartbeat does not cause a redelivery.
HEARTBEATS_PER_ACK_WAIT = 3
TASK_MAX_ACK_PENDING = 1024
# Tasks carry a run id only; anything bigger is a bug.
TASK_MAX_MSG_BYTES = 4096
DUPLICATE_WINDOW_S = 120.0


@dataclass(frozen=True)
class Subjects:
    """All subject names, derived from one prefix."""

    prefix: str

    @property
    def tasks_wildcard(self) -> str:
        return f"{self.prefix}.tasks.>"

    @property
    def agent_tasks(self) -> str:
        return f"{self.prefix}.tasks.agent"

    @property
    def executor_tasks(self) -> str:
        return f"{self.prefix}.tasks.executor"

    def run_events(self, run_id: str) -> str:
        return f"{self.prefix}.events.{run_id}"

    @property
    def run_events_wildcard(self) -> str:
        return f"{self.prefix}.events.*"

    def cancel(self, run_id: str) -> str:
        return f"{self.prefix}.cancel.{run_id}"

    @property
    def cancel_wildcard(self) -> str:
        return f"{self.prefix}.cancel.*"


@dataclass(frozen=True)
class Topology:
    """The stream and consumer names of one deployment."""

    stream: str
    subjects: Subjects
    agent_consumer: str = "agent"
    executor_consumer: str = "executor"
    ack_wait_s: float = TASK_ACK_WAIT_S

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Topology:
        return cls(
            stream=settings.nats_stream,
            subjects=Subjects(settings.nats_subject_prefix),
            ack_wait_s=settings.nats_ack_wait_s,
        )

    @property
    def heartbeat_s(self) -> float:
        """Seconds between ``in_progress()`` acks of a task a worker holds."""
        return min(TASK_HEARTBEAT_S, self.ack_wait_s / HEARTBEATS_PER_ACK_WAIT)

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subjects.tasks_wildcard],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msg_size=TASK_MAX_MSG_BYTES,
            duplicate_window=DUPLICATE_WINDOW_S,
        )

    def consumer_config(self, durable: str, subject: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=TASK_MAX_DELIVER,
            max_ack_pending=TASK_MAX_ACK_PENDING,
        )

    def max_deliveries_advisory(self, consumer: str) -> str:
        """Subject of the advisory sent when a task exhausts its deliveries."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{consumer}"


async def ensure_stream(js: JetStreamContext, topology: Topology) -> None:
    """Create the task stream, or update it to the declared configuration."""
    config = topology.stream_config()
    try:
        await js.stream_info(topology.stream)
    except NotFoundError:
        await js.add_stream(config)
        logger.info("nats stream created", stream=topology.stream)
        return
    await js.update_stream(config)


async def ensure_consumer(
    js: JetStreamContext, topology: Topology, durable: str, subject: str
) -> None:
    """Create or update a durable pull consumer.

    ``pull_subscribe`` ignores the configuration it is given when the durable
    already exists, so consumers are always created explicitly.
    """
    await ensure_stream(js, topology)
    await js.add_consumer(topology.stream, topology.consumer_config(durable, subject))


async def connect_nats(settings: CommonSettings, name: str) -> Client:
    """Connect to NATS, reconnecting forever and logging connection changes.

    With ``max_reconnect_attempts=-1``, nats-py 2.16 also retries the first
    connection inside this call, so it returns only once a server accepted the connection.
    Repeated connection errors are logged once, then every 60th time.
    """
    errors = 0
    client: Client | None = None

    async def on_error(error: Exception) -> None:
        nonlocal errors
        errors += 1
        if errors == 1 or errors % 60 == 0:
            logger.warning(
                "nats connection error",
                error=str(error) or type(error).__name__,
                errors=errors,
            )

    async def on_disconnected() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return
        logger.warning("nats disconnected")

    async def on_reconnected() -> None:
        nonlocal errors
        logger.info("nats reconnected", errors_while_down=errors)
        errors = 0

    options: dict[str, object] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
    }
    # Credentials for a server with an authorization block (user and
    # password, or a token); see docs/security.md.
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token.get_secret_value():
        options["token"] = settings.nats_token.get_secret_value()
    client = await nats.connect(settings.nats_url, **options)  # type: ignore[arg-type]
    return client


__all__ = [
    "NatsError",
    "Subjects",
    "Topology",
    "connect_nats",
    "ensure_consumer",
    "ensure_stream",
]
