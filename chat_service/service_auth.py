"""Service credentials: which calling service may use which chat_service RPCs.

Every call to ``chat.v1.ChatService`` or ``chat.v1.AuthService`` must carry
the gateway's token, and every call to ``chat.v1.RunService`` a worker's
token, in the metadata entry ``authorization: Bearer <token>``. One server
interceptor checks them before any servicer runs:

- missing or unknown token: ``UNAUTHENTICATED`` (reason ``SERVICE_UNAUTHENTICATED``);
- a valid token of the other role: ``PERMISSION_DENIED``.

Health checking and reflection stay open, so that load balancers and
``grpcurl list`` work without a token. Tokens are compared with
:func:`hmac.compare_digest`. A role whose token is empty, which settings
allow only in development mode, accepts calls without a credential.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

import grpc

from bulkhead.log import get_logger
from bulkhead.rpc import SERVICE_TOKEN_METADATA, Reason, build_status
from chat_service.config import ChatServiceSettings

logger = get_logger(__name__)

OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_BEARER_PREFIX = "bearer "
# A rejection is logged the first time and then every this many times per
# method, so that a client retrying with a wrong token cannot flood the log.
_LOG_EVERY = 100


class ServiceRole(StrEnum):
    GATEWAY = "gateway"
    WORKER = "worker"


ROLE_OF_SERVICE: Mapping[str, ServiceRole] = {
    "chat.v1.ChatService": ServiceRole.GATEWAY,
    "chat.v1.AuthService": ServiceRole.GATEWAY,
    "chat.v1.RunService": ServiceRole.WORKER,
}

Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls whose service credential does not allow the called service."""

    def __init__(self, tokens: Mapping[ServiceRole, str]) -> None:
        self._tokens = {role: token.encode() for role, token in tokens.items()}
        self._rejections: dict[tuple[str, str], int] = {}
        for role in ServiceRole:
            if not self._tokens.get(role):
                logger.warning(
                    "service credentials are off: calls of this role are "
                    "accepted without a token (development mode)",
                    role=role.value,
                )

    @classmethod
    def from_settings(cls, settings: ChatServiceSettings) -> ServiceTokenInterceptor:
        return cls(
            {
                ServiceRole.GATEWAY: settings.gateway_service_token.get_secret_value(),
                ServiceRole.WORKER: settings.worker_service_token.get_secret_value(),
            }
        )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else ""
        if handler is None or service in OPEN_SERVICES:
            return handler

        required = ROLE_OF_SERVICE.get(service)
        if required is not None and not self._tokens.get(required):
            return handler
        presented = _bearer_token(handler_call_details.invocation_metadata)
        caller = self._role_of(presented)
        if required is not None and caller is required:
            return handler

        if caller is None:
            status = build_status(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid service credential: send the metadata "
                f"'{SERVICE_TOKEN_METADATA}: Bearer <service token>'",
                Reason.SERVICE_UNAUTHENTICATED,
            )
        else:
            status = build_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the {caller.value} service credential does not allow {service}",
                Reason.PERMISSION_DENIED,
            )
        self._log_rejection(method, status.code, caller)
        return _rejecting_handler(handler, status)

    def _role_of(self, presented: bytes | None) -> ServiceRole | None:
        if not presented:
            return None
        found = None
        # Every token is compared, so that the time taken does not tell
        # which role a guessed token came close to.
        for role, token in self._tokens.items():
            if token and hmac.compare_digest(presented, token):
                found = role
        return found

    def _log_rejection(
        self, method: str, code: grpc.StatusCode, caller: ServiceRole | None
    ) -> None:
        key = (method, code.name)
        count = self._rejections.get(key, 0) + 1
        self._rejections[key] = count
        if count == 1 or count % _LOG_EVERY == 0:
            logger.warning(
                "call rejected: service credential",
                method=method,
                grpc_code=code.name,
                caller_role=caller.value if caller else None,
                rejections=count,
            )


def _bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key != SERVICE_TOKEN_METADATA:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if text[: len(_BEARER_PREFIX)].lower() != _BEARER_PREFIX:
            return None
        return text[len(_BEARER_PREFIX) :].strip().encode("latin-1", "replace")
    return None


def _rejecting_handler(handler: Handler, status: grpc.Status) -> Handler:
    """Return a handler of the same shape as ``handler`` that only aborts."""

    async def reject(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def reject_stream(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await context.abort_with_status(status)
        yield  # never reached: makes this an async generator

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject_stream, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **codecs)
    return grpc.unary_unary_rpc_method_handler(reject, **codecs)
