"""chat_service settings."""

from __future__ import annotations

from pydantic import Field

from bulkhead.settings import CommonSettings

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/bulkhead.db"


class ChatServiceSettings(CommonSettings):
    """Settings of chat_service, from ``BULKHEAD_*`` environment variables."""

    required_secrets = ("gateway_service_token", "worker_service_token")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="PostgreSQL connections per chat_service process; a "
        "transaction beyond them waits up to 4 s for a free one.",
    )
    database_connect_timeout_s: float = Field(default=3.0, gt=0)
    chat_service_listen: str = "127.0.0.1:50051"
    models_file: str | None = None

    lease_s: float = Field(default=30.0, gt=0, description="Lease of one run attempt.")
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Claims per run before it fails with lease_expired.",
    )
    idempotency_ttl_s: float = Field(default=24 * 3600.0, ge=3600)
    relay_batch_size: int = Field(default=200, ge=1)
    relay_poll_s: float = Field(default=1.0, gt=0)
    sweep_interval_s: float = Field(default=2.0, gt=0)
    # A dispatched run that no worker has claimed for this long gets its task
    # published again (the first may have been lost with an unsynced NATS store).
    redispatch_after_s: float = Field(default=120.0, gt=0)
    # Watchers are woken by the hub (in-process) and by notices from other
    # replicas; the poll only covers a lost notice, so it can be slow, and a
    # fast one costs a query per open stream and interval.
    watch_poll_s: float = Field(
        default=10.0, gt=0, description="Database re-read interval of an idle watcher."
    )
    watch_queue_size: int = Field(default=256, ge=8)
    max_wait_s: float = Field(default=30.0, gt=0)
    max_messages_per_minute: int = Field(
        default=60,
        ge=0,
        description=(
            "Messages one user may post per fixed one-minute window, counted in "
            "the database so that it holds across replicas; 0 disables the limit."
        ),
    )


class DatabaseToolSettings(ChatServiceSettings):
    """Settings of the migration and admin commands, which open only the database.

    They call no other service, so the service credentials are not required.
    """

    required_secrets = ()
