"""Batch streamed output into numbered AppendOutput calls.

The first delta after the start or a reset is sent at once, because time to
first token is what a user notices. Later deltas are joined and sent every
``interval_s`` seconds, or sooner once ``max_chars`` characters wait, so a
fast model costs one gRPC call per interval instead of one per token.
Control events are sent at once, after the text that came before them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb

SendBatch = Callable[[int, list[run_pb.OutputEvent]], Awaitable[None]]


class OutputBatcher:
    """Implements the chain's OutputSink on top of a ``send(batch, events)`` call.

    Batches are numbered from 1 and sent one at a time, in order. A send from
    the interval timer runs in a background task that no caller awaits. So
    when it raises, the error goes to ``on_error``, and the owner stops the run.
    """

    def __init__(
        self,
        send: SendBatch,
        *,
        interval_s: float,
        max_chars: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._send = send
        self._interval_s = interval_s
        self._max_chars = max_chars
        self._on_error = on_error
        self._events: list[run_pb.OutputEvent] = []
        self._text: list[str] = []
        self._text_chars = 0
        self._batch = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._send_next_delta_now = True

    @property
    def batches_sent(self) -> int:
        return self._batch

    async def delta(self, text: str) -> None:
        if not text:
            return
        self._text.append(text)
        self._text_chars += len(text)
        if self._send_next_delta_now or self._text_chars >= self._max_chars:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def event(self, event: run_pb.OutputEvent) -> None:
        self._take_text()
        self._events.append(event)
        await self.flush()

    async def flush(self) -> None:
        """Send everything pending as one batch; no call when nothing is pending."""
        async with self._lock:
            self._take_text()
            if not self._events:
                return
            events, self._events = self._events, []
            self._batch += 1
            for sent in events:
                # The first delta after a reset is again sent at once.
                if sent.HasField("delta"):
                    self._send_next_delta_now = False
                elif sent.HasField("reset"):
                    self._send_next_delta_now = True
            await self._send(self._batch, events)

    async def take_pending(self) -> tuple[int, list[run_pb.OutputEvent]]:
        """Stop the timer and return what is pending as the next batch
        (number and events) without sending it, so that the caller can send
        it with its final report. Returns (0, []) when nothing is pending."""
        await self.aclose()
        async with self._lock:
            self._take_text()
            if not self._events:
                return 0, []
            events, self._events = self._events, []
            self._batch += 1
            return self._batch, events

    async def aclose(self) -> None:
        """Stop the interval timer without sending what is pending."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    def _take_text(self) -> None:
        if not self._text:
            return
        text = "".join(self._text)
        self._text.clear()
        self._text_chars = 0
        self._events.append(run_pb.OutputEvent(delta=run_pb.Delta(text=text)))

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._interval_s)
        # From here on the timer is sending: aclose() must not cancel a send
        # halfway, or its batch number would be used without being stored.
        self._timer = None
        try:
            await self.flush()
        except Exception as error:  # noqa: BLE001 - handed to the owner
            self._on_error(error)
