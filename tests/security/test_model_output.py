"""Odd model output goes through the same text rules and never blocks a run."""

from __future__ import annotations

import httpx

from bulkhead.devstack import Stack
from tests.support.api import auth, parse_sse, post_chat, wait_for_run

RAW_REPLY = "nul\x00 surrogate\ud800 low\udfff emoji 👍 rtl שלום end"
STORED_REPLY = "nul\ufffd surrogate\ufffd low\ufffd emoji 👍 rtl שלום end"


async def test_unstorable_model_output_replaced(
    model_stack: Stack, model_key: str, fake_model: object
) -> None:
    fake_model.reset(solo={"reply": RAW_REPLY, "chunks": 7})  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        base_url=model_stack.gateway_url, timeout=15
    ) as client:
        posted = await post_chat(client, model_key, "say something odd", model="solo")
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["run"]["id"]
        run = await wait_for_run(client, model_key, run_id)

        assert run["status"] == "completed", run
        assert run["assistant_message"]["content"] == STORED_REPLY
        stream = await client.get(f"/api/runs/{run_id}/events", headers=auth(model_key))
        events, _ = parse_sse(stream.text)
        deltas = "".join(e.data["delta"] for e in events if e.event == "message.delta")
        assert deltas == STORED_REPLY
