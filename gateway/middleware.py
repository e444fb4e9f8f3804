"""The outermost gateway middleware: request ids, security headers, body size,
content coding and charset, the per-request log line, and the 500 problem
for unhandled exceptions.

It is a plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, so
that streamed responses pass through unbuffered and the log context bound
here is the one the route handlers run in.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulkhead.log import bind_context, clear_context, get_logger
from gateway.problems import (
    BODY_TOO_LARGE,
    INTERNAL,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemKind,
    problem_response,
)

REQUEST_ID_HEADER = "X-Request-ID"
# Client request ids are logged and passed to chat_service, so only short ids
# made of URL-safe characters are taken; anything else is replaced.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# API responses are data, never a page: nothing in them may load or run, and
# no site may frame them. HTML pages (the /docs page) keep their own policy.
_API_CONTENT_SECURITY_POLICY = b"default-src 'none'; frame-ancestors 'none'"
_JSON_MEDIA_TYPES = (b"application/json", b"application/problem+json")
_MAX_LOGGED_PATH_CHARS = 200
# No charset, UTF-8, or ASCII, which is a subset of UTF-8.
_UTF8_CHARSETS = (None, "utf-8", "utf8", "us-ascii", "ascii")

logger = get_logger(__name__)


@dataclass
class _Exchange:
    """Request id, status and start time of one request."""

    request_id: str
    started_at: float
    status: int = 0
    response_started: bool = False


class RequestContextMiddleware:
    """Wrap every HTTP request of the gateway; see the module docstring."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        exchange = _Exchange(_request_id(headers), time.perf_counter())
        scope.setdefault("state", {})["request_id"] = exchange.request_id
        clear_context()
        bind_context(request_id=exchange.request_id)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_started = True
                message = _with_headers(message, exchange.request_id)
            await send(message)

        try:
            await self._handle(scope, receive, send_with_headers, headers, exchange)
        finally:
            _log_request(scope, exchange)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        exchange: _Exchange,
    ) -> None:
        rejection = self._rejection(headers)
        if rejection is not None:
            kind, detail = rejection
            response = problem_response(kind, detail, exchange.request_id)
            await response(scope, receive, send)
            return

        try:
            await self.app(scope, receive, send)
        except Exception:
            logger.exception("unhandled error", method=scope["method"])
            if exchange.response_started:
                raise
            response = problem_response(
                INTERNAL,
                "The server failed to handle the request.",
                exchange.request_id,
            )
            await response(scope, receive, send)

    def _rejection(self, headers: Headers) -> tuple[ProblemKind, str] | None:
        """Return the problem of a request rejected on its headers alone, or None."""
        # A declared length over the limit is rejected before any byte of the
        # body is read; chunked bodies are counted by RequestBodyLimitMiddleware.
        if _content_length(headers) > self.max_body_bytes:
            return (
                BODY_TOO_LARGE,
                f"The request body is larger than {self.max_body_bytes} bytes.",
            )
        # Bodies are not decompressed, so a compressed one would reach the
        # JSON parser as binary.
        codings = [
            coding.strip().lower()
            for value in headers.getlist("content-encoding")
            for coding in value.split(",")
        ]
        encoding = next((c for c in codings if c not in ("", "identity")), None)
        if encoding is not None and _has_body(headers):
            detail = (
                f"Content-Encoding {encoding[:40]} is not supported: "
                "send the body uncompressed."
            )
            return UNSUPPORTED_MEDIA_TYPE, detail
        if len(headers.getlist("content-type")) > 1 and _has_body(headers):
            # Content-Type is a single value (RFC 9110, 8.3): with two, the
            # media type of the body is unclear.
            return UNSUPPORTED_MEDIA_TYPE, "Content-Type must be sent once."
        charset = _declared_charset(headers.get("content-type"))
        if charset not in _UTF8_CHARSETS and _has_body(headers):
            detail = (
                f"charset={charset[:40]} is not supported: JSON bodies are UTF-8 "
                "(RFC 8259)."
            )
            return UNSUPPORTED_MEDIA_TYPE, detail
        return None


def _request_id(headers: Headers) -> str:
    value = headers.get(REQUEST_ID_HEADER)
    if value is not None and _REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return str(uuid.uuid4())


def _declared_charset(content_type: str | None) -> str | None:
    """Return the lowercased charset parameter of a Content-Type, if any."""
    if content_type is None or "charset" not in content_type.lower():
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _has_body(headers: Headers) -> bool:
    return _content_length(headers) > 0 or "transfer-encoding" in headers


def _content_length(headers: Headers) -> int:
    value = headers.get("content-length")
    if value is None or not value.isdigit():
        return 0
    return int(value)


def _with_headers(message: Message, request_id: str) -> Message:
    headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
    names = {name.lower() for name, _ in headers}
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers.extend(header for header in _SECURITY_HEADERS if header[0] not in names)

    content_type = Headers(raw=headers).get("content-type", "").encode("latin-1")
    if b"content-security-policy" not in names and not content_type.startswith(
        b"text/html"
    ):
        headers.append((b"content-security-policy", _API_CONTENT_SECURITY_POLICY))
    if b"cache-control" not in names and content_type.startswith(_JSON_MEDIA_TYPES):
        headers.append((b"cache-control", b"no-store"))
    return {**message, "headers": headers}


def _log_request(scope: Scope, exchange: _Exchange) -> None:
    route = scope.get("route")
    path = getattr(route, "path", None) or scope["path"][:_MAX_LOGGED_PATH_CHARS]
    state = scope.get("state", {})
    logger.info(
        "request",
        method=scope["method"],
        path=path,
        status=exchange.status,
        duration_ms=round((time.perf_counter() - exchange.started_at) * 1000, 1),
        user_id=state.get("user_id"),
    )
