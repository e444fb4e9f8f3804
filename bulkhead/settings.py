"""Settings common to every service, read from ``BULKHEAD_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Upper bound for one gRPC message in either direction. The REST layer caps a
# message at 32,000 characters (at most 128 KB of UTF-8) and a page of a list
# at 100 items, so 4 MiB leaves room for a full page of maximum-size messages.
GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class CommonSettings(BaseSettings):
    """Settings every service reads. Each service subclasses this once."""

    model_config = SettingsConfigDict(env_prefix="BULKHEAD_", extra="ignore")

    dev_mode: bool = Field(
        default=False,
        description="Development mode: relaxes secret checks and logs a warning.",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_stream: str = Field(
        default="BULKHEAD_TASKS",
        description="JetStream stream holding the work queues.",
    )
    nats_subject_prefix: str = Field(
        default="bulkhead",
        description="Prefix of every NATS subject, so that stacks can share a server.",
    )
    chat_service_addr: str = Field(
        default="127.0.0.1:50051",
        description="host:port of chat_service's gRPC server.",
    )
