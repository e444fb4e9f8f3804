"""API keys: random, prefixed, stored as SHA-256 hashes, revocable.

A key looks like ``bk_<43 url-safe characters>`` (256 bits of randomness).
Only the hash and the first characters (for listings) are stored; the key
itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_service.store.database import utcnow
from chat_service.store.tables import api_keys

KEY_PREFIX = "bk_"
_SHOWN_CHARACTERS = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def create_key(
    conn: AsyncConnection, user_id: str, name: str = ""
) -> tuple[str, uuid.UUID]:
    """Create a key for ``user_id``; returns the key (shown once) and its id."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    await conn.execute(
        insert(api_keys).values(
            id=key_id,
            user_id=user_id,
            name=name,
            prefix=key[:_SHOWN_CHARACTERS],
            key_hash=hash_key(key),
            created_at=utcnow(),
        )
    )
    return key, key_id


async def authenticate(conn: AsyncConnection, key: str) -> tuple[str, uuid.UUID] | None:
    """Return (user id, key id) for a valid, unrevoked key, else None."""
    row = (
        await conn.execute(
            select(api_keys.c.id, api_keys.c.user_id).where(
                api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    return (row.user_id, row.id) if row else None


async def list_keys(
    conn: AsyncConnection, user_id: str | None = None
) -> list[ApiKeyInfo]:
    query = select(api_keys).order_by(api_keys.c.created_at)
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    rows = (await conn.execute(query)).all()
    return [
        ApiKeyInfo(r.id, r.user_id, r.name, r.prefix, r.created_at, r.revoked_at)
        for r in rows
    ]


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return (result.rowcount or 0) == 1
