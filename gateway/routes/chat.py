"""``POST /api/chat``: store a user message and queue the run that replies to it."""

from __future__ import annotations

import re
from typing import Annotated

import grpc
from fastapi import APIRouter, Header, Request, Response
from google.protobuf.duration_pb2 import Duration

from bulkhead.log import get_logger
from bulkhead.proto.chat.v1 import chat_service_pb2, chat_service_pb2_grpc
from bulkhead.text import IDEMPOTENCY_KEY_PATTERN
from gateway.auth import Caller, CallerDep
from gateway.config import GatewaySettings
from gateway.problems import problem_responses, validation_problem
from gateway.schemas import (
    ON_BUSY_VALUES,
    PostMessageRequest,
    PostMessageResponse,
    post_message_response_from_proto,
    run_from_proto,
)

MAX_WAIT_S = 30
# Extra time for the WaitRun call beyond the wait itself, so that a wait that
# runs to its timeout still returns its result before the gRPC deadline.
_WAIT_DEADLINE_MARGIN_S = 2
_WAIT_PREFERENCE_PATTERN = re.compile(r'"?([0-9]+)"?')

logger = get_logger(__name__)
router = APIRouter(prefix="/api", tags=["chat"])


@router.post(
    "/chat",
    status_code=202,
    response_model=PostMessageResponse,
    response_description="The message is stored and its run queued.",
    responses={
        200: {
            "model": PostMessageResponse,
            "description": "The run finished within the time set by Prefer: wait=N.",
        },
        **problem_responses(401, 404, 409, 413, 415, 422, 429, 503),
    },
)
async def post_message(
    body: PostMessageRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1 to 255 printable ASCII characters, with no space at "
            "the start or end; a retry with the "
            "same key and body returns the first response.",
        ),
    ] = None,
    prefer: Annotated[
        list[str] | None,
        Header(
            alias="Prefer",
            description="wait=N (RFC 7240): wait up to N seconds (at most 30) "
            "for the run to finish.",
        ),
    ] = None,
) -> PostMessageResponse:
    """Store a user message and queue a run that replies to it."""
    # Read from the app state rather than through dependencies, since this is
    # the busiest route and each dependency costs CPU per request.
    settings: GatewaySettings = request.app.state.settings
    stub: chat_service_pb2_grpc.ChatServiceStub = request.app.state.chat_stub
    _check_content_length(body.content, settings.max_content_chars)
    if (
        idempotency_key is not None
        and len(request.headers.getlist("idempotency-key")) > 1
    ):
        # FastAPI passes only the first one. With several keys, which one
        # identifies the message is unclear.
        raise validation_problem("Idempotency-Key", "must be sent once")
    if idempotency_key is not None and not IDEMPOTENCY_KEY_PATTERN.fullmatch(
        idempotency_key
    ):
        raise validation_problem(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters, with no space at the "
            "start or end",
        )

    posted = await stub.PostMessage(
        chat_service_pb2.PostMessageRequest(
            content=body.content,
            chat_id=str(body.chat_id) if body.chat_id else "",
            model=body.model or "",
            idempotency_key=idempotency_key or "",
            on_busy=ON_BUSY_VALUES[body.on_busy],
        ),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    result = post_message_response_from_proto(posted)
    response.headers["Location"] = f"/api/runs/{result.run.id}"
    if posted.replayed:
        response.headers["Idempotent-Replayed"] = "true"

    wait_s = parse_wait_preference(prefer or [])
    if wait_s is not None:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        waited = await _wait_for_run(stub, caller, result.run.id, wait_s)
        if waited is not None:
            result.run = run_from_proto(waited.run)
            if waited.finished:
                response.status_code = 200
    return result


def parse_wait_preference(values: list[str]) -> int | None:
    """Return the seconds of a ``wait`` preference (RFC 7240), capped at 30.

    Returns None when no valid ``wait`` preference was sent: a server ignores
    preferences it cannot apply (RFC 7240, section 2).
    """
    for preference in ",".join(values).split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        # Only the first occurrence counts (RFC 7240, section 2).
        match = _WAIT_PREFERENCE_PATTERN.fullmatch(value.strip())
        if match is None:
            return None
        # The value is delta-seconds (RFC 7240), which may have any number of
        # digits. A long one is over the cap, so it is not converted.
        digits = match.group(1).lstrip("0") or "0"
        return MAX_WAIT_S if len(digits) > 2 else min(int(digits), MAX_WAIT_S)
    return None


def _check_content_length(content: str, max_chars: int) -> None:
    if len(content) > max_chars:
        raise validation_problem("content", f"must be at most {max_chars} characters")


async def _wait_for_run(
    stub: chat_service_pb2_grpc.ChatServiceStub,
    caller: Caller,
    run_id: str,
    wait_s: int,
) -> chat_service_pb2.WaitRunResponse | None:
    """Wait for a run to finish; return the run as the wait left it, and
    whether it finished, or None when the wait failed.

    The message is already stored when this runs, so a failed wait is logged
    and the client gets the usual 202 instead of an error.
    """
    if wait_s == 0:
        return None
    try:
        waited = await stub.WaitRun(
            chat_service_pb2.WaitRunRequest(
                run_id=run_id, timeout=Duration(seconds=wait_s)
            ),
            metadata=caller.metadata,
            timeout=wait_s + _WAIT_DEADLINE_MARGIN_S,
        )
    except grpc.RpcError as error:
        logger.warning(
            "wait for run failed", run_id=run_id, grpc_code=_code_name(error)
        )
        return None
    except Exception:
        logger.exception("wait for run failed", run_id=run_id)
        return None
    return waited


def _code_name(error: grpc.RpcError) -> str:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    return code.name if code is not None else "UNKNOWN"
