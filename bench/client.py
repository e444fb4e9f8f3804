"""Load generator for streams: a raw asyncio HTTP/1.1 client in its own process.

``python -m bench.client MODE JSON`` prints one JSON object on stdout. Every
mode is bounded by a count of runs and by ``time_limit_s``, and connects to
127.0.0.1 only. Times are ``time.time()`` values, comparable with the fake
model server's call log on the same machine.

Modes:

- ``streams``: ``concurrency`` workers each post ``per_worker`` messages and
  read each run's SSE stream to its terminal event, one after the other.
- ``post``: post ``count`` messages from ``concurrency`` workers; no stream.
- ``hold``: post ``count`` messages, open one SSE stream per run and read
  them all for ``hold_s`` seconds.
- ``stall``: like ``hold``, but read only the response headers, then stop
  reading (a small receive buffer), so that the server's buffers fill up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop

STALLED_RECEIVE_BUFFER_BYTES = 4096


class HttpError(Exception):
    """An unexpected HTTP status or a malformed response."""


@dataclass
class StreamRecord:
    """Timeline of one message: POST, the run's first delta and its end."""

    marker: str
    post_sent: float
    post_done: float = 0.0
    status: int = 0
    run_id: str = ""
    first_delta_at: float | None = None
    ended_at: float | None = None
    terminal: str = ""
    delta_events: int = 0
    delta_chars: int = 0
    error: str = ""


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection to the server under test."""

    host: str
    port: int
    authorization: str
    receive_buffer: int | None = None
    reader: asyncio.StreamReader | None = field(default=None, repr=False)
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def open(self) -> None:
        if self.receive_buffer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port
            )
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connect, so that the TCP window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        self.reader, self.writer = await asyncio.open_connection(
            sock=sock, limit=self.receive_buffer
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, method: str, path: str, body: bytes | None = None) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: {self.authorization}\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        await self.writer.drain()

    async def read_head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if value:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def read_body(self, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        if "chunked" in headers.get("transfer-encoding", ""):
            body = bytearray()
            async for chunk in self.chunks():
                body += chunk
            return bytes(body)
        length = int(headers.get("content-length", "0"))
        return await self.reader.readexactly(length) if length else b""

    async def chunks(self) -> Any:
        """Yield the chunks of a chunked body as they arrive."""
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        await self.send(method, path, body)
        status, headers = await self.read_head()
        data = await self.read_body(headers)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data


class Client:
    """Posts messages and reads run event streams for one load mode."""

    def __init__(self, params: dict[str, Any]) -> None:
        parts = urlsplit(params["url"])
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"load only goes to 127.0.0.1, not {params['url']}")
        self.host, self.port = parts.hostname, parts.port
        self.authorization = params["authorization"]
        self.model = params.get("model")
        self.deadline = time.monotonic() + float(params.get("time_limit_s", 120))

    def connection(self, receive_buffer: int | None = None) -> Connection:
        return Connection(self.host, self.port, self.authorization, receive_buffer)

    async def post(self, conn: Connection) -> StreamRecord:
        marker = uuid.uuid4().hex
        body: dict[str, Any] = {"content": f"bench message {marker}"}
        if self.model:
            body["model"] = self.model
        record = StreamRecord(marker=marker, post_sent=time.time())
        status, _, data = await conn.request(
            "POST", "/api/chat", json.dumps(body).encode()
        )
        record.post_done = time.time()
        record.status = status
        if status not in (200, 202):
            record.error = f"POST returned {status}: {data[:200]!r}"
            return record
        record.run_id = json.loads(data)["run"]["id"]
        return record

    async def read_stream(self, conn: Connection, record: StreamRecord) -> None:
        """Read a run's SSE stream until its terminal event, filling ``record``."""
        await conn.send("GET", f"/api/runs/{record.run_id}/events")
        status, headers = await conn.read_head()
        if status != 200:
            record.error = f"GET events returned {status}"
            await conn.read_body(headers)
            return
        pending = b""
        async for chunk in conn.chunks():
            pending += chunk
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                self._take_event(event, record)
        conn.close()

    def _take_event(self, event: bytes, record: StreamRecord) -> None:
        kind, data = "", b""
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if kind == "message.delta":
            now = time.time()
            if record.first_delta_at is None:
                record.first_delta_at = now
            record.delta_events += 1
            record.delta_chars += len(json.loads(data)["delta"])
        elif kind in ("run.completed", "run.failed", "run.cancelled"):
            record.terminal = kind
            record.ended_at = time.time()

    async def one_stream(self) -> StreamRecord:
        post_conn = self.connection()
        try:
            record = await self.post(post_conn)
        finally:
            post_conn.close()
        if record.run_id:
            stream_conn = self.connection()
            try:
                await self.read_stream(stream_conn, record)
            finally:
                stream_conn.close()
        return record

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


