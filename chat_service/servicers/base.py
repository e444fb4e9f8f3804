"""Error mapping and caller identity for every servicer method."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from bulkhead.log import bound_context, get_logger
from bulkhead.rpc import (
    REQUEST_ID_METADATA,
    USER_ID_METADATA,
    USER_ID_PATTERN,
    Reason,
    build_status,
)
from chat_service.errors import (
    ChatServiceError,
    DatabaseUnavailableError,
    UnauthenticatedError,
)
from chat_service.store.database import is_outage

logger = get_logger(__name__)

T = TypeVar("T")


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for entry_key, value in context.invocation_metadata() or ():
        if entry_key == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def caller_id(context: grpc.aio.ServicerContext) -> str:
    """Return the user id the gateway put in the metadata, or raise."""
    user_id = metadata_value(context, USER_ID_METADATA)
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise UnauthenticatedError(f"missing or invalid {USER_ID_METADATA} metadata")
    return user_id


def _status_for(error: BaseException, method: str) -> grpc.Status:
    if isinstance(error, ChatServiceError):
        if isinstance(error, DatabaseUnavailableError):
            logger.warning(
                "database unavailable", method=method, error=str(error.__cause__)
            )
        return error.to_status()
    if is_outage(error):
        logger.warning("database unavailable", method=method, error=str(error))
        return DatabaseUnavailableError("database unavailable").to_status()
    logger.exception("unexpected error", method=method)
    return build_status(grpc.StatusCode.INTERNAL, "internal error", Reason.INTERNAL)


def unary(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]:
    """Wrap a unary method: bind the request id to the logs, map errors to statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        request_id = metadata_value(context, REQUEST_ID_METADATA)
        with bound_context(request_id=request_id or None):
            try:
                return await method(self, request, context)
            except Exception as error:
                await context.abort_with_status(_status_for(error, method.__name__))
                raise  # abort_with_status raises; this line is never reached

    return wrapper


def streaming(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[T]]:
    """Wrap a server-streaming method like :func:`unary`."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[T]:
        request_id = metadata_value(context, REQUEST_ID_METADATA)
        with bound_context(request_id=request_id or None):
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as error:  # noqa: BLE001 - mapped to a status below
                await context.abort_with_status(_status_for(error, method.__name__))

    return wrapper
