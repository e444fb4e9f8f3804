"""A message posted over REST gets its reply asynchronously: poll, stream, resume."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support.api import (
    TERMINAL_EVENTS,
    answer_from,
    auth,
    post_chat,
    read_events,
    wait_for_run,
)

ECHO_PREFIX = "You said: "


async def test_post_chat_accepts_message(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()

    response = await post_chat(gateway_client, key, "Hello, Bulkhead")

    assert response.status_code == 202
    body = response.json()
    run = body["run"]
    message = body["message"]
    assert response.headers["location"] == f"/api/runs/{run['id']}"
    assert response.headers["content-type"] == "application/json"
    assert body["chat_id"] == message["chat_id"] == run["chat_id"]
    assert message["role"] == "user"
    assert message["content"] == "Hello, Bulkhead"
    assert message["status"] == "completed"
    assert message["run_id"] == run["id"]
    assert run["status"] == "queued"
    assert run["user_message_id"] == message["id"]
    assert run["model"] == "bulkhead-echo"
    assert run["assistant_message"] is None
    assert run["error"] is None
    assert run["finished_at"] is None
    uuid.UUID(run["id"])


async def test_run_completes_when_polled(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "What is a bulkhead?")).json()

    run = await wait_for_run(gateway_client, key, posted["run"]["id"])

    assert run["status"] == "completed"
    assert run["model_used"] == "bulkhead-echo"
    assert run["error"] is None
    assert run["finished_at"] is not None
    assert run["assistant_message"]["status"] == "completed"
    assert run["assistant_message"]["content"] == ECHO_PREFIX + "What is a bulkhead?"
    assert [a["outcome"] for a in run["attempts"]] == ["completed"]
    assert run["attempts"][0]["model"] == "bulkhead-echo"
    assert run["attempts"][0]["provider"] == "builtin"
    assert run["usage"]["completion_tokens"] > 0
    assert run["last_event_id"] >= 3


async def test_events_replay_whole_run(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "stream me, please")).json()
    run_id = posted["run"]["id"]

    response, events = await read_events(gateway_client, key, run_id)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == "run.status"
    assert events[0].data == {"status": "running"}
    assert events[-1].event == "run.completed"
    assert sum(e.event in TERMINAL_EVENTS for e in events) == 1
    assert sum(e.event == "message.delta" for e in events) >= 2
    run = await wait_for_run(gateway_client, key, run_id)
    assert answer_from(events) == run["assistant_message"]["content"]
    assert run["last_event_id"] == events[-1].id


async def test_events_resume_after_each_id(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "resume from anywhere")).json()
    run_id = posted["run"]["id"]
    _, events = await read_events(gateway_client, key, run_id)

    for position, event in enumerate(events[:-1]):
        response, resumed = await read_events(gateway_client, key, run_id, event.id)
        assert response.status_code == 200
        assert resumed == events[position + 1 :]


async def test_events_after_terminal_id_is_empty(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "nothing after the end")).json()
    run = await wait_for_run(gateway_client, key, posted["run"]["id"])

    response, events = await read_events(
        gateway_client, key, run["id"], run["last_event_id"]
    )

    # A 204 makes a browser's EventSource stop reconnecting.
    assert response.status_code == 204
    assert events == []


async def test_events_resume_from_query_parameter(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "query resume")).json()
    run_id = posted["run"]["id"]
    _, events = await read_events(gateway_client, key, run_id)

    response = await gateway_client.get(
        f"/api/runs/{run_id}/events?last_event_id=1", headers=auth(key)
    )

    assert response.status_code == 200
    assert [line for line in response.text.splitlines() if line.startswith("id:")] == [
        f"id: {e.id}" for e in events[1:]
    ]


async def test_streams_opened_early_see_everything(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = [
        (await post_chat(gateway_client, key, f"parallel stream {n}")).json()
        for n in range(5)
    ]

    results = await asyncio.gather(
        *(read_events(gateway_client, key, p["run"]["id"]) for p in posted)
    )

    for body, (response, events) in zip(posted, results, strict=True):
        assert response.status_code == 200
        assert events[-1].event == "run.completed"
        assert answer_from(events) == ECHO_PREFIX + body["message"]["content"]


async def test_follow_up_joins_chat(gateway_client: httpx.AsyncClient, api_key) -> None:
    key = api_key()
    first = (await post_chat(gateway_client, key, "first question")).json()
    chat_id = first["chat_id"]

    second = await post_chat(gateway_client, key, "second question", chat_id=chat_id)

    assert second.status_code == 202
    assert second.json()["chat_id"] == chat_id
    await wait_for_run(gateway_client, key, first["run"]["id"])
    await wait_for_run(gateway_client, key, second.json()["run"]["id"])
    listing = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", headers=auth(key)
    )
    assert listing.status_code == 200
    items = listing.json()["items"]
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "completed"),
        ("assistant", "completed"),
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert [m["content"] for m in items] == [
        "first question",
        ECHO_PREFIX + "first question",
        "second question",
        ECHO_PREFIX + "second question",
    ]
    assert listing.json()["next_cursor"] is None


async def test_prefer_wait_returns_answer(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()

    response = await post_chat(
        gateway_client, key, "quick answer please", headers={"Prefer": "wait=10"}
    )

    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=10"
    run = response.json()["run"]
    assert run["status"] == "completed"
    assert run["assistant_message"]["content"] == ECHO_PREFIX + "quick answer please"
    assert response.headers["location"] == f"/api/runs/{run['id']}"


async def test_prefer_wait_zero_returns_202(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()

    response = await post_chat(
        gateway_client, key, "no wait", headers={"Prefer": "wait=0"}
    )

    assert response.status_code == 202
    assert response.json()["run"]["status"] == "queued"


async def test_list_chats_pages_newest_first(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    chat_ids = []
    for n in range(3):
        chat_ids.append(
            (await post_chat(gateway_client, key, f"chat number {n}")).json()["chat_id"]
        )

    first = await gateway_client.get("/api/chats?limit=2", headers=auth(key))
    cursor = first.json()["next_cursor"]
    second = await gateway_client.get(
        "/api/chats", params={"limit": 2, "cursor": cursor}, headers=auth(key)
    )

    assert first.status_code == 200
    assert [c["id"] for c in first.json()["items"]] == chat_ids[::-1][:2]
    assert cursor is not None
    assert second.status_code == 200
    assert [c["id"] for c in second.json()["items"]] == chat_ids[:1]
    assert second.json()["next_cursor"] is None
    assert first.json()["items"][0]["title"] == "chat number 2"


async def test_long_title_keeps_whole_characters(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    await post_chat(gateway_client, key, "Plans:\n  " + family * 20)

    listed = await gateway_client.get("/api/chats?limit=1", headers=auth(key))

    # "Plans: " is 7 code points and each family 7: ten families and the
    # ellipsis fit in 80.
    assert listed.json()["items"][0]["title"] == "Plans: " + family * 10 + "\u2026"


async def test_list_messages_pages_in_order(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    first = (await post_chat(gateway_client, key, "m0")).json()
    chat_id = first["chat_id"]
    await wait_for_run(gateway_client, key, first["run"]["id"])
    for n in range(1, 3):
        posted = (await post_chat(gateway_client, key, f"m{n}", chat_id=chat_id)).json()
        await wait_for_run(gateway_client, key, posted["run"]["id"])

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = await gateway_client.get(
            f"/api/chats/{chat_id}/messages", params=params, headers=auth(key)
        )
        assert page.status_code == 200
        seen += [m["content"] for m in page.json()["items"]]
        pages += 1
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break

    assert pages == 2
    assert seen == [
        "m0",
        ECHO_PREFIX + "m0",
        "m1",
        ECHO_PREFIX + "m1",
        "m2",
        ECHO_PREFIX + "m2",
    ]


async def test_client_disconnect_keeps_run(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    posted = (await post_chat(gateway_client, key, "leave early")).json()
    run_id = posted["run"]["id"]

    async with gateway_client.stream(
        "GET", f"/api/runs/{run_id}/events", headers=auth(key)
    ) as response:
        assert response.status_code == 200
        async for _ in response.aiter_raw():
            break

    run = await wait_for_run(gateway_client, key, run_id)
    assert run["status"] == "completed"


async def test_rapid_follow_ups_all_accepted(
    gateway_client: httpx.AsyncClient, api_key
) -> None:
    key = api_key()
    first = (await post_chat(gateway_client, key, "follow-up 0")).json()
    chat_id = first["chat_id"]

    # Posting while earlier runs of the chat finish takes the chat and run
    # locks from both sides at once; every post must still be accepted.
    posted = [first]
    for wave in range(4):
        responses = await asyncio.gather(
            *(
                post_chat(gateway_client, key, f"follow-up {wave}-{n}", chat_id=chat_id)
                for n in range(4)
            )
        )
        assert [r.status_code for r in responses] == [202] * 4
        posted += [r.json() for r in responses]
        await asyncio.sleep(0.05)

    for body in posted:
        run = await wait_for_run(gateway_client, key, body["run"]["id"], timeout=60)
        assert run["status"] == "completed"
    listing = await gateway_client.get(
        f"/api/chats/{chat_id}/messages", params={"limit": 100}, headers=auth(key)
    )
    items = listing.json()["items"]
    assert len(items) == 2 * len(posted)
    assert [m["role"] for m in items] == ["user", "assistant"] * len(posted)
    for user, assistant in zip(items[::2], items[1::2], strict=True):
        assert assistant["content"] == ECHO_PREFIX + user["content"]
