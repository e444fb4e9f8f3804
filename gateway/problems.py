"""Error responses as ``application/problem+json`` (RFC 9457), and the one place
where gRPC errors from chat_service become HTTP statuses.

Every error the gateway returns goes through :func:`problem_response`:
FastAPI's validation errors, Starlette's 404 and 405, the body limit's 413,
:class:`ProblemError` raised by the gateway itself, failed gRPC calls and
unhandled exceptions (see ``gateway.app``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from bulkhead.log import get_logger
from bulkhead.rpc import Reason, RpcErrorDetail, parse_error

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problems that only restate the HTTP status use "about:blank" (RFC 9457,
# section 4.2.1); Bulkhead-specific ones get a URN of their own.
_TYPE_PREFIX = "urn:bulkhead:problem:"

logger = get_logger(__name__)


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str = Field(description="Field name, dotted for nested body fields.")
    message: str


class Problem(BaseModel):
    """An error response (RFC 9457 problem details)."""

    type: str = Field(description="URI identifying the kind of problem.")
    title: str = Field(description="Short summary, the same for every occurrence.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong in this occurrence.")
    request_id: str | None = Field(default=None, description="X-Request-ID value.")
    errors: list[FieldError] | None = Field(
        default=None, description="Invalid fields, on validation problems only."
    )
    active_run_id: str | None = Field(
        default=None,
        description="The chat's active run, on chat-busy problems only.",
    )
    newer_run_id: str | None = Field(
        default=None,
        description="The message's newest run, on run-not-retryable problems "
        "for a run that was already retried.",
    )


@dataclass(frozen=True)
class ProblemKind:
    """Status, type and title shared by every occurrence of one kind of problem."""

    status: int
    slug: str | None
    title: str

    @property
    def type_uri(self) -> str:
        return _TYPE_PREFIX + self.slug if self.slug else "about:blank"


VALIDATION = ProblemKind(422, "validation-error", "Invalid request")
IDEMPOTENCY_KEY_REUSED = ProblemKind(422, "idempotency-key-reused", "Key reused")
NOT_FOUND = ProblemKind(404, "not-found", "Not found")
CHAT_BUSY = ProblemKind(409, "chat-busy", "Chat busy")
RUN_FINISHED = ProblemKind(409, "run-finished", "Run already finished")
RUN_NOT_RETRYABLE = ProblemKind(409, "run-not-retryable", "Run not retryable")
UNAUTHENTICATED = ProblemKind(401, "unauthenticated", "Unauthenticated")
RATE_LIMITED = ProblemKind(429, "rate-limited", "Too many requests")
UNAVAILABLE = ProblemKind(503, "unavailable", "Service unavailable")
BODY_TOO_LARGE = ProblemKind(413, "body-too-large", "Request body too large")
UNSUPPORTED_MEDIA_TYPE = ProblemKind(
    415, "unsupported-media-type", "Unsupported media type"
)
INTERNAL = ProblemKind(500, None, "Internal Server Error")

_KIND_BY_REASON: dict[str, ProblemKind] = {
    Reason.INVALID_ARGUMENT: VALIDATION,
    Reason.IDEMPOTENCY_KEY_REUSED: IDEMPOTENCY_KEY_REUSED,
    Reason.NOT_FOUND: NOT_FOUND,
    Reason.CHAT_BUSY: CHAT_BUSY,
    Reason.RUN_FINISHED: RUN_FINISHED,
    Reason.RUN_NOT_RETRYABLE: RUN_NOT_RETRYABLE,
    Reason.UNAUTHENTICATED: UNAUTHENTICATED,
    # chat_service rejected the gateway's own service credential: a
    # configuration error of the deployment, not of the client.
    Reason.SERVICE_UNAUTHENTICATED: INTERNAL,
    Reason.PERMISSION_DENIED: INTERNAL,
    Reason.RATE_LIMITED: RATE_LIMITED,
    Reason.DATABASE_UNAVAILABLE: UNAVAILABLE,
}
# Used when the error carries no ErrorInfo reason that is listed above.
_KIND_BY_CODE: dict[grpc.StatusCode, ProblemKind] = {
    grpc.StatusCode.INVALID_ARGUMENT: VALIDATION,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED,
    # RESOURCE_EXHAUSTED is not listed: chat_service's rate limit carries its
    # reason, and without one the code comes from gRPC itself (a message
    # over the size limit), which a retry does not cure.
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNAVAILABLE,
}
_RETRY_AFTER_METADATA = "retry_after_s"
_RUN_ID_METADATA = "run_id"


class ProblemError(Exception):
    """An error that the gateway returns as a problem response."""

    def __init__(
        self,
        kind: ProblemKind,
        detail: str,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def validation_problem(field: str, message: str) -> ProblemError:
    """Build the 422 problem for one invalid request field."""
    errors = [FieldError(field=field, message=message)]
    return ProblemError(VALIDATION, invalid_fields_detail(errors), errors)


def not_found_problem(detail: str) -> ProblemError:
    return ProblemError(NOT_FOUND, detail)


def unauthenticated_problem(detail: str) -> ProblemError:
    # RFC 6750, section 3: a 401 names the scheme the client should use.
    return ProblemError(UNAUTHENTICATED, detail, headers={"WWW-Authenticate": "Bearer"})


def problem_response(
    kind: ProblemKind,
    detail: str,
    request_id: str | None,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Render a problem as an ``application/problem+json`` response."""
    problem = Problem(
        type=kind.type_uri,
        title=kind.title,
        status=kind.status,
        detail=detail,
        request_id=request_id,
        errors=list(errors) or None,
    )
    body = problem.model_dump(mode="json", exclude_none=True)
    body.update(extra or {})
    return JSONResponse(
        body, status_code=kind.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def problem_for_rpc_error(error: grpc.RpcError) -> ProblemError:
    """Map a failed call to chat_service onto an HTTP problem."""
    detail = parse_error(error)
    kind = _KIND_BY_REASON.get(detail.reason) or _KIND_BY_CODE.get(
        detail.code, INTERNAL
    )
    headers: dict[str, str] = {}
    if kind is UNAUTHENTICATED:
        return unauthenticated_problem(
            "The API key or token is invalid, expired or revoked."
        )
    if kind is RATE_LIMITED:
        headers["Retry-After"] = _retry_after(
            detail.metadata.get(_RETRY_AFTER_METADATA)
        )
    if kind is UNAVAILABLE:
        headers["Retry-After"] = "1"
    extra: dict[str, Any] = {}
    run_id = detail.metadata.get(_RUN_ID_METADATA)
    if kind is CHAT_BUSY and run_id:
        extra["active_run_id"] = run_id
    elif kind is RUN_NOT_RETRYABLE and run_id:
        extra["newer_run_id"] = run_id
    errors = [
        FieldError(field=v.field, message=v.description) for v in detail.violations
    ]
    return ProblemError(
        kind, _client_detail(kind, detail, errors), errors, headers, extra
    )


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def handle_problem_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ProblemError)
    return problem_response(
        error.kind,
        error.detail,
        request_id_of(request),
        error.errors,
        error.headers,
        error.extra,
    )


