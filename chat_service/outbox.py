"""The transactional outbox and its relay to JetStream.

A task is scheduled by inserting an outbox row in the same transaction as
the state change that needs it; the relay publishes pending rows with a
``Nats-Msg-Id`` header (JetStream drops a repeat inside its duplicate
window) and deletes them once JetStream acknowledged them. If NATS is down,
rows wait and the API keeps accepting messages.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.log import get_logger
from bulkhead.messaging import Topology
from bulkhead.proto.agent.v1 import agent_pb2
from bulkhead.proto.executor.v1 import executor_pb2
from chat_service.store.database import Database, utcnow
from chat_service.store.deferred import defer_insert
from chat_service.store.tables import outbox

logger = get_logger(__name__)

PUBLISH_TIMEOUT_S = 2.0
_OLDEST = select(outbox).order_by(outbox.c.id).limit(bindparam("batch_size"))
_DELETE_BY_ID = delete(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True)))
# PostgreSQL: lock the oldest rows that no other relay holds and delete them
# in one statement. They stay deleted only if the transaction commits.
_TAKE_OLDEST = (
    delete(outbox)
    .where(
        outbox.c.id.in_(
            _OLDEST.with_only_columns(outbox.c.id).with_for_update(skip_locked=True)
        )
    )
    .returning(*outbox.c)
)


def outbox_row(
    topology: Topology, run_id: UUID, stage: str, model: str = ""
) -> dict[str, Any]:
    """Column values of the outbox row that schedules ``stage`` ("agent" or
    "executor") for a run. ``model`` names the first route of an executor
    task's plan."""
    if stage == "agent":
        subject = topology.subjects.agent_tasks
        payload = agent_pb2.AgentTask(run_id=str(run_id)).SerializeToString()
    else:
        subject = topology.subjects.executor_tasks
        payload = executor_pb2.ExecutorTask(
            run_id=str(run_id), model=model
        ).SerializeToString()
    return {
        "subject": subject,
        "payload": payload,
        "msg_id": uuid.uuid4().hex,
        "created_at": utcnow(),
    }


async def enqueue_task(
    conn: AsyncConnection,
    topology: Topology,
    run_id: UUID,
    stage: str,
    model: str = "",
) -> None:
    """Insert the outbox row that schedules ``stage`` ("agent" or "executor"),
    as a deferred write."""
    await defer_insert(conn, outbox, [outbox_row(topology, run_id, stage, model)])


class UnpublishedRowsError(Exception):
    """Some rows of a batch were not published; the batch is rolled back."""

    def __init__(self, failed: int, sent: int) -> None:
        super().__init__(f"{failed} outbox rows not published, {sent} published")


class PublishFailedError(Exception):
    """No row of a batch was published.

    The NATS error is wrapped because a NATS timeout is an OSError, which the
    database transaction around the publish would report as a database outage.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"publish to JetStream failed: {_describe(error)}")
        self.stream_missing = isinstance(error, NoStreamResponseError)


class OutboxRelay:
    """Publishes outbox rows to JetStream; one per chat_service process.

    On PostgreSQL, several relays share the table: each batch is deleted
    (rows locked by another relay skipped) and published in one transaction,
    which commits only if every row was published. So two relays never
    publish the same row at the same time, and a failed batch is published
    again later, where JetStream drops the rows that had gone out by their
    ``Nats-Msg-Id``. On SQLite (one replica), rows are read and deleted in
    short transactions around the publish, so the single write lock is never
    held while waiting on NATS.
    """

    def __init__(self, db: Database, batch_size: int, poll_s: float) -> None:
        self._db = db
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._js: JetStreamContext | None = None
        self._create_stream: Callable[[], Awaitable[None]] | None = None
        self._failures = 0
        self.published = 0

    def attach(
        self,
        js: JetStreamContext | None,
        create_stream: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Publish through ``js``; ``create_stream`` creates the task stream
        again when JetStream reports it missing."""
        self._js = js
        self._create_stream = create_stream
        if js is not None:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        logger.info("outbox relay started")
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._backoff_s())
                except TimeoutError:
                    pass
                self._wake.clear()
                await self._drain()
        finally:
            logger.info("outbox relay stopped", published=self.published)

    async def _drain(self) -> None:
        if self._js is None:
            return
        while True:
            try:
                sent = await self._relay_batch()
            except Exception as error:  # noqa: BLE001 - retried with back-off
                self._failures += 1
                if self._failures == 1 or self._failures % 30 == 0:
                    logger.warning(
                        "outbox relay failed, will retry",
                        error=_describe(error),
                        failures=self._failures,
                    )
                if isinstance(error, PublishFailedError) and error.stream_missing:
                    await self._recreate_stream()
                return
            if self._failures:
                logger.info("outbox relay recovered", failures=self._failures)
                self._failures = 0
            self.published += sent
            if sent < self._batch_size:
                return

    async def _recreate_stream(self) -> None:
        """Create the task stream again, for example after NATS lost its store.

        Tasks published before the loss come back through the sweeper.
        """
        if self._create_stream is None:
            return
        logger.warning("jetstream task stream missing, creating it again")
        try:
            await self._create_stream()
        except Exception as error:  # noqa: BLE001 - the next failed batch tries again
            logger.warning("creating the task stream failed", error=_describe(error))

    def _backoff_s(self) -> float:
        if not self._failures:
            return self._poll_s
        return min(self._poll_s * 2 ** min(self._failures, 5), 10.0)

    async def _relay_batch(self) -> int:
        batch = {"batch_size": self._batch_size}
        if self._db.is_sqlite:
            async with self._db.transaction() as conn:
                rows = (await conn.execute(_OLDEST, batch)).all()
            sent_ids = await self._publish(rows)
            if sent_ids:
                async with self._db.transaction() as conn:
                    await conn.execute(_DELETE_BY_ID, {"ids": sent_ids})
            return len(sent_ids)

        async with self._db.transaction() as conn:
            rows = (await conn.execute(_TAKE_OLDEST, batch)).all()
            sent_ids = await self._publish(rows)
            if len(sent_ids) < len(rows):
                raise UnpublishedRowsError(len(rows) - len(sent_ids), len(sent_ids))
        return len(sent_ids)

    async def _publish(self, rows: Sequence[Any]) -> list[int]:
        js = self._js
        if not rows or js is None:
            return []

        async def publish_one(row: Any) -> int:
            await js.publish(
                row.subject,
                row.payload,
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": row.msg_id},
            )
            return row.id

        results = await asyncio.gather(
            *(publish_one(r) for r in rows), return_exceptions=True
        )
        sent = [r for r in results if isinstance(r, int)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and not sent:
            raise PublishFailedError(errors[0]) from errors[0]
        if errors:
            logger.warning(
                "some outbox rows were not published",
                failed=len(errors),
                sent=len(sent),
            )
        return sent


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
