"""The fallback chain with the real openai provider against a fake model server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bulkhead.models import ModelCatalog, ModelSpec
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import types_pb2
from executor_service.chain import ChainExhaustedError, RetryPolicy, run_chain
from executor_service.providers import BuiltinProvider, OpenAICompatibleProvider
from executor_service.providers.builtin import echo_reply
from executor_service.providers.openai_compatible import parse_retry_after
from tests.support.fake_openai import FakeOpenAI

FAST_RETRIES = RetryPolicy(base_s=0.01, max_s=0.05, retry_after_max_s=5.0)


class RecordingSink:
    """Collects what the chain sends, in order, as ("delta", text) or (kind, event)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.first_delta = asyncio.Event()

    async def delta(self, text: str) -> None:
        self.items.append(("delta", text))
        self.first_delta.set()

    async def event(self, event: run_pb.OutputEvent) -> None:
        kind = event.WhichOneof("kind")
        self.items.append((kind, getattr(event, kind)))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.items]

    def visible_text(self) -> str:
        """The text a client shows: deltas after the last reset."""
        text: list[str] = []
        for kind, value in self.items:
            if kind == "reset":
                text.clear()
            elif kind == "delta":
                text.append(value)
        return "".join(text)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatibleProvider]:
    instance = OpenAICompatibleProvider()
    yield instance
    await instance.aclose()


def make_catalog(fake: FakeOpenAI, **routes: dict[str, Any]) -> ModelCatalog:
    """Build a catalogue of openai routes on the fake server, plus the builtin echo."""
    models = {"bulkhead-echo": ModelSpec(provider="builtin", delta_interval_s=0)}
    for route, options in routes.items():
        fields = {"provider": "openai", "base_url": fake.base_url, **options}
        models[route] = ModelSpec(**fields)
    return ModelCatalog(default_model="bulkhead-echo", models=models)


def make_plan(*chain: str, prompt: str = "hello there") -> run_pb.Plan:
    user = run_pb.ContextMessage(role=types_pb2.MESSAGE_ROLE_USER, content=prompt)
    return run_pb.Plan(model_chain=list(chain), context=[user], max_output_tokens=256)


async def run(
    fake: FakeOpenAI,
    provider: OpenAICompatibleProvider,
    catalog: ModelCatalog,
    plan: run_pb.Plan,
    sink: RecordingSink,
    **options: Any,
) -> Any:
    providers = {"openai": provider, "builtin": BuiltinProvider()}
    return await run_chain(
        plan,
        catalog=catalog,
        providers=providers,
        sink=sink,
        attempt=3,
        policy=options.pop("policy", FAST_RETRIES),
        **options,
    )


async def test_chain_streams_success(fake, provider) -> None:
    fake.configure("gpt-a", reply="one two three four", prompt_tokens=7)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert sink.visible_text() == "one two three four"
    assert sink.kinds().count("delta") == 4
    assert result.model_used == "gpt-a"
    assert result.usage.prompt_tokens == 7
    assert result.usage.completion_tokens == 4
    assert len(result.calls) == 1
    call = result.calls[0]
    assert call.outcome == "completed"
    assert call.number == 1
    assert call.attempt == 3
    assert call.provider == "openai"
    assert call.ended_at.ToDatetime() >= call.started_at.ToDatetime()
    request = fake.calls[0].request
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["max_tokens"] == 256


async def test_chain_retries_503_then_succeeds(fake, provider) -> None:
    fake.configure("gpt-a", reply="fine now", fail_status=503, fail_times=1)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 2}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert result.model_used == "gpt-a"
    assert [c.outcome for c in result.calls] == ["failed", "completed"]
    assert result.calls[0].error_class == "http_503"
    assert "simulated failure 503" in result.calls[0].error_message
    assert sink.kinds()[0] == "attempt_failed"
    assert "model_fallback" not in sink.kinds()
    # No text was streamed by the failed call, so no reset is needed.
    assert "reset" not in sink.kinds()
    assert len(fake.calls_for("gpt-a")) == 2


async def test_chain_honours_retry_after_on_429(fake, provider) -> None:
    fake.configure("gpt-a", reply="ok", fail_status=429, fail_times=1, retry_after="1")
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 1}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert result.model_used == "gpt-a"
    assert result.calls[0].error_class == "http_429"
    first, second = fake.calls_for("gpt-a")
    assert second.started - first.ended >= 0.95


