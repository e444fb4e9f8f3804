"""Batching of streamed output into AppendOutput calls."""

from __future__ import annotations

import asyncio

from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from executor_service.output import OutputBatcher


class RecordingSend:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[run_pb.OutputEvent]]] = []

    async def __call__(self, batch: int, events: list[run_pb.OutputEvent]) -> None:
        self.batches.append((batch, list(events)))

    def kinds(self, index: int) -> list[str]:
        return [e.WhichOneof("kind") for e in self.batches[index][1]]


def make_batcher(send: RecordingSend, interval_s: float = 0.05, max_chars: int = 2048):
    errors: list[BaseException] = []
    batcher = OutputBatcher(
        send, interval_s=interval_s, max_chars=max_chars, on_error=errors.append
    )
    return batcher, errors


async def test_output_first_delta_sent_at_once() -> None:
    send = RecordingSend()
    batcher, _ = make_batcher(send, interval_s=10.0)

    await batcher.delta("first")
    await batcher.delta("second")

    assert len(send.batches) == 1
    assert send.batches[0][0] == 1
    assert send.batches[0][1][0].delta.text == "first"
    await batcher.aclose()


async def test_output_coalesces_deltas_per_interval() -> None:
    send = RecordingSend()
    batcher, errors = make_batcher(send, interval_s=0.05)

    await batcher.delta("a")
    for word in ["b", "c", "d"]:
        await batcher.delta(word)
    await asyncio.sleep(0.15)

    assert errors == []
    assert [b for b, _ in send.batches] == [1, 2]
    assert send.batches[1][1][0].delta.text == "bcd"
    await batcher.aclose()


async def test_output_flushes_at_max_chars() -> None:
    send = RecordingSend()
    batcher, _ = make_batcher(send, interval_s=10.0, max_chars=10)

    await batcher.delta("x")
    await batcher.delta("12345")
    assert len(send.batches) == 1
    await batcher.delta("67890")

    assert len(send.batches) == 2
    assert send.batches[1][1][0].delta.text == "1234567890"
    await batcher.aclose()


async def test_output_event_flushes_text_before_it() -> None:
    send = RecordingSend()
    batcher, _ = make_batcher(send, interval_s=10.0)
    await batcher.delta("a")
    await batcher.delta("b")

    await batcher.event(run_pb.OutputEvent(reset=run_pb.Reset(reason="retry")))
    await batcher.delta("after reset")

    assert send.kinds(1) == ["delta", "reset"]
    assert send.batches[1][1][0].delta.text == "b"
    # After a reset the next delta is again sent at once.
    assert send.kinds(2) == ["delta"]
    assert send.batches[2][0] == 3
    await batcher.aclose()


async def test_output_timer_error_goes_to_owner() -> None:
    async def failing_send(batch: int, events: list[run_pb.OutputEvent]) -> None:
        if batch > 1:
            raise RuntimeError("chat_service down")

    errors: list[BaseException] = []
    batcher = OutputBatcher(
        failing_send, interval_s=0.02, max_chars=2048, on_error=errors.append
    )
    await batcher.delta("a")
    await batcher.delta("b")
    await asyncio.sleep(0.1)

    assert len(errors) == 1
    assert "chat_service down" in str(errors[0])
    await batcher.aclose()
