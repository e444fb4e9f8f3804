"""Recovery loop: finds runs that nobody is working on and puts them back.

- A run whose lease expired more than one ack wait plus ``REQUEUE_MARGIN_S``
  ago is scheduled again for its stage (JetStream normally redelivers its
  task first, one ack wait after the worker died; the sweeper covers a task
  that was lost). When the run has used all its attempts it fails with
  ``lease_expired``.
- A dispatched run that nobody claimed within ``redispatch_after_s`` gets
  its task published again (a NATS server that crashed before syncing its
  store can lose a task it had acknowledged).
- Expired idempotency keys are deleted.

On PostgreSQL, replicas take a transaction-level advisory lock, so only one
sweeps at a time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.log import get_logger
from bulkhead.messaging import Topology
from chat_service import idempotency
from chat_service.events import AfterCommit, OnCommit
from chat_service.lifecycle import finish_run
from chat_service.outbox import enqueue_task
from chat_service.runs import RunPolicy, first_model
from chat_service.store.database import Database, utcnow
from chat_service.store.queries import ACTIVE_STATUSES
from chat_service.store.tables import runs

logger = get_logger(__name__)

# Arbitrary constant naming the sweeper's advisory lock.
SWEEPER_LOCK_ID = 0x42554C4B
# Margin after one ack wait before the sweeper re-schedules a run whose lease
# expired, so that JetStream's own redelivery normally comes first.
REQUEUE_MARGIN_S = 5.0
BATCH = 100


class Sweeper:
    def __init__(
        self,
        db: Database,
        topology: Topology,
        policy: RunPolicy,
        interval_s: float,
        redispatch_after_s: float,
        on_commit: OnCommit,
    ) -> None:
        self._db = db
        self._topology = topology
        self._policy = policy
        self._interval_s = interval_s
        self._redispatch_after_s = redispatch_after_s
        self._on_commit = on_commit
        self._prune_every = max(1, int(60 / interval_s))
        self._rounds = 0

    async def run(self) -> None:
        logger.info("sweeper started", interval_s=self._interval_s)
        try:
            while True:
                await asyncio.sleep(self._interval_s)
                try:
                    await self.sweep_once()
                except Exception as error:  # noqa: BLE001 - the next round retries
                    logger.warning(
                        "sweep failed", error=str(error) or type(error).__name__
                    )
        finally:
            logger.info("sweeper stopped")

    async def sweep_once(self) -> AfterCommit:
        self._rounds += 1
        effects = AfterCommit()
        async with self._db.transaction() as conn:
            if not await self._take_lock(conn):
                return effects
            await self._recover_leases(conn, effects)
            await self._redispatch(conn, effects)
            if self._rounds % self._prune_every == 0:
                pruned = await idempotency.prune_expired(conn)
                if pruned:
                    logger.info("expired idempotency keys deleted", count=pruned)
        await self._on_commit(effects)
        return effects

    async def _take_lock(self, conn: AsyncConnection) -> bool:
        if self._db.is_sqlite:
            return True
        result = await conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": SWEEPER_LOCK_ID}
        )
        return bool(result.scalar())

    async def _recover_leases(
        self, conn: AsyncConnection, effects: AfterCommit
    ) -> None:
        grace_s = self._topology.ack_wait_s + REQUEUE_MARGIN_S
        cutoff = utcnow() - timedelta(seconds=grace_s)
        expired = (
            await conn.execute(
                select(runs)
                .where(
                    runs.c.status.in_(ACTIVE_STATUSES), runs.c.lease_expires_at < cutoff
                )
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for run in expired:
            if run.attempt >= self._policy.max_attempts:
                message = f"no worker finished the run in {run.attempt} attempts"
                await finish_run(
                    conn,
                    run,
                    "failed",
                    effects,
                    self._topology,
                    {"error": {"code": "lease_expired", "message": message}},
                    error_code="lease_expired",
                    error_message=message,
                )
                logger.warning(
                    "run failed: lease expired", run_id=str(run.id), attempt=run.attempt
                )
                continue
            await self._reschedule(conn, run, effects)
            logger.warning(
                "lease expired, run rescheduled",
                run_id=str(run.id),
                attempt=run.attempt,
                stage=run.stage,
            )

    async def _redispatch(self, conn: AsyncConnection, effects: AfterCommit) -> None:
        cutoff = utcnow() - timedelta(seconds=self._redispatch_after_s)
        stuck = (
            await conn.execute(
                select(runs)
                .where(
                    runs.c.status.in_(ACTIVE_STATUSES),
                    runs.c.dispatched.is_(True),
                    runs.c.lease_expires_at.is_(None),
                    or_(runs.c.dispatched_at < cutoff, runs.c.dispatched_at.is_(None)),
                )
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for run in stuck:
            await self._reschedule(conn, run, effects)
            logger.warning(
                "unclaimed run re-dispatched", run_id=str(run.id), stage=run.stage
            )

    async def _reschedule(
        self, conn: AsyncConnection, run: object, effects: AfterCommit
    ) -> None:
        now = utcnow()
        await conn.execute(
            update(runs)
            .where(runs.c.id == run.id)  # type: ignore[attr-defined]
            .values(
                lease_expires_at=None, worker_id=None, dispatched_at=now, updated_at=now
            )
        )
        model = first_model(run.plan) if run.stage == "executor" else ""  # type: ignore[attr-defined]
        await enqueue_task(conn, self._topology, run.id, run.stage, model)  # type: ignore[attr-defined]
        effects.outbox_rows += 1