async def test_chain_falls_back_on_400_without_retry(fake, provider) -> None:
    fake.configure("gpt-a", fail_status=400, fail_times=-1)
    fake.configure("gpt-b", reply="from b")
    catalog = make_catalog(
        fake, **{"gpt-a": {"max_retries": 3, "fallbacks": ("gpt-b",)}, "gpt-b": {}}
    )
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a", "gpt-b"), sink)

    assert len(fake.calls_for("gpt-a")) == 1
    assert result.model_used == "gpt-b"
    assert sink.visible_text() == "from b"
    fallback = dict(sink.items)["model_fallback"]
    assert fallback.from_model == "gpt-a"
    assert fallback.to_model == "gpt-b"
    assert fallback.reason == "http_400"
    assert [c.model for c in result.calls] == ["gpt-a", "gpt-b"]


async def test_chain_idle_timeout_retries_with_reset(fake, provider) -> None:
    fake.configure("gpt-a", reply="a b c d", stall_after_chunks=2, stall_times=1)
    catalog = make_catalog(fake, **{"gpt-a": {"idle_timeout_s": 0.3, "max_retries": 1}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert result.calls[0].error_class == "idle_timeout"
    assert result.calls[1].outcome == "completed"
    kinds = sink.kinds()
    assert kinds.index("attempt_failed") < kinds.index("reset")
    assert kinds[:2] == ["delta", "delta"]
    assert sink.visible_text() == "a b c d"
    stalled = fake.calls_for("gpt-a")[0]
    assert await fake.wait_for_call_end(stalled, 2.0)
    assert stalled.client_closed


async def test_chain_first_token_timeout(fake, provider) -> None:
    fake.configure("gpt-a", first_chunk_delay_s=2.0)
    catalog = make_catalog(
        fake, **{"gpt-a": {"first_token_timeout_s": 0.3, "max_retries": 0}}
    )
    sink = RecordingSink()

    with pytest.raises(ChainExhaustedError) as raised:
        await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert raised.value.code == "model_timeout"
    assert raised.value.calls[0].error_class == "first_token_timeout"


async def test_chain_drop_midstream_resets_before_retry(fake, provider) -> None:
    fake.configure("gpt-a", reply="w1 w2 w3 w4 w5", drop_after_chunks=2, drop_times=1)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 1}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert result.calls[0].error_class == "connection_error"
    kinds = sink.kinds()
    assert kinds[:4] == ["delta", "delta", "attempt_failed", "reset"]
    assert sink.visible_text() == "w1 w2 w3 w4 w5"
    assert fake.calls_for("gpt-a")[0].outcome == "dropped"


@pytest.mark.parametrize(
    ("behaviour", "code", "error_class"),
    [
        ({"fail_status": 503, "fail_times": -1}, "model_unavailable", "http_503"),
        ({"fail_status": 429, "fail_times": -1}, "rate_limited", "http_429"),
        ({"fail_status": 401, "fail_times": -1}, "model_rejected", "http_401"),
        (
            {
                "fail_status": 400,
                "fail_times": -1,
                "fail_code": "context_length_exceeded",
            },
            "model_rejected",
            "context_length_exceeded",
        ),
        ({"stall_after_chunks": 0}, "model_timeout", "first_token_timeout"),
    ],
)
async def test_chain_exhausted_error_code(
    fake, provider, behaviour, code, error_class
) -> None:
    fake.configure("gpt-a", **behaviour)
    fake.configure("gpt-b", **behaviour)
    options = {"max_retries": 1, "first_token_timeout_s": 0.2, "idle_timeout_s": 0.2}
    catalog = make_catalog(
        fake, **{"gpt-a": {**options, "fallbacks": ("gpt-b",)}, "gpt-b": options}
    )
    sink = RecordingSink()

    with pytest.raises(ChainExhaustedError) as raised:
        await run(fake, provider, catalog, make_plan("gpt-a", "gpt-b"), sink)

    error = raised.value
    assert error.code == code
    assert error.calls[-1].error_class == error_class
    assert all(c.outcome == "failed" for c in error.calls)
    assert [c.number for c in error.calls] == list(range(1, len(error.calls) + 1))
    assert sink.kinds().count("attempt_failed") == len(error.calls)
    assert sink.kinds().count("model_fallback") == 1


async def test_chain_cancel_closes_connection(fake, provider) -> None:
    fake.configure("gpt-a", reply=" ".join(["word"] * 100), chunk_delay_s=0.2)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()
    chain = asyncio.create_task(run(fake, provider, catalog, make_plan("gpt-a"), sink))

    await asyncio.wait_for(sink.first_delta.wait(), 5.0)
    chain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await chain

    record = fake.calls_for("gpt-a")[0]
    started = time.monotonic()
    assert await fake.wait_for_call_end(record, 2.0)
    assert time.monotonic() - started < 2.0
    assert record.client_closed
    assert record.outcome == "client_closed"


@pytest.mark.parametrize(
    ("behaviour", "error_class"),
    [
        ({"fail_status": 500, "fail_times": -1}, "http_500"),
        ({"garble_after_chunks": 0, "garble_times": -1}, "invalid_response"),
    ],
)
async def test_chain_falls_back_to_builtin(
    fake, provider, behaviour: dict[str, Any], error_class: str
) -> None:
    fake.configure("gpt-a", **behaviour)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 0}})
    sink = RecordingSink()

    result = await run(
        fake,
        provider,
        catalog,
        make_plan("gpt-a", "bulkhead-echo", prompt="hi you"),
        sink,
    )

    assert len(fake.calls_for("gpt-a")) == 1
    assert [c.error_class for c in result.calls] == [error_class, ""]
    assert result.model_used == "bulkhead-echo"
    assert sink.visible_text() == "You said: hi you"
    assert result.calls[-1].provider == "builtin"