async def handle_rpc_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, grpc.RpcError)
    problem = problem_for_rpc_error(error)
    if problem.kind.status >= 500:
        detail = parse_error(error)
        log = logger.error if problem.kind is INTERNAL else logger.warning
        log(
            "chat_service call failed",
            grpc_code=detail.code.name,
            reason=detail.reason,
            grpc_message=detail.message,
        )
    return await handle_problem_error(request, problem)


async def handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    unsupported = _unsupported_body(request, error)
    if unsupported is not None:
        return problem_response(
            UNSUPPORTED_MEDIA_TYPE, unsupported, request_id_of(request)
        )
    errors = [_field_error(item) for item in error.errors()]
    detail = invalid_fields_detail(errors)
    return problem_response(VALIDATION, detail, request_id_of(request), errors)


def invalid_fields_detail(errors: Sequence[FieldError]) -> str:
    """Return the ``detail`` of a 422 problem, which names its invalid fields."""
    fields = list(dict.fromkeys(item.field for item in errors))
    if len(fields) == 1:
        return f"The request has an invalid field: {fields[0]}."
    return f"The request has invalid fields: {', '.join(fields)}."


async def handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    """Render Starlette's own errors (404 route, 405, 413) as problems."""
    assert isinstance(error, HTTPException)
    status = error.status_code
    if status == 413:
        kind = BODY_TOO_LARGE
        max_body_bytes = request.app.state.settings.max_body_bytes
        detail = f"The request body is larger than {max_body_bytes} bytes."
    else:
        phrase = HTTPStatus(status).phrase
        kind = ProblemKind(status, None, phrase)
        detail = _http_detail(request, status, error.detail)
    return problem_response(kind, detail, request_id_of(request), headers=error.headers)


