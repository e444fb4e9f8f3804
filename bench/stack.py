"""One Bulkhead stack for a benchmark phase: fresh database, stream and API key.

Each phase gets a stack of its own, so that runs left queued by one load
never cost CPU in the next measurement. POSTs are accepted faster than the
workers finish runs, so every load leaves such a backlog.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any, Self

import asyncpg

from bench.fake_model import API_KEY_ENV
from bench.procs import REPO_ROOT, memory_kb
from bulkhead.devstack import Stack, StackConfig, jetstream_problem
from tests.support.postgres import create_database, drop_database
from tests.support.streams import delete_stream

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
FAKE_API_KEY = "bench-fake-key"

# "single": one chat_service replica serves every caller, all processes at
# the default CPU priority (what `make up` runs). "split": the gateway and
# the workers dial chat_service replicas of their own, and the processes
# that serve only AI work run at niceness 19, the lowest CPU weight (what
# docker-compose.yml does with cpu_shares), so that under contention the
# synchronous path runs first.
LAYOUTS = ("single", "split")
SPLIT_ASYNC_NICE = 19


def postgres_admin_url() -> str:
    """Admin URL used to create and drop the benchmark's databases."""
    return os.environ.get("BULKHEAD_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_ADMIN_URL


def shared_nats_url() -> str | None:
    """URL of a NATS server with JetStream to share, or None to start one per stack."""
    url = os.environ.get("BULKHEAD_BENCH_NATS_URL") or DEFAULT_NATS_URL
    return url if jetstream_problem(url) is None else None


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class BenchStack:
    """A started stack on PostgreSQL or SQLite, with an API key and cleanup."""

    def __init__(
        self,
        work_dir: Path,
        models_file: Path,
        *,
        database: str = "postgres",
        replicas: dict[str, int] | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
        layout: str = "single",
    ) -> None:
        suffix = uuid.uuid4().hex[:12]
        self.kind = database
        self.var_dir = work_dir / f"stack-{suffix}"
        self.var_dir.mkdir(parents=True)
        self._admin_url = postgres_admin_url()
        self._database_name: str | None = None
        if database == "postgres":
            self._database_name = f"bulkhead_bench_{suffix}"
            self.database_url = create_database(self._admin_url, self._database_name)
        else:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / 'bulkhead.db'}"
        self._nats_url = shared_nats_url()
        self._stream = f"BULKHEAD_BENCH_{suffix}"
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
        split = layout == "split"
        replicas = dict(replicas or {})
        if split:
            replicas["chat_service"] = max(2, replicas.get("chat_service", 1))
        self.stack = Stack(
            StackConfig(
                workdir=REPO_ROOT,
                var_dir=self.var_dir,
                database_url=self.database_url,
                nats_url=self._nats_url,
                nats_stream=self._stream,
                nats_subject_prefix=f"bench{suffix}",
                models_file=models_file,
                replicas=replicas,
                split_chat_service=split,
                async_nice=SPLIT_ASYNC_NICE if split else 0,
                env={
                    "BULKHEAD_DEV_MODE": "true",
                    API_KEY_ENV: FAKE_API_KEY,
                    # The stack is thrown away after the phase: no grace for
                    # runs still in flight when it stops.
                    "BULKHEAD_EXECUTOR_SHUTDOWN_GRACE_S": "0",
                    "BULKHEAD_AGENT_SHUTDOWN_GRACE_S": "0",
                    "BULKHEAD_GATEWAY_SHUTDOWN_TIMEOUT_S": "0",
                    # The load comes from one API key, so the per-user limits
                    # on messages per minute and open streams are off.
                    "BULKHEAD_MAX_MESSAGES_PER_MINUTE": "0",
                    "BULKHEAD_MAX_STREAMS_PER_USER": "0",
                },
                service_env=service_env or {},
                stop_grace_s=5.0,
            )
        )
        self.api_key = ""
        # Processes stopped on purpose, left out of pids().
        self.stopped: set[str] = set()

    def start(self) -> Self:
        try:
            self.stack.start()
            self.api_key = self.stack.create_api_key(f"bench-{uuid.uuid4().hex[:8]}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the processes, then drop the database and delete the stream."""
        self.stack.stop()
        if self._database_name is not None:
            drop_database(self._admin_url, self._database_name)
            self._database_name = None
        if self._nats_url is not None:
            delete_stream(self._nats_url, self._stream)
            self._nats_url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def gateway_url(self) -> str:
        return self.stack.gateway_url

    @property
    def authorization(self) -> str:
        return f"Bearer {self.api_key}"

    def stop_workers(self) -> None:
        """SIGKILL every agent and executor replica; the rest keeps running."""
        for kind in ("agent_service", "executor_service"):
            for name in self.stack.replicas_of(kind):
                self.stack.kill(name)
                self.stopped.add(name)

    def pid(self, name: str) -> int | None:
        return self.stack.process(name).pid

    def pids(self) -> dict[str, int | None]:
        """Process ids of every service replica, by process name."""
        return {
            name: process.pid
            for name, process in self.stack.processes.items()
            if name not in self.stopped
        }

    def memory(self, name: str) -> dict[str, int]:
        return memory_kb(self.pid(name))

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run one read-only query on the stack's PostgreSQL database."""
        if self.kind != "postgres":
            raise ValueError("queries need the PostgreSQL stack")
        return asyncio.run(_fetch(asyncpg_dsn(self.database_url), sql, *args))

    def run_counts(self) -> dict[str, int]:
        """Return the number of runs per status (PostgreSQL only)."""
        rows = self.query("SELECT status, count(*) AS n FROM runs GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}


async def _fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return [dict(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()
