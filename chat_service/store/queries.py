"""Read queries shared by the servicers, and keyset pagination cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import and_, bindparam, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.errors import InvalidArgumentError, NotFoundError
from chat_service.store.database import as_utc
from chat_service.store.deferred import defer_update
from chat_service.store.tables import chats, messages, model_calls, runs

# A page of messages ends early once its content passes this many characters
# (at most 4 bytes each in UTF-8), so that a page of long messages stays far
# below the gRPC message limit; the cursor continues after the last one.
MAX_PAGE_CHARS = 256_000
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


def parse_uuid(value: str, what: str) -> UUID:
    """Parse an id; a malformed id cannot exist, so it is reported as not found."""
    try:
        return UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFoundError.for_resource(what) from None


# Statements of every run transition, built once: building a statement per
# call costs more CPU than executing a cached one.
_RUN_ID = bindparam("target_run_id")
_SELECT_RUN = select(runs).where(runs.c.id == _RUN_ID)
_LOCK_RUN = _SELECT_RUN.with_for_update()
_LOCK_CHAT_OF_RUN = (
    select(chats.c.id)
    .where(
        chats.c.id
        == select(runs.c.chat_id).where(runs.c.id == _RUN_ID).scalar_subquery()
    )
    .with_for_update()
)


async def get_run_row(
    conn: AsyncConnection, run_id: UUID, user_id: str | None = None, lock: bool = False
) -> Any:
    """Return the run row, or raise NotFoundError (also for another user's run)."""
    query = _LOCK_RUN if lock else _SELECT_RUN
    row = (await conn.execute(query, {"target_run_id": run_id})).first()
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFoundError.for_resource("run")
    return row


async def lock_run_and_chat(
    conn: AsyncConnection, run_id: UUID, user_id: str | None = None
) -> Any:
    """Lock the run's chat row, then the run row, and return the run.

    Every transaction that can end a run takes the locks in this order, the
    same as PostMessage (chat, then the chat's active runs). The other order
    deadlocks on PostgreSQL when a message is posted into a chat whose run
    is finishing. Raises NotFoundError like :func:`get_run_row`.
    """
    locked = await conn.execute(_LOCK_CHAT_OF_RUN, {"target_run_id": run_id})
    if locked.first() is None:
        raise NotFoundError.for_resource("run")
    return await get_run_row(conn, run_id, user_id, lock=True)


async def update_run(
    conn: AsyncConnection, run_id: UUID, values: dict[str, Any]
) -> None:
    """Set the columns in ``values`` on one run, as a deferred write."""
    await defer_update(conn, runs, ("id", run_id), values)


async def load_run_details(
    conn: AsyncConnection, run: Any
) -> tuple[Any | None, Sequence[Any]]:
    """Return the run's assistant message row and its model calls."""
    assistant = None
    if run.assistant_message_id is not None:
        assistant = (
            await conn.execute(
                select(messages).where(messages.c.id == run.assistant_message_id)
            )
        ).first()
    calls = (
        await conn.execute(
            select(model_calls)
            .where(model_calls.c.run_id == run.id)
            .order_by(model_calls.c.attempt, model_calls.c.number, model_calls.c.id)
        )
    ).all()
    return assistant, calls


# Listing names that cursors carry: the user's chats, or one chat's messages.
CHATS_LISTING = "chats"


def messages_listing(chat_id: UUID) -> str:
    return f"messages:{chat_id}"


def encode_cursor(listing: str, values: Sequence[Any]) -> str:
    """Encode the keyset ``values`` of a page's last row as an opaque cursor.

    The cursor starts with the name of its listing, so that a cursor passed
    to another listing, or to the messages of another chat, is rejected as
    malformed instead of being read as the keyset of other rows.

    NOTE: cursors made before the listing name was added are rejected too. A
    client that pages through a listing while chat_service is upgraded gets
    422 and starts again from the first page.
    """
    keyset = [str(v) if isinstance(v, UUID) else v for v in values]
    raw = orjson.dumps([listing, *keyset])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, listing: str, types: Sequence[type]) -> list[Any]:
    """Decode a cursor that :func:`encode_cursor` made for ``listing``.

    Returns its keyset values, one of each of ``types``. Raises
    InvalidArgumentError for anything else.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(values, list) or len(values) != len(types) + 1:
            raise ValueError("wrong length")
        if values[0] != listing:
            raise ValueError("cursor of another listing")
        keyset = values[1:]
        return [_cursor_value(kind, value) for kind, value in zip(types, keyset)]
    except (
        ValueError,
        TypeError,
        binascii.Error,
        UnicodeEncodeError,
        orjson.JSONDecodeError,
    ):
        raise InvalidArgumentError(
            "cursor", "must be a next_cursor of this listing"
        ) from None


def _cursor_value(kind: type, value: Any) -> Any:
    """Check one decoded cursor value; raise ValueError unless it has ``kind``.

    Integers must fit a signed 64-bit column and a datetime, so that a forged
    cursor fails here instead of in the database.
    """
    if kind is int:
        if type(value) is not int or not _MIN_CURSOR_INT <= value <= _MAX_CURSOR_INT:
            raise ValueError("cursor integer out of range")
        return value
    if kind is UUID:
        if not isinstance(value, str):
            raise ValueError("cursor id is not a string")
        return UUID(value)
    return kind(value)


async def list_chats(
    conn: AsyncConnection, user_id: str, limit: int, cursor: str
) -> tuple[Sequence[Any], str]:
    """Return a page of the user's chats, newest first, and the next cursor."""
    query = select(chats).where(chats.c.user_id == user_id)
    if cursor:
        created_us, chat_id = decode_cursor(cursor, CHATS_LISTING, (int, UUID))
        created_at = _from_micros(created_us)
        query = query.where(
            or_(
                chats.c.created_at < created_at,
                and_(chats.c.created_at == created_at, chats.c.id < chat_id),
            )
        )
    rows = (
        await conn.execute(
            query.order_by(chats.c.created_at.desc(), chats.c.id.desc()).limit(
                limit + 1
            )
        )
    ).all()
    next_cursor = ""
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(
            CHATS_LISTING, [_to_micros(last.created_at), last.id]
        )
    return rows, next_cursor


