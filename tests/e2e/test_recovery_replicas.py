"""Several chat_service replicas on one PostgreSQL database: sweeper and relays.

These tests run chat_service's sweeper and outbox relay in the test process,
against a migrated PostgreSQL database, twice over, as two replicas would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from bulkhead.messaging import Subjects, Topology
from chat_service.events import AfterCommit
from chat_service.outbox import OutboxRelay, enqueue_task
from chat_service.runs import RunPolicy
from chat_service.store.database import Database, utcnow
from chat_service.store.tables import chats, messages, outbox, runs
from chat_service.sweeper import SWEEPER_LOCK_ID, Sweeper
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.postgres

ROWS = 200


def _topology() -> Topology:
    return Topology(stream="REPLICA_TEST", subjects=Subjects("replicatest"))


@pytest.fixture
def migrated_url(create_postgres_database: Callable[[], str]) -> str:
    url = create_postgres_database()
    subprocess.run(
        [sys.executable, "-m", "chat_service.migrate"],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "BULKHEAD_DATABASE_URL": url, "BULKHEAD_DEV_MODE": "true"},
        capture_output=True,
        timeout=60,
    )
    return url


@pytest.fixture
async def database(migrated_url: str) -> AsyncIterator[Database]:
    db = Database(migrated_url, pool_size=4)
    yield db
    await db.dispose()


class RecordingJetStream:
    """Stands in for JetStream: records each publish, slowly enough to overlap."""

    def __init__(self) -> None:
        self.msg_ids: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def publish(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]
    ) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.002)
        self.msg_ids.append(headers["Nats-Msg-Id"])
        self.in_flight -= 1


async def _insert_run(db: Database, **values: Any) -> uuid.UUID:
    now = utcnow()
    chat_id, message_id, run_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            insert(chats).values(
                id=chat_id,
                user_id="u",
                title="t",
                last_seq=1,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(messages).values(
                id=message_id,
                chat_id=chat_id,
                seq=1,
                role="user",
                content="hi",
                status="completed",
                run_id=run_id,
                created_at=now,
                updated_at=now,
            )
        )
        run = {
            "id": run_id,
            "chat_id": chat_id,
            "user_id": "u",
            "user_message_id": message_id,
            "user_message_seq": 1,
            "status": "running",
            "stage": "executor",
            "dispatched": True,
            "dispatched_at": now,
            "model": "m",
            "attempt": 1,
            "event_seq": 0,
            "created_at": now,
            "updated_at": now,
        }
        await conn.execute(insert(runs).values({**run, **values}))
    return run_id


async def test_replicas_relays_publish_each_row_once(database: Database) -> None:
    topology = _topology()
    async with database.transaction() as conn:
        for _ in range(ROWS):
            await enqueue_task(conn, topology, uuid.uuid4(), "agent")
    jetstream = RecordingJetStream()
    relays = [OutboxRelay(database, batch_size=20, poll_s=0.05) for _ in range(3)]
    for relay in relays:
        relay.attach(jetstream)  # type: ignore[arg-type]

    await asyncio.gather(*(relay._drain() for relay in relays))

    counts = Counter(jetstream.msg_ids)
    assert len(counts) == ROWS
    assert max(counts.values()) == 1
    assert sum(relay.published for relay in relays) == ROWS
    assert sum(1 for relay in relays if relay.published) >= 2  # they shared it
    async with database.transaction() as conn:
        left = (await conn.execute(select(outbox.c.id))).all()
    assert left == []


async def test_replicas_one_sweeper_at_a_time(database: Database) -> None:
    topology = _topology()
    expired = utcnow() - timedelta(minutes=5)
    run_id = await _insert_run(database, lease_expires_at=expired, worker_id="dead")
    policy = RunPolicy(lease_s=5.0, max_attempts=5)

    async def on_commit(effects: AfterCommit) -> None:
        return None

    sweepers = [
        Sweeper(database, topology, policy, 1.0, 60.0, on_commit) for _ in range(2)
    ]

    # While one replica holds the lock, the other's round does nothing.
    async with database.transaction() as holder:
        taken = await holder.execute(
            text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": SWEEPER_LOCK_ID}
        )
        assert taken.scalar() is True
        skipped = await sweepers[1].sweep_once()
        assert skipped.outbox_rows == 0

    results = await asyncio.gather(*(s.sweep_once() for s in sweepers))

    assert sorted(r.outbox_rows for r in results) == [0, 1]
    async with database.transaction() as conn:
        run = (await conn.execute(select(runs).where(runs.c.id == run_id))).one()
        rows = (await conn.execute(select(outbox.c.id))).all()
    assert run.lease_expires_at is None
    assert run.worker_id is None
    assert len(rows) == 1
