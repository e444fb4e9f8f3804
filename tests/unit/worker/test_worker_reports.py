"""How RunClient retries claims and reports while chat_service cannot be reached."""

from __future__ import annotations

import time

import grpc
import pytest

from bulkhead.devstack.ports import free_port
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import create_channel
from bulkhead.worker.runs import RunClient

# The channel's own retries of UNAVAILABLE can use up the deadline, so an
# unreachable server ends a call with either code.
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


async def test_report_retry_stops_after_window() -> None:
    # Nothing listens on the port, so every try fails.
    channel = create_channel(f"127.0.0.1:{free_port()}")
    client = RunClient(channel, timeout_s=0.5, retry_s=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.complete("run", 1, "model", types_pb2.Usage(), [])
    finally:
        await channel.close()

    assert raised.value.code() in UNREACHABLE
    assert time.monotonic() - started >= 1.5


async def test_report_without_window_fails_at_once() -> None:
    channel = create_channel(f"127.0.0.1:{free_port()}")
    client = RunClient(channel, timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.append_output("run", 1, 1, [])
    finally:
        await channel.close()

    assert raised.value.code() in UNREACHABLE
    assert time.monotonic() - started < 1.5