async def test_chain_resets_first_when_resuming(fake, provider) -> None:
    catalog = make_catalog(fake)
    sink = RecordingSink()

    await run(
        fake, provider, catalog, make_plan("bulkhead-echo"), sink, reset_first=True
    )

    assert sink.kinds()[0] == "reset"


async def test_chain_sanitizes_model_text(fake, provider) -> None:
    fake.configure("gpt-a", reply="bad\x00byte")
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()

    await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert sink.visible_text() == "bad\ufffdbyte"


async def test_chain_retries_event_that_is_not_json(fake, provider) -> None:
    fake.configure("gpt-a", reply="w1 w2 w3", garble_after_chunks=2, garble_times=1)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 1}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    failed = result.calls[0]
    assert failed.outcome == "failed"
    assert failed.error_class == "invalid_response"
    assert failed.error_message == (
        "the model server sent an event whose data is not JSON"
    )
    assert sink.kinds()[:4] == ["delta", "delta", "attempt_failed", "reset"]
    assert sink.visible_text() == "w1 w2 w3"
    assert [c.outcome for c in fake.calls_for("gpt-a")] == ["garbled", "completed"]


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "10", "completion_tokens": 4},
        {"prompt_tokens": 1.5, "completion_tokens": 4},
        {"prompt_tokens": 2**40, "completion_tokens": 4},
        {"prompt_tokens": -5, "completion_tokens": 4},
        {"prompt_tokens": True, "completion_tokens": 4},
    ],
)
async def test_chain_usage_not_a_count_is_zero(
    fake, provider, usage: dict[str, Any]
) -> None:
    fake.configure("gpt-a", reply="one two three four", usage=usage)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert sink.visible_text() == "one two three four"
    assert [c.outcome for c in result.calls] == ["completed"]
    assert result.usage.prompt_tokens == 0
    assert result.usage.completion_tokens == 4


async def test_chain_completes_when_stream_stays_open_after_finish(
    fake, provider
) -> None:
    # The finish reason and the usage come, then neither [DONE] nor the end.
    fake.configure("gpt-a", reply="one two three", hold_after_finish=True)
    catalog = make_catalog(fake, **{"gpt-a": {"idle_timeout_s": 0.5}})
    sink = RecordingSink()

    result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    assert sink.visible_text() == "one two three"
    assert [(c.outcome, c.error_class) for c in result.calls] == [("completed", "")]
    assert result.usage.completion_tokens == 3
    assert len(fake.calls_for("gpt-a")) == 1


