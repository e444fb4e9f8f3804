"""Tables of the reference servers and the one statement that stores a message.

The tables copy the columns, keys and indexes that chat_service's chats,
messages, runs and outbox tables have, so that the reference writes the same
rows with the same index maintenance.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

POOL_SIZE = 10
SUBJECT = "bench.tasks.agent"

CREATE_TABLES = """
CREATE TABLE chats (
    id uuid PRIMARY KEY,
    user_id varchar(255) NOT NULL,
    title varchar(200) NOT NULL,
    last_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX ix_chats_user_created ON chats (user_id, created_at, id);
CREATE TABLE messages (
    id uuid PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chats (id),
    seq bigint NOT NULL,
    role varchar(16) NOT NULL,
    content text NOT NULL,
    status varchar(16) NOT NULL,
    run_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX ix_messages_chat_seq ON messages (chat_id, seq, id);
CREATE TABLE runs (
    id uuid PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chats (id),
    user_id varchar(255) NOT NULL,
    user_message_id uuid NOT NULL REFERENCES messages (id),
    user_message_seq bigint NOT NULL,
    status varchar(16) NOT NULL,
    stage varchar(16) NOT NULL,
    dispatched boolean NOT NULL,
    dispatched_at timestamptz,
    model varchar(200) NOT NULL,
    attempt bigint NOT NULL,
    event_seq bigint NOT NULL,
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX ix_runs_chat_status ON runs (chat_id, status);
CREATE INDEX ix_runs_status_lease ON runs (status, lease_expires_at);
CREATE INDEX ix_runs_user_message ON runs (user_message_id);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    subject varchar(255) NOT NULL,
    payload bytea NOT NULL,
    msg_id varchar(64) NOT NULL,
    created_at timestamptz NOT NULL
);
"""

# Foreign keys are checked at the end of the statement, so the sibling CTEs
# may reference rows inserted by each other (PostgreSQL manual, "WITH Queries",
# data-modifying statements in WITH).
INSERT_MESSAGE = """
WITH chat AS (
    INSERT INTO chats (id, user_id, title, last_seq, created_at, updated_at)
    VALUES ($1, $2, $3, 1, now(), now())
    RETURNING id
), message AS (
    INSERT INTO messages
        (id, chat_id, seq, role, content, status, run_id, created_at, updated_at)
    SELECT $4, chat.id, 1, 'user', $5, 'completed', $6, now(), now() FROM chat
    RETURNING id
), run AS (
    INSERT INTO runs
        (id, chat_id, user_id, user_message_id, user_message_seq, status, stage,
         dispatched, dispatched_at, model, attempt, event_seq, created_at,
         updated_at)
    SELECT $6, chat.id, $2, message.id, 1, 'queued', 'agent', true, now(), $7,
           0, 0, now(), now()
    FROM chat, message
    RETURNING id
), task AS (
    INSERT INTO outbox (subject, payload, msg_id, created_at)
    SELECT $8, $9, $10, now() FROM run
    RETURNING id
)
SELECT (SELECT id FROM task) AS outbox_id
"""


async def store_message(
    pool: asyncpg.Pool, user_id: str, content: str, model: str
) -> dict[str, Any]:
    """Insert chat, message, run and outbox row in one statement; return the ids."""
    chat_id, message_id, run_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    payload = json.dumps({"run_id": str(run_id)}).encode()
    await pool.fetchval(
        INSERT_MESSAGE,
        chat_id,
        user_id,
        content[:80],
        message_id,
        content,
        run_id,
        model,
        SUBJECT,
        payload,
        f"{run_id}:agent",
    )
    return {
        "chat_id": str(chat_id),
        "message_id": str(message_id),
        "run_id": str(run_id),
        "status": "queued",
    }


async def create_pool(dsn: str) -> asyncpg.Pool:
    """Open a pool of POOL_SIZE connections, the size of chat_service's default."""
    return await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