async def list_messages(
    conn: AsyncConnection, user_id: str, chat_id: UUID, limit: int, cursor: str
) -> tuple[Sequence[Any], str]:
    """Return a page of a chat's messages in conversation order."""
    owner = (
        await conn.execute(
            select(chats.c.id).where(chats.c.id == chat_id, chats.c.user_id == user_id)
        )
    ).first()
    if owner is None:
        raise NotFoundError.for_resource("chat")
    listing = messages_listing(chat_id)
    query = select(messages).where(messages.c.chat_id == chat_id)
    if cursor:
        seq, message_id = decode_cursor(cursor, listing, (int, UUID))
        query = query.where(
            tuple_(messages.c.seq, messages.c.id) > tuple_(seq, message_id)
        )
    rows = (
        await conn.execute(
            query.order_by(messages.c.seq, messages.c.id).limit(limit + 1)
        )
    ).all()
    next_cursor = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(listing, [rows[-1].seq, rows[-1].id])
    page_chars = 0
    for index, row in enumerate(rows):
        page_chars += len(row.content)
        if index and page_chars > MAX_PAGE_CHARS:
            rows = rows[:index]
            next_cursor = encode_cursor(listing, [rows[-1].seq, rows[-1].id])
            break
    return rows, next_cursor


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Cursor integers are sequence numbers or microseconds since the epoch; both
# stay within these bounds (years 1 to 9999 in microseconds, about 2**58).
_MIN_CURSOR_INT = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_CURSOR_INT = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)


def _to_micros(value: datetime) -> int:
    return (as_utc(value) - _EPOCH) // timedelta(microseconds=1)  # type: ignore[operator]


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
