"""A scriptable OpenAI-compatible chat completions server for tests and benchmarks.

It is a real HTTP/1.1 server on 127.0.0.1 (asyncio streams, one request per
connection, ``Connection: close``). ``POST .../chat/completions`` responds
like the OpenAI API: a JSON ``chat.completion``, or with ``"stream": true``
server-sent events in chunked transfer encoding, that is a role chunk,
content chunks, a chunk with ``finish_reason`` "stop", a usage chunk with
empty ``choices`` when ``stream_options.include_usage`` is set, then
``data: [DONE]``.

Each model name (or ``"*"`` for any other) has a :class:`Behaviour`: reply
text and chunking, delays, failures for the first K calls, a stall or a
dropped connection after N chunks. Every call is recorded in
:attr:`FakeOpenAI.calls`, including whether the client closed the
connection before the response ended.

Control endpoints, for use from another process:

- ``POST /_fake/config`` with ``{"model": {behaviour fields}}`` replaces the
  behaviours (``{"*": {...}}`` sets the default);
- ``GET /_fake/calls`` returns the call log as JSON;
- ``POST /_fake/reset`` clears the call log and the per-model call counts.

Standalone: ``python -m tests.support.fake_openai --port 8089 --config '{"*": {"reply": "hi"}}'``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Self

DEFAULT_REPLY = "Hello from the fake model."
MAX_BODY_BYTES = 10 * 1024 * 1024
_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass
class Behaviour:
    """Responses of the server to calls for one model.

    Attributes:
        reply: Text of the answer.
        chunks: Number of content chunks the reply is split into; None for
            one chunk per word.
        chunk_delay_s: Pause before each content chunk after the first.
        first_chunk_delay_s: Pause before the first content chunk (after
            the response headers and the role chunk).
        headers_delay_s: Pause before the response headers are sent.
        fail_status: HTTP status to answer with instead of a completion.
        fail_times: How many calls fail with ``fail_status``; -1 for all.
        fail_code: ``error.code`` in the error body (for example
            ``context_length_exceeded``).
        retry_after: Value of the Retry-After header on failures.
        stall_after_chunks: Stop sending, forever, after this many content
            chunks (0 stalls before the first).
        stall_times: How many calls stall; -1 for all.
        drop_after_chunks: Close the connection abruptly after this many
            content chunks, in the middle of the chunked body.
        drop_times: How many calls drop the connection; -1 for all.
        garble_after_chunks: Send an event whose data is not JSON after this
            many content chunks, then end the stream with ``[DONE]``.
        garble_times: How many calls send that event; -1 for all.
        prompt_tokens: Prompt tokens reported in usage.
        usage: Sent as the usage object instead of the counted one, for
            servers that send counts of the wrong type.
        hold_after_finish: Keep the connection open after the finish reason
            and the usage, without ``[DONE]``, until the client closes it.
        ignore_stream: Respond to a streamed request with the JSON completion.
    """

    reply: str = DEFAULT_REPLY
    chunks: int | None = None
    chunk_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    headers_delay_s: float = 0.0
    fail_status: int | None = None
    fail_times: int = 0
    fail_code: str | None = None
    retry_after: str | None = None
    stall_after_chunks: int | None = None
    stall_times: int = -1
    drop_after_chunks: int | None = None
    drop_times: int = -1
    garble_after_chunks: int | None = None
    garble_times: int = -1
    prompt_tokens: int = 10
    usage: dict[str, Any] | None = None
    hold_after_finish: bool = False
    ignore_stream: bool = False

    def split_reply(self) -> list[str]:
        if self.chunks is None:
            words = self.reply.split(" ")
            return [w + " " for w in words[:-1]] + [words[-1]] if words else []
        count = max(1, self.chunks)
        size = max(1, -(-len(self.reply) // count))
        return [self.reply[i : i + size] for i in range(0, len(self.reply), size)]


@dataclass
class CallRecord:
    """One chat completions call as the server saw it.

    ``outcome`` is "completed", "failed" (an error status), "stalled",
    "dropped" (closed by the server), "garbled" (an event that is not JSON)
    or "client_closed". ``first_chunk_at``
    is the ``time.time()`` at which the first content chunk was written.
    """

    model: str
    stream: bool
    started: float
    ended: float | None = None
    outcome: str = "running"
    status: int = 200
    client_closed: bool = False
    chunks_sent: int = 0
    first_chunk_at: float | None = None
    request: dict[str, Any] = field(default_factory=dict)


class _ClientClosedError(Exception):
    pass


@dataclass(frozen=True)
class _StreamScript:
    """A behaviour with the stall, drop and garble settings of one call."""

    behaviour: Behaviour
    stall_after: int | None
    drop_after: int | None
    garble_after: int | None = None


def _applies(times: int, number: int) -> bool:
    """Return whether a "first K calls" setting (-1: all) applies to call ``number``."""
    return times < 0 or number <= times


class FakeOpenAI:
    """The server. Use ``async with FakeOpenAI() as fake`` or start()/stop()."""

    def __init__(
        self,
        behaviours: dict[str, Behaviour] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.calls: list[CallRecord] = []
        self._counts: dict[str, int] = {}
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """URL to pass as ``base_url`` to an OpenAI client."""
        return f"http://{self._host}:{self.port}/v1"

    def configure(self, model: str, **fields: Any) -> Behaviour:
        """Set the behaviour of one model ("*" for any other); returns it."""
        behaviour = Behaviour(**fields)
        self.behaviours[model] = behaviour
        return behaviour

    def calls_for(self, model: str) -> list[CallRecord]:
        return [c for c in self.calls if c.model == model]

    def reset(self) -> None:
        self.calls.clear()
        self._counts.clear()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for_call_end(self, record: CallRecord, timeout_s: float) -> bool:
        """Wait until a call has ended; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        while record.ended is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return record.ended is not None

    # --- connection handling -------------------------------------------------

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            request = await _read_request(reader)
            if request is not None:
                await self._route(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, _ClientClosedError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _route(
        self,
        request: tuple[str, str, dict[str, str], bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        method, path, _headers, body = request
        path = path.split("?", 1)[0]
        if method == "POST" and path.endswith("/chat/completions"):
            await self._chat_completions(body, reader, writer)
        elif method == "POST" and path == "/_fake/config":
            data = json.loads(body or b"{}")
            self.behaviours = {k: Behaviour(**v) for k, v in data.items()}
            await _send_json(writer, 200, {"ok": True})
        elif method == "POST" and path == "/_fake/reset":
            self.reset()
            await _send_json(writer, 200, {"ok": True})
        elif method == "GET" and path == "/_fake/calls":
            await _send_json(writer, 200, [dataclasses.asdict(c) for c in self.calls])
        else:
            await _send_json(writer, 404, _error_body(404, f"no route {method} {path}"))

    async def _chat_completions(
        self, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            await _send_json(writer, 400, _error_body(400, "body is not JSON"))
            return
        model = str(payload.get("model", ""))
        behaviour = (
            self.behaviours.get(model) or self.behaviours.get("*") or Behaviour()
        )
        number = self._counts.get(model, 0) + 1
        self._counts[model] = number
        record = CallRecord(
            model=model,
            stream=bool(payload.get("stream")),
            started=time.time(),
            request=payload,
        )
        self.calls.append(record)
        # A read of the request side returns b"" once the client closes the
        # connection, because clients send nothing more on it.
        closed = asyncio.create_task(reader.read(1))
        try:
            await self._answer(payload, behaviour, number, record, writer, closed)
        except (ConnectionError, _ClientClosedError):
            record.client_closed = True
            record.outcome = "client_closed"
            raise
        finally:
            closed.cancel()
            record.ended = time.time()

    async def _answer(
        self,
        payload: dict[str, Any],
        behaviour: Behaviour,
        number: int,
        record: CallRecord,
        writer: asyncio.StreamWriter,
        closed: asyncio.Task[bytes],
    ) -> None:
        await _pause(behaviour.headers_delay_s, closed)
        failing = behaviour.fail_status is not None and _applies(
            behaviour.fail_times, number
        )
        if failing:
            assert behaviour.fail_status is not None
            record.status = behaviour.fail_status
            record.outcome = "failed"
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = behaviour.retry_after
            message = f"simulated failure {behaviour.fail_status}"
            body = _error_body(behaviour.fail_status, message, behaviour.fail_code)
            await _send_json(writer, behaviour.fail_status, body, headers)
            return
        if record.stream and not behaviour.ignore_stream:
            stall_after = behaviour.stall_after_chunks
            if not _applies(behaviour.stall_times, number):
                stall_after = None
            drop_after = behaviour.drop_after_chunks
            if not _applies(behaviour.drop_times, number):
                drop_after = None
            garble_after = behaviour.garble_after_chunks
            if not _applies(behaviour.garble_times, number):
                garble_after = None
            script = _StreamScript(behaviour, stall_after, drop_after, garble_after)
            await self._stream(payload, script, record, writer, closed)
        else:
            await _send_json(writer, 200, _completion(payload, behaviour))
            record.outcome = "completed"

    async def _stream(
        self,
        payload: dict[str, Any],
        script: _StreamScript,
        record: CallRecord,
        writer: asyncio.StreamWriter,
        closed: asyncio.Task[bytes],
    ) -> None:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = str(payload.get("model", ""))

        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def chunk(
            choices: list[dict[str, Any]], usage: dict[str, int] | None = None
        ) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            # With include_usage, every chunk carries "usage": null except
            # the last one, as the OpenAI API sends it.
            if include_usage:
                data["usage"] = usage
            return data

        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        role = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
        }
        await _send_event(writer, chunk([role]))

        behaviour = script.behaviour
        parts = behaviour.split_reply()
        for index, part in enumerate(parts):
            if script.stall_after is not None and index >= script.stall_after:
                record.outcome = "stalled"
                await closed
                raise _ClientClosedError
            if script.drop_after is not None and index >= script.drop_after:
                record.outcome = "dropped"
                writer.transport.abort()
                return
            if script.garble_after is not None and index >= script.garble_after:
                await _send_data(writer, b"data: {not json\n\n")
                await _send_data(writer, b"data: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                record.outcome = "garbled"
                return
            delay = (
                behaviour.first_chunk_delay_s if index == 0 else behaviour.chunk_delay_s
            )
            await _pause(delay, closed)
            content = {"index": 0, "delta": {"content": part}, "finish_reason": None}
            if record.first_chunk_at is None:
                record.first_chunk_at = time.time()
            await _send_event(writer, chunk([content]))
            record.chunks_sent += 1

        if script.stall_after is not None and script.stall_after >= len(parts):
            record.outcome = "stalled"
            await closed
            raise _ClientClosedError
        stop = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await _send_event(writer, chunk([stop]))
        if include_usage:
            await _send_event(writer, chunk([], _usage(behaviour)))
        if behaviour.hold_after_finish:
            record.outcome = "held"
            await closed
            raise _ClientClosedError
        await _send_data(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        record.outcome = "completed"


async def _pause(delay_s: float, closed: asyncio.Task[bytes]) -> None:
    """Sleep, but raise at once if the client closes the connection."""
    if delay_s <= 0:
        if closed.done():
            raise _ClientClosedError
        return
    done, _ = await asyncio.wait({closed}, timeout=delay_s)
    if done:
        raise _ClientClosedError


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            return None
        body = await reader.readexactly(length) if length else b""
    return parts[0].upper(), parts[1], headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > MAX_BODY_BYTES:
            raise ConnectionError("request body too large")


async def _send_event(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    line = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    await _send_data(writer, line)


async def _send_data(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    await writer.drain()


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {
        "error": {"message": message, "type": error_type, "param": None, "code": code}
    }


def _usage(behaviour: Behaviour) -> dict[str, Any]:
    if behaviour.usage is not None:
        return behaviour.usage
    completion_tokens = len(behaviour.reply.split())
    return {
        "prompt_tokens": behaviour.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": behaviour.prompt_tokens + completion_tokens,
    }


def _completion(payload: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(payload.get("model", "")),
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": behaviour.reply,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(behaviour),
    }


async def _main(port: int, config: str) -> None:
    behaviours = {k: Behaviour(**v) for k, v in json.loads(config).items()}
    fake = FakeOpenAI(behaviours, port=port)
    await fake.start()
    print(f"fake openai listening on {fake.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI chat completions server.")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)."
    )
    parser.add_argument(
        "--config",
        default="{}",
        help='JSON object mapping model names (or "*") to Behaviour fields.',
    )
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.port, args.config))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
