"""Gateway settings, read from ``BULKHEAD_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from bulkhead.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """Settings of the REST and SSE gateway."""

    gateway_host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    gateway_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    gateway_auth_cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Seconds a resolved API key stays cached in the gateway process. "
            "A revoked key keeps working for at most this long; 0 disables the cache."
        ),
    )
    gateway_auth_cache_max_entries: int = Field(
        default=10_000, ge=1, description="Maximum number of API keys cached."
    )
    gateway_grpc_timeout_s: float = Field(
        default=5.0, gt=0, description="Deadline in seconds of each unary gRPC call."
    )
    gateway_readiness_timeout_s: float = Field(
        default=2.0, gt=0, description="Deadline in seconds of the /readyz check."
    )
    gateway_shutdown_timeout_s: int = Field(
        default=10,
        ge=0,
        description="Seconds to let open requests and streams finish on SIGTERM.",
    )
    gateway_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS; empty disables CORS.",
    )
    max_content_chars: int = Field(
        default=32_000, ge=1, description="Maximum characters of a user message."
    )
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1, description="Maximum size of a request body in bytes."
    )
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, description="Seconds between SSE keep-alive comments."
    )
    sse_max_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds after which an SSE stream ends; clients then resume it.",
    )
    sse_retry_ms: int = Field(
        default=1000, ge=0, description="Reconnect delay sent to SSE clients, in ms."
    )

    @field_validator("gateway_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("gateway_cors_origins")
    @classmethod
    def _reject_wildcard(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"invalid CORS origin {origin!r}: list explicit origins "
                    "such as https://app.example.com"
                )
        return [origin.rstrip("/") for origin in origins]
