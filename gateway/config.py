"""Gateway settings, read from ``BULKHEAD_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from bulkhead.settings import CommonSettings
from gateway.jwt_auth import ALLOWED_ALGORITHMS, PUBLIC_KEY_ALGORITHMS, JwtConfig

# RFC 7518, section 3.2: an HS256 key must be at least as long as the hash.
MIN_HS256_SECRET_BYTES = 32
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class GatewaySettings(CommonSettings):
    """Settings of the REST and SSE gateway."""

    required_secrets = ("gateway_service_token",)

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
    gateway_opentelemetry: bool = Field(
        default=False,
        description=(
            "Emit FastAPI's OpenTelemetry request spans, metrics and logs through "
            "the globally configured providers. Off, no request pays for the "
            "check whether a provider is configured."
        ),
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

    max_streams_per_user: int = Field(
        default=5,
        ge=0,
        description=(
            "Open SSE streams one user may have on one gateway process; 0 "
            "disables the limit. Counted per process, not across replicas."
        ),
    )
    sse_write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds one SSE write may wait for a slow reader before the "
            "stream is closed; the client resumes with Last-Event-ID."
        ),
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ALLOWED_ALGORITHMS),
        description=(
            "Comma-separated JWT algorithms to accept, among HS256, RS256 and "
            "ES256; only those with a configured key are used."
        ),
    )
    jwt_hs256_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Shared secret for HS256 tokens, at least 32 bytes.",
    )
    jwt_public_key_file: Path | None = Field(
        default=None, description="PEM public key file for RS256 or ES256 tokens."
    )
    jwt_jwks_url: str | None = Field(
        default=None,
        description="URL of the identity provider's JWKS, for RS256 and ES256.",
    )
    jwt_issuer: str | None = Field(
        default=None, description="Required iss claim; unset to accept any."
    )
    jwt_audience: str | None = Field(
        default=None,
        description="Required aud claim; unset rejects tokens that carry one.",
    )
    jwt_leeway_s: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew allowed on exp and nbf."
    )
    jwt_jwks_cache_s: float = Field(
        default=300.0, gt=0, description="Seconds a fetched JWKS is used."
    )

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, algorithms: list[str]) -> list[str]:
        for name in algorithms:
            if name not in ALLOWED_ALGORITHMS:
                raise ValueError(
                    f"unsupported JWT algorithm {name!r}: choose among "
                    + ", ".join(ALLOWED_ALGORITHMS)
                )
        return algorithms

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme == "https" or (
            parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
        ):
            return url
        raise ValueError(
            f"invalid JWKS URL {url!r}: use https (http only for 127.0.0.1)"
        )

    @model_validator(mode="after")
    def _check_hs256_secret(self) -> Self:
        secret = self.jwt_hs256_secret.get_secret_value().encode()
        if secret and len(secret) < MIN_HS256_SECRET_BYTES and not self.dev_mode:
            raise ValueError(
                f"BULKHEAD_JWT_HS256_SECRET must be at least "
                f"{MIN_HS256_SECRET_BYTES} bytes"
            )
        return self

    def jwt_config(self) -> JwtConfig | None:
        """Return the JWT verification settings, or None when JWTs are off.

        Reads the public key file; raises OSError when it cannot be read.
        """
        secret = self.jwt_hs256_secret.get_secret_value().encode()
        has_public_key = self.jwt_public_key_file is not None or bool(self.jwt_jwks_url)
        algorithms = [
            name
            for name in self.jwt_algorithms
            if (name == "HS256" and secret)
            or (name in PUBLIC_KEY_ALGORITHMS and has_public_key)
        ]
        if not algorithms:
            return None
        return JwtConfig(
            algorithms=algorithms,
            hs256_secret=secret,
            public_key_pem=(
                self.jwt_public_key_file.read_bytes()
                if self.jwt_public_key_file is not None
                else b""
            ),
            jwks_url=self.jwt_jwks_url or "",
            issuer=self.jwt_issuer,
            audience=self.jwt_audience,
            leeway_s=self.jwt_leeway_s,
            jwks_cache_s=self.jwt_jwks_cache_s,
            jwks_timeout_s=self.gateway_grpc_timeout_s,
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
