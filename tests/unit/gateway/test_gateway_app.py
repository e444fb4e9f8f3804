"""The gateway application without chat_service: every request here gets its
response before any gRPC call, so none needs a server. The channel points at a port
where nothing listens, so a request that did reach a call would get 503.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.app import create_app
from gateway.auth import Caller, authenticate
from gateway.config import GatewaySettings

RUN_ID = "0b6f0c1e-9f0a-4d8e-8d43-2bb7c8a9a001"
PROBLEM_TYPE = "application/problem+json"


def make_settings(**overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "max_content_chars": 50,
        "max_body_bytes": 2000,
        # Port 9 (discard): nothing listens there on a test machine.
        "chat_service_addr": "127.0.0.1:9",
        "gateway_service_token": "unit-test-service-token-0123456789",
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


async def signed_in_caller(request: Request) -> Caller:
    """Stand in for the API key lookup, setting what authenticate() sets."""
    request.state.user_id = "user-1"
    return Caller(user_id="user-1", request_id=request.state.request_id)


@pytest.fixture
def app() -> FastAPI:
    return create_app(make_settings())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as c,
    ):
        yield c


@pytest.fixture
async def signed_in(app: FastAPI, client: httpx.AsyncClient) -> httpx.AsyncClient:
    app.dependency_overrides[authenticate] = signed_in_caller
    return client


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_app_missing_key_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"content": "Hello"})

    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert body["type"] == "urn:bulkhead:problem:unauthenticated"


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc"],
)
async def test_app_malformed_authorization_401(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get(
        f"/api/runs/{RUN_ID}", headers={"Authorization": authorization}
    )

    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/runs/{RUN_ID}"),
        ("POST", f"/api/runs/{RUN_ID}/cancel"),
        ("POST", f"/api/runs/{RUN_ID}/retry"),
        ("GET", f"/api/runs/{RUN_ID}/events"),
        ("GET", "/api/chats"),
        ("GET", f"/api/chats/{RUN_ID}/messages"),
    ],
)
async def test_app_every_api_route_needs_key(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)

    assert_problem(response, 401)


@pytest.mark.parametrize("path", ["/api/chats/", "/api/chat/", "/healthz/"])
async def test_app_trailing_slash_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers={"Host": "elsewhere.example"})

    assert_problem(response, 404)
    assert "location" not in response.headers


async def test_app_malformed_json_without_key_401(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/chat", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert_problem(response, 401)


async def test_app_body_over_limit_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"content": "x" * 5000})

    body = assert_problem(response, 413)
    assert body["type"] == "urn:bulkhead:problem:body-too-large"


async def test_app_chunked_body_over_limit_413(signed_in: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = await signed_in.post(
        "/api/chat", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        {"Content-Type": "application/json", "Content-Encoding": "identity, gzip"},
        {},
    ],
)
async def test_app_body_not_json_415(
    signed_in: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body = b'{"content": "Hello"}'
    if "gzip" in headers.get("Content-Encoding", ""):
        body = gzip.compress(body)
    response = await signed_in.post("/api/chat", content=body, headers=headers)

    problem = assert_problem(response, 415)
    assert problem["type"] == "urn:bulkhead:problem:unsupported-media-type"


async def test_app_encoding_without_body_ignored(client: httpx.AsyncClient) -> None:
    # A bodiless request has nothing compressed to reject.
    response = await client.get("/healthz", headers={"Content-Encoding": "br"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("charset", "named"),
    [("latin-1", "latin-1"), ('"ISO-8859-1"', "iso-8859-1"), ("utf-16", "utf-16")],
)
async def test_app_charset_other_than_utf8_415(
    signed_in: httpx.AsyncClient, charset: str, named: str
) -> None:
    response = await signed_in.post(
        "/api/chat",
        content=b'{"content": "Hello"}',
        headers={"Content-Type": f"application/json; charset={charset}"},
    )

    problem = assert_problem(response, 415)
    assert problem["detail"] == (
        f"charset={named} is not supported: JSON bodies are UTF-8 (RFC 8259)."
    )


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8", "us-ascii"])
async def test_app_charset_utf8_accepted(
    signed_in: httpx.AsyncClient, charset: str
) -> None:
    response = await signed_in.post(
        "/api/chat",
        content=b'{"content": "Hello"}',
        headers={"Content-Type": f"application/json;charset={charset}"},
    )

    # The body is valid, so the gateway calls chat_service, which these
    # tests do not run.
    assert_problem(response, 503)


async def test_app_two_content_types_415(signed_in: httpx.AsyncClient) -> None:
    response = await signed_in.post(
        "/api/chat",
        content=b'{"content": "Hello"}',
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Type", "text/plain"),
        ],
    )

    problem = assert_problem(response, 415)
    assert problem["detail"] == "Content-Type must be sent once."


async def test_app_charset_without_body_ignored(
    signed_in: httpx.AsyncClient,
) -> None:
    response = await signed_in.get(
        "/healthz", headers={"Content-Type": "application/json; charset=latin-1"}
    )

    assert response.status_code == 200


async def test_app_empty_body_422(signed_in: httpx.AsyncClient) -> None:
    response = await signed_in.post("/api/chat", headers={"Content-Type": "text/plain"})

    problem = assert_problem(response, 422)
    assert problem["type"] == "urn:bulkhead:problem:validation-error"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({"content": 42}, "content"),
        ({"content": "a\u0000b"}, "content"),
        ({"content": "x" * 51}, "content"),
        ({"content": "Hello", "stream": True}, "stream"),
        ({"content": "Hello", "chat_id": "42"}, "chat_id"),
        ({"content": "Hello", "model": "m" * 201}, "model"),
        ({"content": "Hello", "on_busy": "wait"}, "on_busy"),
        ({}, "content"),
        ([], "body"),
    ],
)
async def test_app_invalid_body_422(
    signed_in: httpx.AsyncClient, body: object, field: str
) -> None:
    response = await signed_in.post("/api/chat", json=body)

    problem = assert_problem(response, 422)
    assert problem["type"] == "urn:bulkhead:problem:validation-error"
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [error["field"] for error in errors] == [field]
    assert all(error["message"] for error in errors)


async def test_app_lone_surrogate_422(signed_in: httpx.AsyncClient) -> None:
    response = await signed_in.post(
        "/api/chat",
        content=b'{"content": "a\\ud800b"}',
        headers={"Content-Type": "application/json"},
    )

    problem = assert_problem(response, 422)
    assert problem["errors"] == [
        {
            "field": "content",
            "message": "contains a NUL character or a lone surrogate at index 1",
        }
    ]


@pytest.mark.parametrize(
    "key",
    [b"", b" leading", b"trailing ", b"k" * 256, b"caf\xe9", b"tab\there"],
)
async def test_app_invalid_idempotency_key_422(
    signed_in: httpx.AsyncClient, key: bytes
) -> None:
    response = await signed_in.post(
        "/api/chat", json={"content": "Hello"}, headers={"Idempotency-Key": key}
    )

    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors[0]["field"] == "Idempotency-Key"
    assert errors[0]["message"] == (
        "must be 1 to 255 printable ASCII characters, with no space at the start or end"
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/runs/not-a-uuid"),
        ("POST", "/api/runs/not-a-uuid/cancel"),
        ("POST", "/api/runs/not-a-uuid/retry"),
        ("GET", "/api/runs/not-a-uuid/events"),
        ("GET", "/api/chats/not-a-uuid/messages"),
    ],
)
async def test_app_path_id_not_uuid_404(
    signed_in: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await signed_in.request(method, path)

    body = assert_problem(response, 404)
    assert body["type"] == "urn:bulkhead:problem:not-found"


@pytest.mark.parametrize(
    ("headers", "query", "field"),
    [
        ([("Last-Event-ID", "-1")], "", "Last-Event-ID"),
        ([("Last-Event-ID", "abc")], "", "Last-Event-ID"),
        ([("Last-Event-ID", "9223372036854775808")], "", "Last-Event-ID"),
        ([("Last-Event-ID", "1"), ("Last-Event-ID", "3")], "", "Last-Event-ID"),
        ([], "?last_event_id=1.5", "last_event_id"),
        ([], "?last_event_id=", "last_event_id"),
        ([], "?last_event_id=1&last_event_id=4", "last_event_id"),
    ],
)
async def test_app_invalid_last_event_id_422(
    signed_in: httpx.AsyncClient,
    headers: list[tuple[str, str]],
    query: str,
    field: str,
) -> None:
    response = await signed_in.get(f"/api/runs/{RUN_ID}/events{query}", headers=headers)

    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors[0]["field"] == field


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/chats", "?limit=5&limit=50", "limit"),
        ("/api/chats", "?cursor=a&cursor=b", "cursor"),
        (f"/api/chats/{RUN_ID}/messages", "?limit=5&limit=5", "limit"),
        (f"/api/chats/{RUN_ID}/messages", "?cursor=a&cursor=b", "cursor"),
    ],
)
async def test_app_page_parameter_twice_422(
    signed_in: httpx.AsyncClient, path: str, query: str, field: str
) -> None:
    response = await signed_in.get(path + query)

    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors[0]["field"] == field


@pytest.mark.parametrize("limit", ["0", "101", "-5", "ten"])
async def test_app_page_limit_out_of_range_422(
    signed_in: httpx.AsyncClient, limit: str
) -> None:
    response = await signed_in.get("/api/chats", params={"limit": limit})

    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors[0]["field"] == "limit"


async def test_app_unknown_route_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")

    body = assert_problem(response, 404)
    assert body["type"] == "about:blank"


async def test_app_wrong_method_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/chat")

    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


async def test_app_unhandled_exception_500(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def explode() -> None:
        raise RuntimeError("secret internal state")

    app.add_api_route("/explode", explode)

    response = await client.get("/explode")

    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["type"] == "about:blank"


async def test_app_request_id_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "req-42.a"})

    assert response.headers["x-request-id"] == "req-42.a"


@pytest.mark.parametrize("request_id", ["has space", "x" * 129, "", "\u00e9t\u00e9"])
async def test_app_request_id_replaced_when_invalid(
    client: httpx.AsyncClient, request_id: str
) -> None:
    response = await client.get(
        "/healthz", headers={"X-Request-ID": request_id.encode("latin-1")}
    )

    generated = response.headers["x-request-id"]
    assert generated != request_id
    assert len(generated) == 36


async def test_app_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


async def test_app_problem_no_store(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/chats")

    assert response.headers["cache-control"] == "no-store"


async def test_app_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    document = response.json()
    assert document["info"]["title"] == "Bulkhead API"
    assert document["info"]["version"] == "0.1.0"
    assert set(document["paths"]) == {
        "/api/chat",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/retry",
        "/api/runs/{run_id}/events",
        "/api/chats",
        "/api/chats/{chat_id}/messages",
        "/healthz",
        "/readyz",
    }


async def test_app_openapi_errors_are_problems(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM_TYPE], (
                        path,
                        method,
                        status,
                    )
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_app_openapi_post_chat_responses(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    responses = document["paths"]["/api/chat"]["post"]["responses"]
    assert {"200", "202", "401", "413", "422", "409", "429", "503"} <= set(responses)


async def test_app_openapi_bearer_on_api_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    scheme = document["components"]["securitySchemes"]["HTTPBearer"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            expected = [{"HTTPBearer": []}] if path.startswith("/api/") else None
            assert operation.get("security") == expected, (path, method)


async def test_app_docs_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


async def test_app_cors_disabled_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://app.example"})

    assert "access-control-allow-origin" not in response.headers


async def test_app_cors_allow_list() -> None:
    app = create_app(make_settings(gateway_cors_origins=["https://app.example"]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        allowed = await c.options(
            "/api/chat",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key",
            },
        )
        other = await c.get("/healthz", headers={"Origin": "https://other.example"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_app_two_authorization_headers_401(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        f"/api/runs/{RUN_ID}",
        headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    )

    body = assert_problem(response, 401)
    assert body["detail"] == "Send one Authorization header, not several."
    assert response.headers["www-authenticate"] == "Bearer"


async def test_app_two_idempotency_keys_422(signed_in: httpx.AsyncClient) -> None:
    response = await signed_in.post(
        "/api/chat",
        json={"content": "Hello"},
        headers=[("Idempotency-Key", "first"), ("Idempotency-Key", "second")],
    )

    problem = assert_problem(response, 422)
    assert problem["errors"] == [
        {"field": "Idempotency-Key", "message": "must be sent once"}
    ]
