"""The gateway's FastAPI application: :func:`create_app` and its lifespan.

Run it with ``python -m gateway``, or ``uvicorn --factory gateway.app:create_app``
(which leaves logging unconfigured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from grpc_health.v1 import health_pb2_grpc
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import auth_service_pb2_grpc, chat_service_pb2_grpc
from bulkhead.rpc import create_channel, service_metadata
from bulkhead.settings import warn_if_dev_mode
from gateway.auth import BEARER_SCHEME_DESCRIPTION, ApiKeyAuthenticator, authenticate
from gateway.config import GatewaySettings
from gateway.jwt_auth import JwtVerifier
from gateway.middleware import REQUEST_ID_HEADER, RequestContextMiddleware
from gateway.problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    handle_http_exception,
    handle_problem_error,
    handle_rpc_error,
    handle_validation_error,
)
from gateway.routes import chat, chats, health, runs
from gateway.stream_limits import StreamLimiter

# Time given to calls still in flight when the channel closes at shutdown.
_CHANNEL_CLOSE_GRACE_S = 1.0
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_BEARER_SCHEME = "HTTPBearer"
_CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "Prefer",
    REQUEST_ID_HEADER,
]
_CORS_EXPOSED_HEADERS = [
    "Idempotent-Replayed",
    "Location",
    "Preference-Applied",
    "Retry-After",
    REQUEST_ID_HEADER,
]

logger = get_logger(__name__)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway application; the gRPC channel opens in its lifespan."""
    settings = settings or GatewaySettings()
    app = FastAPI(
        title="Bulkhead API",
        version=version("bulkhead"),
        description="REST and Server-Sent Events API of Bulkhead, a backend for AI "
        "chat applications. Errors are application/problem+json (RFC 9457). "
        "Every GET operation also answers HEAD, with the same status and "
        "headers and no body.",
        lifespan=_lifespan,
        # Starlette would build a redirect to the path without its trailing
        # slash from the client's Host header, before authentication. So a
        # trailing slash is a 404 problem like any other unknown path.
        redirect_slashes=False,
        telemetry={
            "tracing": settings.gateway_opentelemetry,
            "metrics": settings.gateway_opentelemetry,
            "logs": settings.gateway_opentelemetry,
        },
    )
    app.state.settings = settings

    for router in (chat.router, runs.router, chats.router, health.router):
        app.include_router(router)
    _add_exception_handlers(app)
    _add_middleware(app, settings)
    app.openapi = lambda: _openapi_with_problem_media_type(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # aio channels belong to the event loop that creates them, so the channel
    # is opened here, in the server's loop, and not in create_app.
    settings: GatewaySettings = app.state.settings
    warn_if_dev_mode(settings, logger)
    jwt_config = settings.jwt_config()
    channel = create_channel(settings.chat_service_addr, settings.grpc_tls())
    app.state.service_metadata = service_metadata(
        settings.gateway_service_token.get_secret_value()
    )
    app.state.chat_stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    app.state.health_stub = health_pb2_grpc.HealthStub(channel)
    app.state.authenticator = ApiKeyAuthenticator(
        auth_service_pb2_grpc.AuthServiceStub(channel),
        ttl_s=settings.gateway_auth_cache_ttl_s,
        max_entries=settings.gateway_auth_cache_max_entries,
        timeout_s=settings.gateway_grpc_timeout_s,
        service_metadata=app.state.service_metadata,
    )
    app.state.jwt_verifier = JwtVerifier(jwt_config) if jwt_config else None
    app.state.stream_limiter = StreamLimiter(settings.max_streams_per_user)
    logger.info(
        "gateway started",
        chat_service_addr=settings.chat_service_addr,
        jwt_algorithms=list(jwt_config.algorithms) if jwt_config else [],
    )
    try:
        yield
    finally:
        await channel.close(grace=_CHANNEL_CLOSE_GRACE_S)
        logger.info("gateway stopped")


def _add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, handle_problem_error)
    app.add_exception_handler(grpc.RpcError, handle_rpc_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_exception)


async def _handle_validation_error(request: Request, error: Exception) -> Response:
    # FastAPI rejects a malformed JSON body before it runs any dependency, so
    # the API key is checked here first: a caller without a valid key gets
    # 401, whatever the body.
    if request.url.path.startswith("/api/") and not hasattr(request.state, "user_id"):
        try:
            await authenticate(request)
        except ProblemError as problem:
            return await handle_problem_error(request, problem)
        except grpc.RpcError as rpc_error:
            return await handle_rpc_error(request, rpc_error)
    return await handle_validation_error(request, error)


async def _handle_http_exception(request: Request, error: Exception) -> Response:
    # FastAPI answers 400 when the body is not UTF-8 or json.loads fails with
    # anything but JSONDecodeError (nesting too deep, an integer over 4,300
    # digits). Those are invalid JSON bodies like any other: 422, after the
    # credentials check.
    if isinstance(error, HTTPException) and error.status_code == 400:
        invalid = RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": "JSON decode error",
                    "ctx": {"error": _unparsable_body_reason(error.__cause__)},
                }
            ]
        )
        return await _handle_validation_error(request, invalid)
    if isinstance(error, HTTPException) and error.status_code == 405:
        error = _with_head_allowed(error)
    return await handle_http_exception(request, error)


def _unparsable_body_reason(cause: BaseException | None) -> str:
    """Return why FastAPI could not parse a body, from the error it raised."""
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex().upper()
        return f"the body is not UTF-8: byte 0x{byte} at offset {cause.start}"
    if isinstance(cause, RecursionError):
        return "arrays or objects are nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number has too many digits"
    return "the body could not be parsed"


def _with_head_allowed(error: HTTPException) -> HTTPException:
    """Add HEAD to the Allow header of a 405 that allows GET.

    Each GET route has a HEAD route of its own (gateway.routes.get_and_head),
    but Starlette's Allow header lists only the methods of the first route
    that matches the path.
    """
    headers = dict(error.headers or {})
    allowed = [method.strip() for method in headers.get("Allow", "").split(",")]
    if "GET" not in allowed or "HEAD" in allowed:
        return error
    headers["Allow"] = ", ".join([*allowed, "HEAD"])
    return HTTPException(error.status_code, error.detail, headers)


def _add_middleware(app: FastAPI, settings: GatewaySettings) -> None:
    # add_middleware puts each one outside the ones added before it, so the
    # request passes RequestContextMiddleware first and the body limit last.
    app.add_middleware(
        RequestBodyLimitMiddleware, max_body_size=settings.max_body_bytes
    )
    if settings.gateway_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.gateway_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=_CORS_REQUEST_HEADERS,
            expose_headers=_CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)


def _openapi_with_problem_media_type(app: FastAPI) -> dict[str, Any]:
    """Build the OpenAPI document with every error body as application/problem+json
    and the bearer scheme on every ``/api`` route.

    FastAPI lists ``responses=`` models under the route's own media type,
    application/json, and adds its own 422 body to routes with parameters.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}
            # Every /api route authenticates (gateway.auth).
            if path.startswith("/api/"):
                operation["security"] = [{_BEARER_SCHEME: []}]
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[
        _BEARER_SCHEME
    ] = {"type": "http", "scheme": "bearer", "description": BEARER_SCHEME_DESCRIPTION}
    # FastAPI's own 422 body, replaced above by the problem body on every route.
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema
