"""Settings common to every service, read from ``BULKHEAD_*`` environment variables.

Secrets are :class:`pydantic.SecretStr`, so that they never show in a repr or
a log record. Outside development mode a service refuses to start with an
empty secret that it needs, or with a secret that looks like a placeholder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkhead.tls import GrpcTls

# Largest model output the executor keeps, in characters: at most 4 MB of
# UTF-8. A provider that honours max_tokens usually stops far earlier.
MAX_OUTPUT_CHARS = 1_000_000
# Upper bound for one gRPC message in either direction. The REST layer caps a
# user message at 32,000 characters, at most 128 KB of UTF-8. chat_service
# ends a page of messages, and the history sent with a claim, at 256,000
# characters (at most 1 MiB) after the first message, and a model output is
# at most MAX_OUTPUT_CHARS. So every message, a run with its assistant
# message included, stays below this bound.
GRPC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

MIN_SECRET_CHARS = 16
# Values that people put in example configuration files; compared after
# lower-casing and removing everything but letters and digits.
_PLACEHOLDERS = frozenset(
    {
        "changeme",
        "changethis",
        "default",
        "dev",
        "example",
        "none",
        "null",
        "password",
        "placeholder",
        "replaceme",
        "secret",
        "test",
        "todo",
        "token",
        "xxx",
    }
)
_PLACEHOLDER_PREFIXES = (
    "changeme",
    "changethis",
    "replaceme",
    "placeholder",
    "example",
)
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")


def secret_problem(value: str) -> str | None:
    """Return why ``value`` is not acceptable as a secret, or None if it is."""
    if not value:
        return "is empty"
    normalized = _NOT_ALPHANUMERIC.sub("", value.lower())
    if normalized in _PLACEHOLDERS or normalized.startswith(_PLACEHOLDER_PREFIXES):
        return "is a placeholder"
    if len(set(value)) == 1:
        return "repeats one character"
    if len(value) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    return None


class CommonSettings(BaseSettings):
    """Settings every service reads. Each service subclasses this once."""

    model_config = SettingsConfigDict(env_prefix="BULKHEAD_", extra="ignore")

    # Secret fields this service cannot run without outside development mode.
    # Other secret fields are optional, but checked when they are set.
    required_secrets: ClassVar[tuple[str, ...]] = ()

    dev_mode: bool = Field(
        default=False,
        description=(
            "Development mode: allows empty or placeholder secrets, in which case "
            "service credentials are not checked. Logged as a warning at start-up."
        ),
    )
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = Field(
        default=None, description="NATS user name; needs nats_password."
    )
    nats_password: SecretStr = Field(
        default=SecretStr(""), description="NATS password of nats_user."
    )
    nats_token: SecretStr = Field(
        default=SecretStr(""), description="NATS authentication token."
    )
    nats_stream: str = Field(
        default="BULKHEAD_TASKS",
        description="JetStream stream holding the work queues.",
    )
    nats_subject_prefix: str = Field(
        default="bulkhead",
        description="Prefix of every NATS subject, so that stacks can share a server.",
    )
    nats_ack_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds JetStream waits for a task's ack or heartbeat before "
        "it redelivers the task; the same value in every service.",
    )
    chat_service_addr: str = Field(
        default="127.0.0.1:50051",
        description="host:port of chat_service's gRPC server.",
    )
    grpc_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate this service presents: as a gRPC server, "
        "and as a client when the server requires client certificates.",
    )
    grpc_tls_key_file: Path | None = Field(
        default=None, description="PEM private key of grpc_tls_cert_file."
    )
    grpc_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates: clients verify servers against them "
        "(and use TLS only when this is set); servers verify client "
        "certificates against them when grpc_tls_require_client_cert is set.",
    )
    grpc_tls_require_client_cert: bool = Field(
        default=False, description="Servers require client certificates (mTLS)."
    )
    gateway_service_token: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Service credential of the gateway: allows the ChatService and "
            "AuthService RPCs of chat_service."
        ),
    )
    worker_service_token: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Service credential of agents and executors: allows the RunService "
            "RPCs of chat_service."
        ),
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        # A half-configured TLS set-up is an error even in development mode:
        # it would silently fall back to plaintext.
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError(
                "BULKHEAD_GRPC_TLS_CERT_FILE and BULKHEAD_GRPC_TLS_KEY_FILE "
                "must be set together"
            )
        if self.grpc_tls_require_client_cert and self.grpc_tls_ca_file is None:
            raise ValueError(
                "BULKHEAD_GRPC_TLS_REQUIRE_CLIENT_CERT needs BULKHEAD_GRPC_TLS_CA_FILE"
            )
        return self

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        problems = [
            f"BULKHEAD_{name.upper()} {problem}"
            for name, problem in self.secret_problems()
        ]
        if self.nats_password.get_secret_value() and not self.nats_user:
            problems.append("BULKHEAD_NATS_PASSWORD is set without BULKHEAD_NATS_USER")
        if problems and not self.dev_mode:
            raise ValueError(
                "; ".join(problems) + ". Set real secrets (for example the output "
                "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                "or BULKHEAD_DEV_MODE=true for local development only."
            )
        return self

    def grpc_tls(self) -> GrpcTls:
        """Return the TLS files for this service's gRPC servers and channels."""
        return GrpcTls(
            cert_file=self.grpc_tls_cert_file,
            key_file=self.grpc_tls_key_file,
            ca_file=self.grpc_tls_ca_file,
            require_client_cert=self.grpc_tls_require_client_cert,
        )

    def secret_problems(self) -> list[tuple[str, str]]:
        """Return (field name, problem) for each unacceptable secret setting."""
        problems = []
        for name, info in type(self).model_fields.items():
            if info.annotation is not SecretStr:
                continue
            value = getattr(self, name).get_secret_value()
            if not value and name not in self.required_secrets:
                continue
            problem = secret_problem(value)
            if problem is not None:
                problems.append((name, problem))
        return problems

    def dev_mode_warnings(self) -> list[str]:
        """Describe the secrets that development mode lets through right now."""
        if not self.dev_mode:
            return []
        return [
            f"BULKHEAD_{name.upper()} {problem}"
            for name, problem in self.secret_problems()
        ]


def warn_if_dev_mode(settings: CommonSettings, logger: Any) -> None:
    """Log a WARNING at start-up when development mode is on, naming what it relaxes."""
    if not settings.dev_mode:
        return
    logger.warning(
        "DEVELOPMENT MODE IS ON: secret checks are relaxed; never run this in "
        "production (unset BULKHEAD_DEV_MODE)",
        relaxed=settings.dev_mode_warnings() or "none: every secret passes the checks",
    )
