"""Table definitions (SQLAlchemy Core). Alembic migrations mirror this file."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _timestamp(name: str, nullable: bool = False) -> Column:
    return Column(name, DateTime(timezone=True), nullable=nullable)


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", String(255), nullable=False, index=True),
    Column("name", String(200), nullable=False, default=""),
    # First characters of the key, shown in listings so a key can be recognised.
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    _timestamp("created_at"),
    _timestamp("revoked_at", nullable=True),
)

chats = Table(
    "chats",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("title", String(200), nullable=False, default=""),
    # Sequence number of the newest user message. A user message takes the
    # next odd number and its assistant message the even one after it.
    Column("last_seq", BigInteger, nullable=False, default=0),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    Index("ix_chats_user_created", "user_id", "created_at", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("chat_id", Uuid, ForeignKey("chats.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("run_id", Uuid, nullable=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    Index("ix_messages_chat_seq", "chat_id", "seq", "id"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("chat_id", Uuid, ForeignKey("chats.id"), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("user_message_id", Uuid, ForeignKey("messages.id"), nullable=False),
    Column("user_message_seq", BigInteger, nullable=False),
    Column("assistant_message_id", Uuid, nullable=True),
    Column("status", String(16), nullable=False),
    # "agent" or "executor": which worker stage owns the run next.
    Column("stage", String(16), nullable=False),
    # False while the run waits behind an earlier run of its chat.
    Column("dispatched", Boolean, nullable=False, default=False),
    _timestamp("dispatched_at", nullable=True),
    Column("model", String(200), nullable=False),
    Column("model_used", String(200), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    # Fencing token: incremented by every claim.
    Column("attempt", BigInteger, nullable=False, default=0),
    Column("worker_id", String(200), nullable=True),
    _timestamp("lease_expires_at", nullable=True),
    Column("plan", LargeBinary, nullable=True),
    Column("event_seq", BigInteger, nullable=False, default=0),
    # Last AppendOutput batch stored for the current attempt.
    Column("output_batch", BigInteger, nullable=False, default=0),
    Column("has_output", Boolean, nullable=False, default=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    _timestamp("finished_at", nullable=True),
    Index("ix_runs_chat_status", "chat_id", "status"),
    Index("ix_runs_status_lease", "status", "lease_expires_at"),
    Index("ix_runs_user_message", "user_message_id"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("run_id", Uuid, ForeignKey("runs.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("type", String(32), nullable=False),
    Column("data", Text, nullable=False),
    _timestamp("created_at"),
)

model_calls = Table(
    "model_calls",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("run_id", Uuid, ForeignKey("runs.id"), nullable=False, index=True),
    Column("attempt", BigInteger, nullable=False),
    Column("number", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(64), nullable=False),
    _timestamp("started_at", nullable=True),
    _timestamp("ended_at", nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("error_class", String(100), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("subject", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    # Nats-Msg-Id header: JetStream drops a second publish with the same id
    # inside the stream's duplicate window.
    Column("msg_id", String(64), nullable=False),
    _timestamp("created_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    # Serialized PostMessageResponse, replayed byte for byte.
    Column("response", LargeBinary, nullable=True),
    _timestamp("created_at"),
    _timestamp("expires_at"),
    Index("ix_idempotency_keys_expires", "expires_at"),
)

# Messages each user posted in the current one-minute window (fixed windows,
# numbered in minutes since the Unix epoch). One row per user: a post in a
# new window resets the count, so no clean-up is needed.
message_rate_counters = Table(
    "message_rate_counters",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("window_minute", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
)
