"""Read queries: the not-found errors of unknown and malformed ids, and
pagination cursors that each belong to one listing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy import insert

from chat_service.errors import InvalidArgumentError, NotFoundError
from chat_service.store import queries
from chat_service.store.database import Database
from chat_service.store.tables import chats, messages

USER = "cursor-user"
_START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=2)
    yield database
    await database.dispose()


async def add_chat(db: Database, age_s: int, message_count: int) -> UUID:
    """Store a chat of USER, created ``age_s`` seconds after _START, with
    ``message_count`` user messages."""
    chat_id = uuid.uuid4()
    created_at = _START + timedelta(seconds=age_s)
    async with db.transaction() as conn:
        await conn.execute(
            insert(chats).values(
                id=chat_id,
                user_id=USER,
                title="",
                last_seq=message_count,
                created_at=created_at,
                updated_at=created_at,
            )
        )
        for seq in range(1, message_count + 1):
            await conn.execute(
                insert(messages).values(
                    id=uuid.uuid4(),
                    chat_id=chat_id,
                    seq=seq,
                    role="user",
                    content=f"message {seq}",
                    status="completed",
                    created_at=created_at,
                    updated_at=created_at,
                )
            )
    return chat_id


async def chats_cursor(db: Database) -> str:
    async with db.transaction() as conn:
        _, cursor = await queries.list_chats(conn, USER, 1, "")
    assert cursor
    return cursor


async def messages_cursor(db: Database, chat_id: UUID) -> str:
    async with db.transaction() as conn:
        _, cursor = await queries.list_messages(conn, USER, chat_id, 1, "")
    assert cursor
    return cursor


def assert_cursor_rejected(error: InvalidArgumentError) -> None:
    assert [violation.field for violation in error.violations] == ["cursor"]
    assert error.message == "Invalid cursor: must be a next_cursor of this listing."


async def test_chats_cursor_rejected_by_messages(db: Database) -> None:
    older = await add_chat(db, age_s=0, message_count=3)
    await add_chat(db, age_s=1, message_count=3)
    cursor = await chats_cursor(db)

    with pytest.raises(InvalidArgumentError) as raised:
        async with db.transaction() as conn:
            await queries.list_messages(conn, USER, older, 10, cursor)

    assert_cursor_rejected(raised.value)


async def test_messages_cursor_rejected_by_chats(db: Database) -> None:
    chat_id = await add_chat(db, age_s=0, message_count=3)
    await add_chat(db, age_s=1, message_count=0)
    cursor = await messages_cursor(db, chat_id)

    with pytest.raises(InvalidArgumentError) as raised:
        async with db.transaction() as conn:
            await queries.list_chats(conn, USER, 10, cursor)

    assert_cursor_rejected(raised.value)


async def test_messages_cursor_rejected_by_other_chat(db: Database) -> None:
    first = await add_chat(db, age_s=0, message_count=3)
    second = await add_chat(db, age_s=1, message_count=3)
    cursor = await messages_cursor(db, first)

    with pytest.raises(InvalidArgumentError) as raised:
        async with db.transaction() as conn:
            await queries.list_messages(conn, USER, second, 10, cursor)

    assert_cursor_rejected(raised.value)


async def test_cursors_continue_own_listing(db: Database) -> None:
    older = await add_chat(db, age_s=0, message_count=3)
    newer = await add_chat(db, age_s=1, message_count=0)

    async with db.transaction() as conn:
        first_chats, chats_next = await queries.list_chats(conn, USER, 1, "")
        rest_chats, chats_end = await queries.list_chats(conn, USER, 10, chats_next)
        first_messages, messages_next = await queries.list_messages(
            conn, USER, older, 2, ""
        )
        rest_messages, messages_end = await queries.list_messages(
            conn, USER, older, 10, messages_next
        )

    assert [row.id for row in first_chats] == [newer]
    assert [row.id for row in rest_chats] == [older]
    assert chats_end == ""
    assert [row.seq for row in first_messages] == [1, 2]
    assert [row.seq for row in rest_messages] == [3]
    assert messages_end == ""


@pytest.mark.parametrize("kind", ["run", "chat"])
def test_malformed_id_not_found_wording(kind: str) -> None:
    with pytest.raises(NotFoundError) as raised:
        queries.parse_uuid("not-a-uuid", kind)

    assert raised.value.message == f"The {kind} was not found."


async def test_unknown_run_not_found_wording(db: Database) -> None:
    async with db.transaction() as conn:
        with pytest.raises(NotFoundError) as unknown:
            await queries.get_run_row(conn, uuid.uuid4(), USER)
        with pytest.raises(NotFoundError) as unknown_locked:
            await queries.lock_run_and_chat(conn, uuid.uuid4(), USER)

    assert unknown.value.message == "The run was not found."
    assert unknown_locked.value.message == "The run was not found."


async def test_unknown_chat_not_found_wording(db: Database) -> None:
    async with db.transaction() as conn:
        with pytest.raises(NotFoundError) as unknown:
            await queries.list_messages(conn, USER, uuid.uuid4(), 10, "")

    assert unknown.value.message == "The chat was not found."


async def test_other_users_chat_not_found_wording(db: Database) -> None:
    chat_id = await add_chat(db, age_s=0, message_count=1)

    async with db.transaction() as conn:
        with pytest.raises(NotFoundError) as other_user:
            await queries.list_messages(conn, "someone-else", chat_id, 10, "")

    assert other_user.value.message == "The chat was not found."
