"""HEAD over a real connection to the gateway (uvicorn): the status and headers
of GET, and not one byte of body, on the JSON routes and the event stream.

httpx drops the body of a response to HEAD, so each request here is written
to a plain TCP connection that the gateway closes after its response.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.support.api import auth, post_chat, wait_for_run

# Headers that differ between any two responses, whatever their method.
_PER_RESPONSE_HEADERS = {"x-request-id", "date"}


async def send_head(
    base_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send HEAD with Connection: close and return the status, the headers and
    every byte after them, read until the gateway closes the connection."""
    url = httpx.URL(base_url)
    lines = [f"HEAD {path} HTTP/1.1", f"Host: {url.host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()

    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        response_headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), response_headers, rest


def comparable_headers(headers: dict[str, str] | httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name not in _PER_RESPONSE_HEADERS and name != "connection"
    }


async def test_head_run_as_get_without_body(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    run_id = (await post_chat(gateway_client, key, "head")).json()["run"]["id"]
    await wait_for_run(gateway_client, key, run_id)

    get = await gateway_client.get(f"/api/runs/{run_id}", headers=auth(key))
    status, headers, body = await send_head(
        str(gateway_client.base_url), f"/api/runs/{run_id}", auth(key)
    )

    assert get.status_code == 200
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(get.content))
    assert comparable_headers(headers) == comparable_headers(get.headers)


async def test_head_chats_as_get_without_body(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    await post_chat(gateway_client, key, "a chat to list")

    get = await gateway_client.get("/api/chats", headers=auth(key))
    status, headers, body = await send_head(
        str(gateway_client.base_url), "/api/chats", auth(key)
    )

    assert status == 200
    assert body == b""
    assert comparable_headers(headers) == comparable_headers(get.headers)


async def test_head_health_without_body(gateway_client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        get = await gateway_client.get(path)
        status, headers, body = await send_head(str(gateway_client.base_url), path)

        assert status == 200, path
        assert body == b"", path
        assert comparable_headers(headers) == comparable_headers(get.headers), path


async def test_head_without_key_401_without_body(
    gateway_client: httpx.AsyncClient,
) -> None:
    status, headers, body = await send_head(str(gateway_client.base_url), "/api/chats")

    assert status == 401
    assert body == b""
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"] == "Bearer"
    assert int(headers["content-length"]) > 0


async def test_head_events_headers_only(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    run_id = (await post_chat(gateway_client, key, "stream")).json()["run"]["id"]

    status, headers, body = await send_head(
        str(gateway_client.base_url), f"/api/runs/{run_id}/events", auth(key)
    )

    assert status == 200
    assert body == b""
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert "content-length" not in headers


async def test_head_events_unknown_run_404(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    status, headers, body = await send_head(
        str(gateway_client.base_url),
        "/api/runs/0b6f0c1e-9f0a-4d8e-8d43-2bb7c8a9a001/events",
        auth(api_key()),
    )

    assert status == 404
    assert body == b""
    assert headers["content-type"] == "application/problem+json"
