"""Mapping of chat_service's gRPC errors onto HTTP problems."""

from __future__ import annotations

import json

import grpc
import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError

from bulkhead.rpc import FieldViolation, Reason, build_status
from chat_service.errors import NotFoundError
from gateway.deps import resource_id
from gateway.problems import (
    ProblemError,
    handle_validation_error,
    problem_for_rpc_error,
)


def rpc_error(
    code: grpc.StatusCode,
    message: str,
    reason: Reason | None = None,
    metadata: dict[str, str] | None = None,
    violations: list[FieldViolation] | None = None,
) -> grpc.aio.AioRpcError:
    """Build the error a grpc.aio call raises, with ErrorInfo when a reason is given."""
    if reason is None:
        return grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), message
        )
    status = build_status(code, message, reason, metadata, violations or [])
    trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), trailing, status.details
    )


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.INVALID_ARGUMENT, Reason.IDEMPOTENCY_KEY_REUSED, 422),
        (grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND, 404),
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.CHAT_BUSY, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.RUN_FINISHED, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.RUN_NOT_RETRYABLE, 409),
        (grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED, 401),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED, 429),
        (grpc.StatusCode.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.STALE_ATTEMPT, 500),
        (grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED, 500),
        (grpc.StatusCode.INTERNAL, Reason.INTERNAL, 500),
    ],
)
def test_rpc_error_status_by_reason(
    code: grpc.StatusCode, reason: Reason, status: int
) -> None:
    problem = problem_for_rpc_error(rpc_error(code, "message", reason))

    assert problem.kind.status == status


def test_chat_busy_names_active_run() -> None:
    error = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        "The chat has an active run.",
        Reason.CHAT_BUSY,
        {"run_id": "0190a1b2-0000-7000-8000-000000000001"},
    )

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 409
    assert problem.extra == {"active_run_id": "0190a1b2-0000-7000-8000-000000000001"}


def test_run_not_retryable_names_newer_run() -> None:
    error = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        "A newer run exists for this message.",
        Reason.RUN_NOT_RETRYABLE,
        {"run_id": "0190a1b2-0000-7000-8000-000000000002"},
    )

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 409
    assert problem.extra == {"newer_run_id": "0190a1b2-0000-7000-8000-000000000002"}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 500),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_rpc_error_status_by_code_without_reason(
    code: grpc.StatusCode, status: int
) -> None:
    problem = problem_for_rpc_error(rpc_error(code, "message"))

    assert problem.kind.status == status


def test_rpc_error_message_too_large_hides_grpc_text() -> None:
    # What grpc.aio raises when a response is over the message size limit.
    error = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SERVER: Sent message larger than max (5416918 vs. 4194304)",
    )

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 500
    assert "Retry-After" not in problem.headers
    assert problem.detail == "The server failed to handle the request."


def test_rpc_error_reason_wins_over_code() -> None:
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, "key reused", Reason.IDEMPOTENCY_KEY_REUSED
    )

    problem = problem_for_rpc_error(error)

    assert problem.kind.type_uri == "urn:bulkhead:problem:idempotency-key-reused"


def test_rpc_error_unauthenticated_challenges_bearer() -> None:
    error = rpc_error(grpc.StatusCode.UNAUTHENTICATED, "no", Reason.UNAUTHENTICATED)

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 401
    assert problem.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("metadata", "retry_after"),
    [
        ({"retry_after_s": "7"}, "7"),
        ({"retry_after_s": "2.5"}, "3"),
        ({"retry_after_s": "0"}, "1"),
        ({"retry_after_s": "soon"}, "1"),
        ({"retry_after_s": "inf"}, "1"),
        ({}, "1"),
    ],
)
def test_rpc_error_rate_limited_retry_after(
    metadata: dict[str, str], retry_after: str
) -> None:
    error = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", Reason.RATE_LIMITED, metadata
    )

    problem = problem_for_rpc_error(error)

    assert problem.headers["Retry-After"] == retry_after


@pytest.mark.parametrize(
    "error",
    [
        rpc_error(grpc.StatusCode.UNAVAILABLE, "connect failed"),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
        rpc_error(grpc.StatusCode.UNAVAILABLE, "db", Reason.DATABASE_UNAVAILABLE),
    ],
)
def test_rpc_error_unavailable_retry_after_one(error: grpc.aio.AioRpcError) -> None:
    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 503
    assert problem.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    "error",
    [
        rpc_error(grpc.StatusCode.INTERNAL, "stack trace at db.py:12", Reason.INTERNAL),
        rpc_error(grpc.StatusCode.UNAVAILABLE, "connect to 10.0.0.5 refused"),
    ],
)
def test_rpc_error_server_side_message_hidden(error: grpc.aio.AioRpcError) -> None:
    problem = problem_for_rpc_error(error)

    assert "db.py" not in problem.detail
    assert "10.0.0.5" not in problem.detail


def test_rpc_error_client_side_message_kept() -> None:
    error = rpc_error(grpc.StatusCode.NOT_FOUND, "run not found", Reason.NOT_FOUND)

    problem = problem_for_rpc_error(error)

    assert problem.detail == "run not found"


def test_rpc_error_field_violations_become_errors() -> None:
    message = "must name a configured model route; 'x' is not one"
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Invalid model: {message}.",
        Reason.INVALID_ARGUMENT,
        violations=[FieldViolation("model", message)],
    )

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 422
    assert problem.detail == "The request has an invalid field: model."
    assert [(e.field, e.message) for e in problem.errors] == [("model", message)]


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("Expecting value", "Invalid JSON: Expecting value at character 1."),
        (
            "Unterminated string starting at",
            "Invalid JSON: Unterminated string starting at character 1.",
        ),
    ],
)
async def test_validation_error_invalid_json_is_body_field(
    reason: str, message: str
) -> None:
    error = RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", 1),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": reason},
            }
        ]
    )
    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    request = Request({**scope, "state": {"request_id": "request-1"}})

    response = await handle_validation_error(request, error)

    body = json.loads(bytes(response.body))
    assert response.status_code == 422
    assert body["request_id"] == "request-1"
    assert body["errors"] == [{"field": "body", "message": message}]


@pytest.mark.parametrize("resource", ["run", "chat"])
def test_rpc_not_found_detail_as_malformed_id(resource: str) -> None:
    # chat_service's error for an unknown id, as the gateway receives it.
    status = NotFoundError.for_resource(resource).to_status()
    error = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
    )
    with pytest.raises(ProblemError) as malformed:
        resource_id("not-a-uuid", resource)

    problem = problem_for_rpc_error(error)

    assert problem.kind.status == 404
    assert problem.detail == f"The {resource} was not found."
    assert problem.detail == malformed.value.detail
