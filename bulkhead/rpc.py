"""gRPC helpers shared by every service: servers, channels, metadata and errors.

Every server gets the standard health service and server reflection (v1 and
v1alpha, see :mod:`bulkhead.reflection`), so ``grpcurl -plaintext HOST:PORT
list`` works.
Errors carry a ``google.rpc.ErrorInfo`` detail whose ``reason`` is one of
:class:`Reason`, so that clients branch on a stable value, not on a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from bulkhead.reflection import enable_reflection
from bulkhead.settings import GRPC_MAX_MESSAGE_BYTES
from bulkhead.tls import GrpcTls

USER_ID_METADATA = "x-bulkhead-user-id"
# A user id: 1 to 255 printable ASCII characters without spaces, because gRPC
# metadata values are ASCII and ids are stored in 255-character columns.
USER_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
REQUEST_ID_METADATA = "x-request-id"
# Service credential of the calling service, as ``Bearer <token>``: the
# gateway's token allows ChatService and AuthService, a worker's RunService.
SERVICE_TOKEN_METADATA = "authorization"
ERROR_DOMAIN = "bulkhead"


class HealthServicer(health.aio.HealthServicer):
    """The standard health service with List implemented.

    grpcio-health-checking's servicer leaves List unimplemented, although the
    service it registers, and reflection, advertise it.
    """

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # The library keeps every status in _server_status, which both set()
        # and enter_graceful_shutdown() update.
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


_MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
]

# Methods that are safe to repeat: reads, and worker reports that
# chat_service de-duplicates (batch numbers, idempotent completion).
# PostMessage is not listed: without an idempotency key a repeat after a lost
# reply would store the message twice.
_RETRYABLE_METHODS = [
    {"service": "chat.v1.ChatService", "method": "GetRun"},
    {"service": "chat.v1.ChatService", "method": "ListChats"},
    {"service": "chat.v1.ChatService", "method": "ListMessages"},
    {"service": "chat.v1.AuthService"},
    {"service": "chat.v1.RunService", "method": "RenewLease"},
    {"service": "chat.v1.RunService", "method": "AppendOutput"},
    {"service": "chat.v1.RunService", "method": "CompleteRun"},
    {"service": "chat.v1.RunService", "method": "FailRun"},
]
_SERVICE_CONFIG = {
    # Spreads calls over every address of an ``ipv4:`` list of replicas;
    # the default, pick_first, would send them all to the first one.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": _RETRYABLE_METHODS,
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 3,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


class Reason(StrEnum):
    """Values of ``ErrorInfo.reason`` that Bulkhead's servers send."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    SERVICE_UNAUTHENTICATED = "SERVICE_UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    CHAT_BUSY = "CHAT_BUSY"
    RUN_FINISHED = "RUN_FINISHED"
    RUN_NOT_RETRYABLE = "RUN_NOT_RETRYABLE"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    RATE_LIMITED = "RATE_LIMITED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class RpcErrorDetail:
    """Code, ErrorInfo reason and field violations of a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: Reason,
    metadata: Mapping[str, str] | None = None,
    violations: Iterable[FieldViolation] = (),
) -> grpc.Status:
    """Build a status with ErrorInfo (and BadRequest for field violations)."""
    details = []
    info = error_details_pb2.ErrorInfo(
        reason=reason.value, domain=ERROR_DOMAIN, metadata=dict(metadata or {})
    )
    details.append(_pack(info))
    violations = list(violations)
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        details.append(_pack(bad_request))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def parse_error(error: grpc.RpcError) -> RpcErrorDetail:
    """Extract code, reason and field violations from a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    detail = RpcErrorDetail(code=code, message=message or "")
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is None:
        return detail
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            detail.reason = info.reason
            detail.metadata = dict(info.metadata)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
            detail.violations = [
                FieldViolation(v.field, v.description)
                for v in bad_request.field_violations
            ]
    return detail


def create_server(
    service_names: Iterable[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, HealthServicer]:
    """Create an aio server with health checking and reflection registered.

    The caller adds its own servicers, binds a port and starts the server.
    ``service_names`` are the full names of the caller's services; they are
    listed by reflection and reported SERVING by the health service once
    :func:`mark_serving` is called.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors), options=_MESSAGE_SIZE_OPTIONS
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    enable_reflection([*service_names, health_name], server)
    return server, health_servicer


async def mark_serving(
    health_servicer: HealthServicer,
    service_names: Iterable[str],
    serving: bool = True,
    name: str = "",
) -> None:
    """Set the health status of ``name`` ("" is the whole server) and of each
    of ``service_names``."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for entry in [name, *service_names]:
        await health_servicer.set(entry, status)


def service_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Return the metadata entry that carries a service credential; none if empty."""
    if not token:
        return ()
    return ((SERVICE_TOKEN_METADATA, f"Bearer {token}"),)


def add_port(server: grpc.aio.Server, address: str, tls: GrpcTls | None = None) -> int:
    """Bind ``address``, with TLS when ``tls`` has a server certificate.

    Returns the bound port (0 when binding failed, as grpcio does).
    """
    credentials = tls.server_credentials() if tls else None
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def create_channel(address: str, tls: GrpcTls | None = None) -> grpc.aio.Channel:
    """Open a channel with retries for the safe methods, with TLS when ``tls``
    has a CA file, else plaintext.

    Call it inside the running event loop: aio channels belong to the loop
    that created them.
    """
    options = [
        *_MESSAGE_SIZE_OPTIONS,
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # gRPC's default reconnect back-off grows to 120 s, which would keep
        # callers failing long after a restarted chat_service is back.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    credentials = tls.channel_credentials() if tls else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
