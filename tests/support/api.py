"""Small REST and SSE client helpers for end-to-end tests of the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.eventually import assert_eventually

TERMINAL_STATUSES = {"completed", "failed", "cancelled"}
TERMINAL_EVENTS = {"run.completed", "run.failed", "run.cancelled"}


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


@dataclass(frozen=True)
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]


async def post_chat(
    client: httpx.AsyncClient, key: str, content: str, **fields: Any
) -> httpx.Response:
    headers = fields.pop("headers", {})
    return await client.post(
        "/api/chat", json={"content": content, **fields}, headers=auth(key, **headers)
    )


async def wait_for_run(
    client: httpx.AsyncClient, key: str, run_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll GET /api/runs/{id} until the run is terminal; return its body."""

    async def terminal() -> dict[str, Any]:
        response = await client.get(f"/api/runs/{run_id}", headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] in TERMINAL_STATUSES, body["status"]
        return body

    return await assert_eventually(terminal, timeout=timeout, interval=0.1)


def parse_sse(text: str) -> tuple[list[SseEvent], list[str]]:
    """Parse an SSE body into events and comment lines."""
    events: list[SseEvent] = []
    comments: list[str] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line:
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "event" in fields:
            events.append(
                SseEvent(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            )
    return events, comments


async def read_events(
    client: httpx.AsyncClient,
    key: str,
    run_id: str,
    last_event_id: int | None = None,
    timeout: float = 30.0,
) -> tuple[httpx.Response, list[SseEvent]]:
    """Read a run's SSE stream until the server ends it; return response and events."""
    headers = auth(key)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with client.stream(
        "GET", f"/api/runs/{run_id}/events", headers=headers, timeout=timeout
    ) as response:
        body = (await response.aread()).decode("utf-8")
    events, _ = parse_sse(body) if response.status_code == 200 else ([], [])
    return response, events


def answer_from(events: list[SseEvent]) -> str:
    """Join the delta texts after the last reset, as a client renders them."""
    text = ""
    for event in events:
        if event.event == "message.reset":
            text = ""
        elif event.event == "message.delta":
            text += event.data["delta"]
    return text
