"""Run routes: read, cancel, retry, and the SSE event stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from bulkhead.proto.chat.v1 import chat_service_pb2
from gateway.auth import CallerDep
from gateway.deps import ChatStubDep, SettingsDep, check_query_sent_once, resource_id
from gateway.problems import problem_responses, validation_problem
from gateway.routes import get_and_head
from gateway.schemas import TERMINAL_RUN_STATUSES, Run, run_from_proto
from gateway.sse import SSE_HEADERS, StreamLimits, parse_last_event_id, relay_run_events
from gateway.stream_limits import LimitedStreamingResponse, StreamLimiter

router = APIRouter(prefix="/api/runs", tags=["runs"])

RunIdPath = Annotated[str, Path(description="Run id (UUID).")]

_EVENT_STREAM_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": (
            "Server-Sent Events: `id: <seq>`, `event: <type>`, `data: <JSON object>`, "
            "and `: ping` comments. Ends after run.completed, run.failed or "
            "run.cancelled; reconnect with Last-Event-ID if it ends earlier."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": "The run has finished and no event follows Last-Event-ID."},
    **problem_responses(401, 404, 422, 429, 503),
}


@get_and_head(
    router,
    "/{run_id}",
    response_model=Run,
    response_description="The run.",
    responses=problem_responses(401, 404, 503),
)
async def get_run(
    run_id: RunIdPath, caller: CallerDep, stub: ChatStubDep, settings: SettingsDep
) -> Run:
    """Return a run: status, assistant message so far, attempts and token usage."""
    response = await stub.GetRun(
        chat_service_pb2.GetRunRequest(run_id=resource_id(run_id, "run")),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    return run_from_proto(response.run)


@router.post(
    "/{run_id}/cancel",
    status_code=202,
    response_model=Run,
    response_description="The run, cancelled.",
    responses=problem_responses(401, 404, 409, 503),
)
async def cancel_run(
    run_id: RunIdPath, caller: CallerDep, stub: ChatStubDep, settings: SettingsDep
) -> Run:
    """Cancel a run and keep its partial assistant message."""
    response = await stub.CancelRun(
        chat_service_pb2.CancelRunRequest(run_id=resource_id(run_id, "run")),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    return run_from_proto(response.run)


@router.post(
    "/{run_id}/retry",
    status_code=202,
    response_model=Run,
    response_description="The new run, queued.",
    responses=problem_responses(401, 404, 409, 503),
)
async def retry_run(
    run_id: RunIdPath,
    response: Response,
    caller: CallerDep,
    stub: ChatStubDep,
    settings: SettingsDep,
) -> Run:
    """Start a new run for the user message of a failed or cancelled run."""
    retried = await stub.RetryRun(
        chat_service_pb2.RetryRunRequest(run_id=resource_id(run_id, "run")),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    run = run_from_proto(retried.run)
    response.headers["Location"] = f"/api/runs/{run.id}"
    return run


@get_and_head(
    router,
    "/{run_id}/events",
    response_class=Response,
    responses=_EVENT_STREAM_RESPONSES,
)
async def stream_run_events(
    request: Request,
    run_id: RunIdPath,
    caller: CallerDep,
    stub: ChatStubDep,
    settings: SettingsDep,
    last_event_id_header: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this event id."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Query(description="Resume after this event id, for clients without headers."),
    ] = None,
) -> Response:
    """Stream a run's events over SSE, resuming after Last-Event-ID."""
    run_uuid = resource_id(run_id, "run")
    # FastAPI passes one of several values. With several, where to resume
    # is unclear.
    if len(request.headers.getlist("last-event-id")) > 1:
        raise validation_problem("Last-Event-ID", "must be sent once")
    check_query_sent_once(request, "last_event_id")
    if last_event_id_header is not None and not last_event_id_header.strip(" \t"):
        # An empty id means none (an SSE client sends what the last event's
        # "id:" field left, which may be nothing).
        last_event_id_header = None
    after_seq = parse_last_event_id(last_event_id_header, last_event_id)

    # The unary call turns an unknown run, or another user's, into a 404
    # before any byte of the stream is sent.
    current = await stub.GetRun(
        chat_service_pb2.GetRunRequest(run_id=run_uuid),
        metadata=caller.metadata,
        timeout=settings.gateway_grpc_timeout_s,
    )
    run = run_from_proto(current.run)
    if run.status in TERMINAL_RUN_STATUSES and after_seq >= run.last_event_id:
        # A browser's EventSource reconnects after a 200 that ends, forever,
        # but stops on any other status, so a finished stream returns 204.
        return Response(status_code=204)
    if after_seq > run.last_event_id:
        # No client has seen such an id, and the stream would wait for it in
        # vain: the run's own events, its last one included, come before it.
        field = "Last-Event-ID" if last_event_id_header is not None else "last_event_id"
        raise validation_problem(
            field, f"must not be after the run's last event id ({run.last_event_id})"
        )

    limiter: StreamLimiter = request.app.state.stream_limiter
    if request.method == "HEAD":
        # A stream lasts until the run ends, and a response to HEAD has no
        # body, so HEAD gets the headers of GET over an empty body and opens
        # no WatchRun call. It gets the 429 of GET when the user has no
        # stream slot left, but it does not keep one.
        limiter.acquire(caller.user_id)()
        return StreamingResponse(
            iter(()), media_type="text/event-stream", headers=SSE_HEADERS
        )

    limits = StreamLimits(
        heartbeat_s=settings.sse_heartbeat_s,
        max_duration_s=settings.sse_max_duration_s,
        retry_ms=settings.sse_retry_ms,
    )
    watch = chat_service_pb2.WatchRunRequest(run_id=run_uuid, after_seq=after_seq)
    release = limiter.acquire(caller.user_id)
    try:
        return LimitedStreamingResponse(
            relay_run_events(stub, watch, caller.metadata, limits),
            release=release,
            write_timeout_s=settings.sse_write_timeout_s,
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    except BaseException:
        release()
        raise