def _client_detail(
    kind: ProblemKind, detail: RpcErrorDetail, errors: Sequence[FieldError]
) -> str:
    # 4xx messages from chat_service are written for clients; 5xx messages
    # may contain internals, so the client gets a fixed sentence instead.
    if kind is VALIDATION and errors:
        return invalid_fields_detail(errors)
    if kind.status < 500 and detail.message:
        return detail.message
    if kind is UNAVAILABLE:
        return "The chat service is unavailable. Retry in a moment."
    return "The server failed to handle the request."


def _retry_after(value: str | None) -> str:
    """Return whole seconds for Retry-After (RFC 9110, section 10.2.3)."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    if not math.isfinite(seconds):
        seconds = 1.0
    return str(max(1, math.ceil(seconds)))


def _unsupported_body(request: Request, error: RequestValidationError) -> str | None:
    """Return why a sent body that failed validation is not JSON at all, or None.

    FastAPI parses a body as JSON only under a JSON media type. A body sent
    as text or as a form then fails as "not an object", which is a fault of
    its media type, not of its fields.
    """
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return None
    if not any(tuple(item.get("loc", ()))[:1] == ("body",) for item in error.errors()):
        return None
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    return "The body must be JSON, sent with Content-Type: application/json."


def _field_error(item: Mapping[str, Any]) -> FieldError:
    location = [str(part) for part in item.get("loc", ())]
    if item.get("type") == "json_invalid":
        reason = str(item.get("ctx", {}).get("error", "malformed JSON"))
        # The parser's messages end in "at" or name no place ("Expecting
        # value"). FastAPI puts the character offset in the location.
        if len(location) > 1 and location[1].isdigit():
            reason = f"{reason.removesuffix(' at')} at character {location[1]}"
        return FieldError(field="body", message=f"Invalid JSON: {reason}.")
    field = ".".join(location[1:]) or (location[0] if location else "body")
    message = str(item.get("msg", "Invalid value"))
    message = message.removeprefix("Value error, ")
    return FieldError(field=field, message=message)


def _http_detail(request: Request, status: int, detail: object) -> str:
    if status == 404:
        return f"No route matches {request.url.path}."
    if status == 405:
        return f"Method {request.method} is not allowed on {request.url.path}."
    if isinstance(detail, str) and detail:
        return detail
    return HTTPStatus(status).description


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Describe problem responses for a route's OpenAPI ``responses=``.

    ``gateway.app`` moves their schema to the ``application/problem+json``
    media type when it builds the document.
    """
    return {
        status: {"model": Problem, "description": _RESPONSE_DESCRIPTIONS[status]}
        for status in statuses
    }


_RESPONSE_DESCRIPTIONS = {
    401: "Missing, invalid, expired or revoked API key or token.",
    404: "No such resource for this user.",
    409: "The request conflicts with the state of the chat or run.",
    413: "Request body too large.",
    415: "The body is not JSON (Content-Type or Content-Encoding).",
    422: "Invalid request.",
    429: "Too many requests; see Retry-After.",
    500: "Internal error.",
    503: "chat_service or its database is unavailable; see Retry-After.",
}