async def run_streams(client: Client, params: dict[str, Any]) -> dict[str, Any]:
    records: list[StreamRecord] = []

    async def worker() -> None:
        for _ in range(int(params["per_worker"])):
            if client.time_left() <= 0:
                return
            try:
                records.append(
                    await asyncio.wait_for(client.one_stream(), client.time_left())
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
                records.append(
                    StreamRecord(marker="", post_sent=0.0, error=repr(error))
                )

    started = time.time()
    await asyncio.gather(*(worker() for _ in range(int(params["concurrency"]))))
    return {
        "started": started,
        "ended": time.time(),
        "records": [asdict(r) for r in records],
    }


async def run_posts(client: Client, params: dict[str, Any]) -> list[StreamRecord]:
    remaining = int(params["count"])
    records: list[StreamRecord] = []

    async def worker() -> None:
        nonlocal remaining
        conn = client.connection()
        try:
            while remaining > 0 and client.time_left() > 0:
                remaining -= 1
                records.append(await client.post(conn))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(int(params["concurrency"]))))
    return records


async def run_hold(
    client: Client, params: dict[str, Any], *, stall: bool
) -> dict[str, Any]:
    posted = await run_posts(client, params)
    runs = [r for r in posted if r.run_id]
    receive_buffer = STALLED_RECEIVE_BUFFER_BYTES if stall else None
    answered = opened = 0
    all_open = asyncio.Event()

    async def watch(record: StreamRecord) -> None:
        nonlocal answered, opened
        conn = client.connection(receive_buffer)
        try:
            await conn.send("GET", f"/api/runs/{record.run_id}/events")
            status, _ = await conn.read_head()
            answered += 1
            if answered == len(runs):
                all_open.set()
            if status != 200:
                record.error = f"GET events returned {status}"
                return
            opened += 1
            if stall:
                await asyncio.sleep(client.time_left())
                return
            async for chunk in conn.chunks():
                record.delta_chars += len(chunk)
        except (OSError, asyncio.IncompleteReadError) as error:
            record.error = repr(error)
        finally:
            conn.close()

    tasks = [asyncio.create_task(watch(r)) for r in runs]
    opened_at = None
    try:
        await asyncio.wait_for(all_open.wait(), client.time_left())
        opened_at = time.time()
    except TimeoutError:
        pass
    hold_s = min(float(params["hold_s"]), max(client.time_left(), 0))
    await asyncio.sleep(hold_s)
    closed_at = time.time()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "posted": len(posted),
        "post_errors": sum(1 for r in posted if not r.run_id),
        "streams": len(runs),
        "opened": opened,
        "opened_at": opened_at,
        "closed_at": closed_at,
        "stream_errors": sum(1 for r in runs if r.error),
        "stream_error_kinds": dict(
            Counter(r.error for r in runs if r.error).most_common(3)
        ),
        "bytes_read": sum(r.delta_chars for r in runs),
    }


async def main_async(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    client = Client(params)
    if mode == "streams":
        return await run_streams(client, params)
    if mode == "post":
        started = time.time()
        records = await run_posts(client, params)
        return {
            "started": started,
            "ended": time.time(),
            "records": [asdict(r) for r in records],
        }
    if mode in ("hold", "stall"):
        return await run_hold(client, params, stall=mode == "stall")
    raise ValueError(f"unknown mode {mode!r}: use streams, post, hold or stall")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.client streams|post|hold|stall JSON")
    result = uvloop.run(main_async(sys.argv[1], json.loads(sys.argv[2])))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
