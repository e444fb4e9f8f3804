"""Idempotency keys: one (user, key) maps to one stored PostMessage response.

The key row is inserted first in the PostMessage transaction with
``ON CONFLICT DO NOTHING``. On PostgreSQL a concurrent duplicate blocks on
the first transaction's row and then sees it committed (READ COMMITTED); on
SQLite every write transaction is serialized by ``BEGIN IMMEDIATE``. Either
way exactly one request stores a message and the others replay its response.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.errors import IdempotencyKeyReusedError
from chat_service.store.database import as_utc, utcnow
from chat_service.store.tables import idempotency_keys


def fingerprint(content: str, chat_id: str, model: str, on_busy: int) -> str:
    """Hash the request fields that define "the same request"."""
    canonical = orjson.dumps(
        {"chat_id": chat_id, "content": content, "model": model, "on_busy": on_busy},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Claim:
    """Outcome of claiming a key: either new, or a stored response to replay."""

    replay: bytes | None


async def claim_key(
    conn: AsyncConnection,
    user_id: str,
    key: str,
    request_fingerprint: str,
    ttl_s: float,
) -> Claim:
    """Reserve ``key`` for this request or return the response stored for it.

    Raises IdempotencyKeyReusedError when the key was used with another body.
    """
    now = utcnow()
    values = {
        "user_id": user_id,
        "key": key,
        "fingerprint": request_fingerprint,
        "response": None,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    result = await conn.execute(
        dialect.insert(idempotency_keys).values(values).on_conflict_do_nothing()
    )
    if result.rowcount == 1:
        return Claim(replay=None)

    existing = (
        await conn.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key
            )
        )
    ).one()
    expires_at = as_utc(existing.expires_at)
    if expires_at is not None and expires_at <= now:
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key)
            .values(values)
        )
        return Claim(replay=None)
    if existing.fingerprint != request_fingerprint:
        raise IdempotencyKeyReusedError(
            "This Idempotency-Key was already used with a different request body."
        )
    return Claim(replay=existing.response)


async def store_response(
    conn: AsyncConnection, user_id: str, key: str, response: bytes
) -> None:
    await conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key)
        .values(response=response)
    )


async def prune_expired(conn: AsyncConnection) -> int:
    result = await conn.execute(
        delete(idempotency_keys).where(idempotency_keys.c.expires_at < utcnow())
    )
    return result.rowcount or 0
