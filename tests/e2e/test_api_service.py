"""Health, readiness and the API description."""

from __future__ import annotations

import httpx

EXPECTED_ROUTES = {
    ("/api/chat", "post"),
    ("/api/runs/{run_id}", "get"),
    ("/api/runs/{run_id}/events", "get"),
    ("/api/runs/{run_id}/cancel", "post"),
    ("/api/runs/{run_id}/retry", "post"),
    ("/api/chats", "get"),
    ("/api/chats/{chat_id}/messages", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
}


async def test_healthz_is_ok(gateway_client: httpx.AsyncClient) -> None:
    response = await gateway_client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_chat_service(gateway_client: httpx.AsyncClient) -> None:
    response = await gateway_client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"]["chat_service"] == "ok"


async def test_openapi_lists_every_route(gateway_client: httpx.AsyncClient) -> None:
    response = await gateway_client.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    routes = {
        (path, method) for path, item in document["paths"].items() for method in item
    }
    assert EXPECTED_ROUTES <= routes
    assert document["info"]["title"] == "Bulkhead API"
    post = document["paths"]["/api/chat"]["post"]
    assert {"202", "200", "401", "422"} <= post["responses"].keys()


async def test_docs_page_is_served(gateway_client: httpx.AsyncClient) -> None:
    response = await gateway_client.get("/docs")

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
