"""Deferred writes: queued in a transaction, sent as one statement on
PostgreSQL before the next statement or the commit, and seen by every later
read, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from chat_service.store.database import Database, utcnow
from chat_service.store.deferred import defer_insert, defer_update
from chat_service.store.tables import chats, outbox


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    # One connection, so that every transaction reuses the same one.
    database = Database(database_url, pool_size=1)
    yield database
    await database.dispose()


@pytest.fixture
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL of every statement sent to the database, in order, BEGIN aside."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if not sql.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE
            sent.append(sql)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    yield sent
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)


def _chat(title: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": uuid.uuid4(),
        "user_id": "deferred-user",
        "title": title,
        "last_seq": 0,
        "created_at": now,
        "updated_at": now,
    }


def _outbox_row(payload: bytes) -> dict[str, Any]:
    return {
        "subject": "deferred.test",
        "payload": payload,
        "msg_id": uuid.uuid4().hex,
        "created_at": utcnow(),
    }


async def _titles(db: Database) -> dict[uuid.UUID, str]:
    async with db.transaction() as conn:
        rows = await conn.execute(sa.select(chats.c.id, chats.c.title))
        return {row.id: row.title for row in rows}


async def test_writes_sent_as_one_statement(
    db: Database, statements: list[str]
) -> None:
    first, second = _chat("first"), _chat("second")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [first, second])
        await defer_insert(conn, outbox, [_outbox_row(b"a")])
        queued = list(statements)

    if db.is_sqlite:
        assert len(queued) == 2  # SQLite runs each write at once
        assert len(statements) == 2
    else:
        assert queued == []
        assert len(statements) == 1
        assert statements[0].startswith("WITH deferred_0 AS (INSERT INTO chats")
    assert await _titles(db) == {first["id"]: "first", second["id"]: "second"}


async def test_update_sends_its_table_first(
    db: Database, statements: list[str]
) -> None:
    chat = _chat("before")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [chat])
        await defer_update(conn, chats, ("id", chat["id"]), {"title": "after"})
        queued = list(statements)

    assert queued[0].startswith("INSERT INTO chats")
    assert len(queued) == (2 if db.is_sqlite else 1)
    assert statements[-1].startswith("UPDATE chats")
    assert await _titles(db) == {chat["id"]: "after"}


async def test_read_sees_deferred_writes(db: Database) -> None:
    chat = _chat("before")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [chat])
        await defer_update(conn, chats, ("id", chat["id"]), {"title": "after"})
        title = (
            await conn.execute(sa.select(chats.c.title).where(chats.c.id == chat["id"]))
        ).scalar_one()

    assert title == "after"


async def test_two_updates_of_one_row(db: Database) -> None:
    chat = _chat("t")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [chat])
    async with db.transaction() as conn:
        await defer_update(conn, chats, ("id", chat["id"]), {"title": "one"})
        await defer_update(conn, chats, ("id", chat["id"]), {"last_seq": 7})

    async with db.transaction() as conn:
        row = (
            await conn.execute(sa.select(chats).where(chats.c.id == chat["id"]))
        ).one()
    assert row.title == "one"
    assert row.last_seq == 7


async def test_update_appends_text(db: Database) -> None:
    chat = _chat("Hello")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [chat])
        await defer_update(
            conn, chats, ("id", chat["id"]), {"title": ", world"}, append=("title",)
        )
        await defer_update(
            conn, chats, ("id", chat["id"]), {"title": "!"}, append=("title",)
        )

    assert await _titles(db) == {chat["id"]: "Hello, world!"}


async def test_rows_keep_every_value(db: Database) -> None:
    payloads = [b"\x00binary", b"", "é".encode()]
    async with db.transaction() as conn:
        await defer_insert(conn, outbox, [_outbox_row(p) for p in payloads])

    async with db.transaction() as conn:
        stored = (
            await conn.execute(sa.select(outbox.c.payload).order_by(outbox.c.id))
        ).scalars()
        assert list(stored) == payloads


async def test_rollback_discards_queue(db: Database, statements: list[str]) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await defer_insert(conn, chats, [_chat("lost")])
            raise RuntimeError("abort the transaction")
    kept = _chat("kept")
    async with db.transaction() as conn:
        await defer_insert(conn, chats, [kept])

    assert await _titles(db) == {kept["id"]: "kept"}
    assert not any("lost" in sql for sql in statements)