async def test_chain_json_response_is_invalid(fake, provider) -> None:
    fake.configure("gpt-a", ignore_stream=True)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 0}})
    sink = RecordingSink()

    with pytest.raises(ChainExhaustedError) as raised:
        await run(fake, provider, catalog, make_plan("gpt-a"), sink)

    [call] = raised.value.calls
    assert call.error_class == "invalid_response"
    assert call.error_message == (
        "the model server responded with application/json, not an event stream"
    )


async def test_chain_cuts_answer_at_output_limit(fake, provider) -> None:
    fake.configure("gpt-a", reply="abcd" * 50, chunks=50, chunk_delay_s=0.02)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()

    result = await run(
        fake, provider, catalog, make_plan("gpt-a"), sink, max_output_chars=30
    )

    assert sink.visible_text() == ("abcd" * 8)[:30]
    assert result.model_used == "gpt-a"
    call = result.calls[0]
    assert call.outcome == "completed"
    assert call.error_class == "output_limit"
    assert call.error_message == "the answer was cut at 30 characters"
    # The call was closed at the limit, not read to its end.
    record = fake.calls_for("gpt-a")[0]
    assert await fake.wait_for_call_end(record, 5.0)
    assert record.client_closed
    assert record.chunks_sent < 50


async def test_chain_answer_within_output_limit_is_whole(fake, provider) -> None:
    fake.configure("gpt-a", reply="abcd" * 5, chunks=5)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()

    result = await run(
        fake, provider, catalog, make_plan("gpt-a"), sink, max_output_chars=20
    )

    assert sink.visible_text() == "abcd" * 5
    assert result.calls[0].error_class == ""


async def test_chain_event_over_size_bound_is_invalid(fake) -> None:
    # The limit is 12 bytes per character of a 1,000-character output plus a
    # margin: 77,536 bytes. One event of 300,000 characters exceeds it.
    provider = OpenAICompatibleProvider(max_output_chars=1000)
    fake.configure("gpt-a", reply="x" * 300_000, chunks=1)
    catalog = make_catalog(fake, **{"gpt-a": {"max_retries": 0}})
    sink = RecordingSink()
    try:
        with pytest.raises(ChainExhaustedError) as raised:
            await run(fake, provider, catalog, make_plan("gpt-a"), sink)
    finally:
        await provider.aclose()

    [call] = raised.value.calls
    assert call.error_class == "invalid_response"
    assert call.error_message == "the model server sent an event over 77536 bytes"
    assert sink.visible_text() == ""


async def test_chain_event_within_size_bound_is_read(fake) -> None:
    # Every character of this reply is escaped as 12 bytes of JSON.
    provider = OpenAICompatibleProvider(max_output_chars=1000)
    reply = "\U0001f600" * 1000
    fake.configure("gpt-a", reply=reply, chunks=1)
    catalog = make_catalog(fake, **{"gpt-a": {}})
    sink = RecordingSink()
    try:
        result = await run(fake, provider, catalog, make_plan("gpt-a"), sink)
    finally:
        await provider.aclose()

    assert sink.visible_text() == reply
    assert result.calls[0].error_class == ""


async def test_builtin_provider_is_deterministic() -> None:
    spec = ModelSpec(provider="builtin", delta_interval_s=0)
    messages = [{"role": "user", "content": "x " * 150 + "tail"}]

    async def collect() -> list[Any]:
        return [c async for c in BuiltinProvider().stream(spec, messages, 100)]

    first, second = await collect(), await collect()

    assert first == second
    text = "".join(c.text for c in first)
    assert text == echo_reply(messages)
    assert text == "You said: " + messages[0]["content"][:200]
    assert len([c for c in first if c.text]) > 3
    usage = first[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(text.split())
    assert usage.prompt_tokens == 151


def test_parse_retry_after_formats() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert (
        parse_retry_after(
            {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0
        )
        == 10.0
    )
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


async def test_error_message_hides_api_key(fake, provider, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-test-1234567890abcdef")
    fake.configure("gpt-a", fail_status=401, fail_times=-1)
    catalog = make_catalog(fake, **{"gpt-a": {"api_key_env": "FAKE_OPENAI_KEY"}})

    with pytest.raises(ChainExhaustedError) as raised:
        await run(fake, provider, catalog, make_plan("gpt-a"), RecordingSink())

    assert fake.calls[0].client_closed is False
    message = raised.value.calls[0].error_message
    assert "sk-test" not in message
    assert message.startswith("HTTP 401")
