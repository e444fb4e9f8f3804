"""A task cancelled inside a SQLite transaction must not keep the write lock.

gRPC cancels a handler when its caller's deadline passes or the caller goes
away, and the handler may be in the middle of a statement. SQLAlchemy then
closes the connection. Unless the connection rolls back first, SQLite keeps
its transaction open while its cursors are still referenced, and every other
writer, the admin command included, fails with "database is locked".
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from chat_service.store.database import Database
from chat_service.store.engine import RollbackOnClose

CANCEL_ROUNDS = 300


def _write_from_another_process(path: Path) -> None:
    """Take the write lock as another process would, with a short busy wait."""
    other = sqlite3.connect(path, timeout=0.3, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO notes (body) VALUES ('outside')")
        other.execute("COMMIT")
    finally:
        other.close()


def test_close_mid_statement_releases_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE notes (body TEXT)")
    setup.executemany("INSERT INTO notes VALUES (?)", [("kept",)] * 10)
    setup.close()

    conn = sqlite3.connect(path, isolation_level=None, factory=RollbackOnClose)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO notes VALUES ('never committed')")
    reading = conn.execute("SELECT body FROM notes")
    reading.fetchone()  # the statement stays active while ``reading`` lives
    conn.close()

    _write_from_another_process(path)
    check = sqlite3.connect(path)
    bodies = [row[0] for row in check.execute("SELECT body FROM notes")]
    check.close()
    assert bodies.count("kept") == 10
    assert "never committed" not in bodies
    assert bodies.count("outside") == 1
    del reading


@pytest.fixture
async def notes_db(tmp_path: Path) -> AsyncIterator[tuple[Database, Path]]:
    path = tmp_path / "notes.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    async with database.transaction() as conn:
        await conn.execute(sa.text("CREATE TABLE notes (body TEXT)"))
    yield database, path
    await database.dispose()


async def test_cancelled_transactions_keep_database_writable(
    notes_db: tuple[Database, Path],
) -> None:
    db, path = notes_db
    chooser = random.Random(7)

    async def write_and_read(rows: int) -> None:
        async with db.transaction() as conn:
            for _ in range(rows):
                await conn.execute(sa.text("INSERT INTO notes VALUES ('inside')"))
            await conn.execute(sa.text("SELECT count(*) FROM notes"))

    for round_number in range(CANCEL_ROUNDS):
        tasks = [
            asyncio.create_task(write_and_read(chooser.randint(1, 4))) for _ in range(4)
        ]
        await asyncio.sleep(chooser.uniform(0, 0.01))
        for task in tasks:
            if chooser.random() < 0.5:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        try:
            await asyncio.to_thread(_write_from_another_process, path)
        except sqlite3.OperationalError as error:
            pytest.fail(f"round {round_number}: another writer got {error}")
        async with asyncio.timeout(5):
            await write_and_read(1)
