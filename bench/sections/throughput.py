"""Sections 1, 2 and 8: accepted POSTs per second against the bare references.

Each repeat measures, one after the other: (1a) and (1b) at each client
count, Bulkhead on PostgreSQL at each client count (a fresh stack each) in
the single and in the split layout (bench.stack.LAYOUTS), Bulkhead on
SQLite, and the LangGraph peer. Ratios are taken within a
repeat, then summarised over repeats.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from bench.peer.server import ASSISTANT_ID, PeerServer, ensure_installed, peer_version
from bench.procs import CpuMeter, python_module, start_process
from bench.reference.app import API_KEY
from bench.reference.schema import CREATE_TABLES
from bench.sections.common import Context, logger, post_load, summarise
from bench.stack import BenchStack, asyncpg_dsn, postgres_admin_url
from bench.stats import ratio, spread
from bulkhead.devstack import ManagedProcess, StackError, free_port
from tests.support.postgres import create_database, drop_database

GROUP_OF_LAYOUT = {"single": "postgres", "split": "postgres_split"}
# The split layout with its agent and executor stopped.
API_ONLY_GROUP = "postgres_split_api_only"
PEER_BODY = (
    '{"assistant_id": "' + ASSISTANT_ID + '", "input": {"content": '
    '"Hello, how are you today?"}, "if_not_exists": "create"}'
)


class References:
    """The (1a) and (1b) servers on a scratch database, created and dropped here."""

    def __init__(self, ctx: Context) -> None:
        self._admin_url = postgres_admin_url()
        self._name = f"bulkhead_bench_ref_{uuid.uuid4().hex[:12]}"
        self.dsn = asyncpg_dsn(create_database(self._admin_url, self._name))
        self.processes: dict[str, ManagedProcess] = {}
        try:
            asyncio.run(_execute(self.dsn, CREATE_TABLES))
            self._start(ctx)
        except BaseException:
            self.stop()
            raise

    def _start(self, ctx: Context) -> None:
        log_dir = ctx.log_dir("references")
        self.direct_port, grpc_port, self.grpc_app_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        app = "bench.reference.app"
        self.processes["direct_app"] = start_process(
            "reference_direct",
            python_module(
                app,
                "--mode",
                "direct",
                "--port",
                str(self.direct_port),
                "--dsn",
                self.dsn,
            ),
            log_dir,
            port=self.direct_port,
        )
        self.processes["grpc_server"] = start_process(
            "reference_grpc_server",
            python_module(
                "bench.reference.grpc_server",
                "--port",
                str(grpc_port),
                "--dsn",
                self.dsn,
            ),
            log_dir,
            port=grpc_port,
        )
        self.processes["grpc_app"] = start_process(
            "reference_grpc_app",
            python_module(
                app,
                "--mode",
                "grpc",
                "--port",
                str(self.grpc_app_port),
                "--grpc-target",
                f"127.0.0.1:{grpc_port}",
            ),
            log_dir,
            port=self.grpc_app_port,
        )

    def measure(self, mode: str, clients: int, ctx: Context) -> dict[str, Any]:
        """Empty the tables, then measure (1a) (``direct``) or (1b) (``grpc``)."""
        # Requests still in flight when wrk stopped may hold row locks for a
        # moment; TRUNCATE waits for them.
        time.sleep(1.0)
        asyncio.run(_execute(self.dsn, "TRUNCATE runs, messages, chats, outbox"))
        names = ["direct_app"] if mode == "direct" else ["grpc_app", "grpc_server"]
        port = self.direct_port if mode == "direct" else self.grpc_app_port
        meter = CpuMeter({n: self.processes[n].pid for n in names})
        meter.start()
        result = post_load(
            f"http://127.0.0.1:{port}",
            clients,
            ctx.plan,
            authorization=f"Bearer {API_KEY}",
        )
        result["cores"] = meter.stop()
        return result

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(5.0)
        drop_database(self._admin_url, self._name)


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def measure_stack(
    ctx: Context,
    database: str,
    clients: int,
    layout: str = "single",
    *,
    workers: bool = True,
) -> dict[str, Any]:
    """Start a fresh stack, measure POST /api/chat at ``clients``, stop it.

    With ``workers`` False, the agent and executor are stopped before the
    load, which approximates a deployment with AI work on other machines.
    """
    with BenchStack(
        ctx.work_dir, ctx.fake.models_file, database=database, layout=layout
    ) as bench:
        if not workers:
            bench.stop_workers()
        meter = CpuMeter(bench.pids())
        meter.start()
        result = post_load(
            bench.gateway_url, clients, ctx.plan, authorization=bench.authorization
        )
        result["cores"] = meter.stop()
        if database == "postgres":
            result["runs"] = bench.run_counts()
            result["stored_runs"] = sum(result["runs"].values())
    return result


def _peer_setup(ctx: Context) -> tuple[Any, str | None]:
    """Return the langgraph command, or None and the reason it cannot run."""
    if "peer" not in ctx.plan.sections or not ctx.plan.peer_clients:
        return None, "not part of this plan"
    try:
        return ensure_installed(ctx.log_dir("peer")), None
    except (StackError, OSError) as error:
        return None, str(error)


def measure_peer(ctx: Context, command: Any, clients: int) -> dict[str, Any]:
    server = PeerServer(command, ctx.log_dir("peer"))
    try:
        meter = CpuMeter({"langgraph": server.process.pid})
        meter.start()
        result = post_load(
            server.url,
            clients,
            ctx.plan,
            path="/threads/{uuid}/runs",
            body=PEER_BODY,
            per_request_uuid=True,
        )
        result["cores"] = meter.stop()
    finally:
        server.stop()
    return result


def run(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    raw: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    peer_command, peer_problem = _peer_setup(ctx)
    references = References(ctx)
    try:
        for repeat in range(plan.repeats):
            logger.info("throughput: repeat %d of %d", repeat + 1, plan.repeats)
            for mode in ("direct", "grpc"):
                for clients in plan.reference_clients:
                    record = references.measure(mode, clients, ctx)
                    raw[f"reference_{mode}"][clients].append(record)
                    _log("reference " + mode, clients, record)
            stacks = [
                (GROUP_OF_LAYOUT[layout], "postgres", layout, plan.post_clients)
                for layout in plan.layouts
            ]
            stacks.append(("sqlite", "sqlite", "single", plan.sqlite_clients))
            for group, database, layout, levels in stacks:
                for clients in levels:
                    record = measure_stack(ctx, database, clients, layout)
                    raw[group][clients].append(record)
                    _log(group, clients, record)
            if "split" in plan.layouts:
                for clients in plan.api_only_clients:
                    record = measure_stack(
                        ctx, "postgres", clients, "split", workers=False
                    )
                    raw[API_ONLY_GROUP][clients].append(record)
                    _log(API_ONLY_GROUP, clients, record)
            if peer_command is not None:
                for clients in plan.peer_clients:
                    try:
                        record = measure_peer(ctx, peer_command, clients)
                    except (StackError, OSError) as error:
                        peer_problem = str(error)
                        peer_command = None
                        break
                    raw["peer"][clients].append(record)
                    _log("peer", clients, record)
    finally:
        references.stop()

    result: dict[str, Any] = {
        group: {f"c{c}": summarise(records) for c, records in levels.items()}
        for group, levels in raw.items()
    }
    result["ratios"] = _ratios(raw, plan.repeats)
    result["peer_status"] = {
        "available": peer_problem is None and "peer" in raw,
        "problem": peer_problem,
        "version": peer_version() if "peer" in raw else None,
    }
    return result


def _ratios(
    raw: dict[str, dict[int, list[dict[str, Any]]]], repeats: int
) -> dict[str, Any]:
    """Ratios of rates measured in the same repeat, summarised over repeats."""

    def rate(group: str, clients: int, repeat: int) -> float | None:
        records = raw.get(group, {}).get(clients, [])
        return records[repeat]["rate_per_s"] if repeat < len(records) else None

    pairs = {
        "accept_vs_bare_c64": ("postgres_split", "reference_direct", 64),
        "accept_vs_grpc_bare_c64": ("postgres_split", "reference_grpc", 64),
        "accept_vs_bare_c16": ("postgres_split", "reference_direct", 16),
        "accept_vs_grpc_bare_c16": ("postgres_split", "reference_grpc", 16),
        "accept_vs_peer_c64": ("postgres_split", "peer", 64),
        "accept_vs_peer_c16": ("postgres_split", "peer", 16),
        "single_accept_vs_bare_c64": ("postgres", "reference_direct", 64),
        "single_accept_vs_grpc_bare_c64": ("postgres", "reference_grpc", 64),
        "single_accept_vs_peer_c64": ("postgres", "peer", 64),
        "split_vs_single_c64": ("postgres_split", "postgres", 64),
        "api_only_vs_grpc_bare_c64": (API_ONLY_GROUP, "reference_grpc", 64),
        "api_only_vs_grpc_bare_c16": (API_ONLY_GROUP, "reference_grpc", 16),
        "split_vs_api_only_c64": ("postgres_split", API_ONLY_GROUP, 64),
        "sqlite_vs_postgres_c64": ("sqlite", "postgres", 64),
    }
    ratios = {}
    for name, (group, base, clients) in pairs.items():
        values = [
            ratio(rate(group, clients, r), rate(base, clients, r))
            for r in range(repeats)
        ]
        if any(v is not None for v in values):
            ratios[name] = spread(values)
    return ratios


def _log(group: str, clients: int, record: dict[str, Any]) -> None:
    logger.info(
        "  %-18s c%-3d %8.1f/s  p50 %6.1f ms  p99 %6.1f ms  errors %d",
        group,
        clients,
        record["rate_per_s"] or 0.0,
        record["p50_ms"],
        record["p99_ms"],
        record["status_errors"] + record["socket_errors"],
    )
