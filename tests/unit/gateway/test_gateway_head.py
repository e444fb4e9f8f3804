"""HEAD on the gateway's GET routes (RFC 9110, section 9.3.2): the status and
headers of GET. The event stream route gets a stand-in for chat_service, so
that HEAD can be checked not to open the stream.

httpx drops the body of a response to HEAD, so these tests cannot see one;
tests/e2e/test_api_head.py checks over a real connection that none is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI
from google.protobuf.timestamp_pb2 import Timestamp

from bulkhead.proto.chat.v1 import chat_service_pb2, types_pb2
from gateway.app import create_app
from gateway.auth import authenticate
from gateway.deps import get_chat_stub
from gateway.stream_limits import StreamLimiter
from tests.unit.gateway.test_gateway_app import (
    RUN_ID,
    assert_problem,
    make_settings,
    signed_in_caller,
)

EVENTS_PATH = f"/api/runs/{RUN_ID}/events"
# Headers that differ between any two responses, whatever their method.
_PER_RESPONSE_HEADERS = {"x-request-id", "date"}


class EndedWatchCall:
    """A WatchRun call that ends at once, as for a run with no new event."""

    async def read(self) -> object:
        return grpc.aio.EOF

    def cancel(self) -> bool:
        return True


class StubChatService:
    """Stand-in for the chat_service stub: GetRun returns one run, and
    WatchRun calls are counted."""

    def __init__(
        self, status: types_pb2.RunStatus.ValueType, last_event_seq: int = 0
    ) -> None:
        self.status = status
        self.last_event_seq = last_event_seq
        self.watch_calls = 0

    async def GetRun(
        self, request: chat_service_pb2.GetRunRequest, **_: Any
    ) -> chat_service_pb2.GetRunResponse:
        created = Timestamp(seconds=1_700_000_000)
        run = types_pb2.Run(
            id=request.run_id,
            chat_id=RUN_ID,
            user_message_id=RUN_ID,
            status=self.status,
            last_event_seq=self.last_event_seq,
            created_at=created,
            updated_at=created,
        )
        return chat_service_pb2.GetRunResponse(run=run)

    def WatchRun(self, *_: Any, **__: Any) -> EndedWatchCall:
        self.watch_calls += 1
        return EndedWatchCall()


@pytest.fixture
def app() -> FastAPI:
    return create_app(make_settings(max_streams_per_user=1))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as c,
    ):
        yield c


def use_stub(app: FastAPI, stub: StubChatService) -> None:
    """Sign every request in as user-1 and send its calls to ``stub``."""

    async def stub_dependency() -> StubChatService:
        return stub

    app.dependency_overrides[authenticate] = signed_in_caller
    app.dependency_overrides[get_chat_stub] = stub_dependency


def comparable_headers(response: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name not in _PER_RESPONSE_HEADERS
    }


async def test_head_every_get_route_as_get(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    get_paths = [path for path, ops in document["paths"].items() if "get" in ops]
    assert "/healthz" in get_paths

    for template in get_paths:
        path = template.format(run_id=RUN_ID, chat_id=RUN_ID)
        get = await client.get(path)
        head = await client.head(path)

        assert head.status_code != 405, path
        assert head.status_code == get.status_code, path
        assert comparable_headers(head) == comparable_headers(get), path


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
async def test_head_documentation_pages(client: httpx.AsyncClient, path: str) -> None:
    get = await client.get(path)
    head = await client.head(path)

    assert head.status_code == 200
    assert comparable_headers(head) == comparable_headers(get)


async def test_head_health_200(client: httpx.AsyncClient) -> None:
    get = await client.get("/healthz")
    head = await client.head("/healthz")

    assert head.status_code == 200
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == str(len(get.content))


@pytest.mark.parametrize(
    "path",
    [f"/api/runs/{RUN_ID}", EVENTS_PATH, "/api/chats", f"/api/chats/{RUN_ID}/messages"],
)
async def test_head_without_key_401(client: httpx.AsyncClient, path: str) -> None:
    response = await client.head(path)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "path", ["/api/runs/not-a-uuid", "/api/chats/not-a-uuid/messages"]
)
async def test_head_path_id_not_uuid_404(
    app: FastAPI, client: httpx.AsyncClient, path: str
) -> None:
    app.dependency_overrides[authenticate] = signed_in_caller

    get = await client.get(path)
    head = await client.head(path)

    assert_problem(get, 404)
    assert head.status_code == 404
    assert comparable_headers(head) == comparable_headers(get)


async def test_head_post_route_405(client: httpx.AsyncClient) -> None:
    response = await client.head("/api/chat")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_head_listed_in_allow(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/api/runs/{RUN_ID}")

    body = assert_problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD"
    assert body["detail"] == f"Method POST is not allowed on /api/runs/{RUN_ID}."


async def test_head_events_headers_without_stream(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    stub = StubChatService(types_pb2.RUN_STATUS_RUNNING)
    use_stub(app, stub)

    head = await client.head(EVENTS_PATH)

    assert head.status_code == 200
    assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert head.headers["cache-control"] == "no-cache"
    assert "content-length" not in head.headers
    assert stub.watch_calls == 0
    limiter: StreamLimiter = app.state.stream_limiter
    assert limiter.open_streams("user-1") == 0


async def test_head_events_same_headers_as_get(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    stub = StubChatService(types_pb2.RUN_STATUS_RUNNING)
    use_stub(app, stub)

    get = await client.get(EVENTS_PATH)
    head = await client.head(EVENTS_PATH)

    assert get.status_code == 200
    assert stub.watch_calls == 1
    assert head.status_code == 200
    assert comparable_headers(head) == comparable_headers(get)


async def test_head_events_over_stream_limit_429(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    stub = StubChatService(types_pb2.RUN_STATUS_RUNNING)
    use_stub(app, stub)
    limiter: StreamLimiter = app.state.stream_limiter
    release = limiter.acquire("user-1")

    response = await client.head(EVENTS_PATH)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"
    assert limiter.open_streams("user-1") == 1
    release()


async def test_head_events_finished_run_204(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    stub = StubChatService(types_pb2.RUN_STATUS_COMPLETED, last_event_seq=4)
    use_stub(app, stub)

    response = await client.head(EVENTS_PATH, headers={"Last-Event-ID": "4"})

    assert response.status_code == 204
    assert stub.watch_calls == 0


async def test_head_not_in_openapi(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    operation_ids = []
    for path, operations in document["paths"].items():
        assert "head" not in operations, path
        operation_ids += [operation["operationId"] for operation in operations.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert document["paths"]["/api/runs/{run_id}"]["get"]["operationId"].endswith(
        "_get"
    )
