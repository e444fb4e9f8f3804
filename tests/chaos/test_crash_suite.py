"""The crash suite: real processes, concurrent clients, SIGKILL every few seconds.

Per database, the stack runs with its own nats-server (PostgreSQL: two
chat_service replicas, two agents, three executors; SQLite: one
chat_service, one agent, two executors). Clients send messages and retry
each with the same Idempotency-Key on any error. Meanwhile a process
(gateway, chat_service, agent, executor or NATS) is killed with SIGKILL and
restarted every few seconds, and the fake model cycles through slow,
failing, stalling and dropping phases. Then the suite waits at most
``settle_bound_s`` after the last restart and checks the invariants,
printing its figures.

Replay a run with ``CHAOS_SEED=<seed> make test-chaos``. Other settings:
``CHAOS_MESSAGES``, ``CHAOS_CLIENTS``, ``CHAOS_LOAD_S``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bulkhead.devstack import Stack
from tests.chaos import harness
from tests.chaos.harness import (
    BACKUP,
    BACKUP_REPLY,
    PRIMARY,
    ChaosConfig,
    Figures,
    Kill,
    LoadClient,
    Violations,
)
from tests.support.fake_models import FakeModelThread, write_models_file

# Timings that make recovery take seconds; docs/reliability.md derives the
# settle bound from them.
CHAOS_ENV = {
    "BULKHEAD_DEV_MODE": "true",
    "BULKHEAD_NATS_ACK_WAIT_S": "5",
    "BULKHEAD_LEASE_S": "5",
    "BULKHEAD_AGENT_LEASE_RENEW_S": "1.5",
    "BULKHEAD_EXECUTOR_LEASE_RENEW_S": "1.5",
    "BULKHEAD_SWEEP_INTERVAL_S": "1",
    "BULKHEAD_REDISPATCH_AFTER_S": "15",
    "BULKHEAD_EXECUTOR_RETRY_BASE_S": "0.1",
    "BULKHEAD_EXECUTOR_RETRY_MAX_S": "0.5",
    "BULKHEAD_EXECUTOR_RETRY_AFTER_MAX_S": "1",
    "BULKHEAD_LOG_LEVEL": "INFO",
}
CHAOS_ROUTES = {
    PRIMARY: {
        "fallbacks": [BACKUP],
        "max_retries": 1,
        "idle_timeout_s": 1.0,
        "first_token_timeout_s": 3.0,
        "timeout_s": 20.0,
        "connect_timeout_s": 2.0,
    },
    BACKUP: {"max_retries": 2, "idle_timeout_s": 3.0, "timeout_s": 20.0},
}
REPLICAS = {
    "postgres": {"chat_service": 2, "agent_service": 2, "executor_service": 3},
    "sqlite": {"chat_service": 1, "agent_service": 1, "executor_service": 2},
}
MESSAGES = {"postgres": 200, "sqlite": 150}
SETTLE_BOUND_S = 60.0
SSE_CONCURRENCY = 8
SSE_PER_USER = 2


def _config(database: str) -> ChaosConfig:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    return ChaosConfig(
        seed=seed,
        messages=int(os.environ.get("CHAOS_MESSAGES") or MESSAGES[database]),
        clients=int(os.environ.get("CHAOS_CLIENTS") or 8),
        chats_per_client=3,
        load_s=float(os.environ.get("CHAOS_LOAD_S") or 45.0),
        kill_every_s=(2.0, 4.0),
        down_s=(0.2, 1.5),
        settle_bound_s=SETTLE_BOUND_S,
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_crash_suite_keeps_invariants(
    database: str,
    stack_factory: Callable[..., Stack],
    fake_model: FakeModelThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(database)
    figures = Figures()
    figures.add("database", database)
    figures.add("seed", config.seed)
    figures.add("config", harness.as_dict(config))
    fake_model.reset(
        **{PRIMARY: harness.MODEL_PHASES["healthy"], BACKUP: {"reply": BACKUP_REPLY}}
    )
    models = write_models_file(
        tmp_path / "models.toml", fake_model.base_url, CHAOS_ROUTES, PRIMARY
    )
    stack = stack_factory(
        database=database,
        own_nats=True,
        models_file=models,
        replicas=REPLICAS[database],
        env=CHAOS_ENV,
        stop_grace_s=5.0,
    )
    violations = Violations()
    try:
        await _run(stack, config, fake_model, figures, violations)
    finally:
        report = (
            f"\ncrash suite ({database}), replay with CHAOS_SEED={config.seed}:\n"
            + figures.render()
            + "\n"
        )
        (stack.var_dir / "chaos-summary.txt").write_text(report)
        with capsys.disabled():
            print(report)
            print(f"  logs: {stack.log_dir}")
        await asyncio.to_thread(stack.stop)
    assert not violations.items, (
        f"{len(violations.items)} invariant violations (seed {config.seed}):\n"
        + "\n".join(violations.items[:40])
    )


async def _run(
    stack: Stack,
    config: ChaosConfig,
    fake: FakeModelThread,
    figures: Figures,
    violations: Violations,
) -> None:
    rng = random.Random(config.seed)
    keys = [
        await asyncio.to_thread(stack.create_api_key, f"chaos-{uuid.uuid4().hex[:8]}")
        for _ in range(config.clients)
    ]
    plans = harness.plan_messages(config)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=stack.gateway_url, limits=limits) as client:
        clients = [
            LoadClient(
                index,
                client,
                keys[index],
                plan,
                pause_s=config.load_s / max(len(plan), 1),
                rng=random.Random(config.seed + index + 1),
            )
            for index, plan in enumerate(plans)
        ]
        kills: list[Kill] = []
        stop_phases = asyncio.Event()
        started = time.monotonic()
        phases = asyncio.create_task(
            harness.cycle_model_phases(
                fake, random.Random(config.seed - 1), stop_phases
            )
        )
        killer = asyncio.create_task(
            harness.kill_and_restart(stack, config, rng, kills)
        )
        await asyncio.gather(*(c.run() for c in clients))
        await killer
        stop_phases.set()
        phase_counts = await phases
        last_restart = max((k.healthy_at for k in kills), default=time.time())
        figures.add("load and kills, s", round(time.monotonic() - started, 1))
        figures.add("kills", f"{len(kills)} ({harness.describe_kills(kills)})")
        figures.add("model phases", dict(phase_counts))

        sent = [message for plan in plans for message in plan]
        _check_sending(sent, kills, figures, violations)
        runs = await _check_messages(client, clients, sent, figures, violations)
        bodies = await harness.wait_terminal(
            client, runs, last_restart + config.settle_bound_s
        )
        _check_runs(bodies, last_restart, config, figures, violations)
        await _check_streams(client, runs, bodies, rng, figures, violations)
    _check_model_calls(fake, kills, figures, violations)
    _check_processes(stack, violations)


def _check_sending(
    sent: list[harness.Sent],
    kills: list[Kill],
    figures: Figures,
    violations: Violations,
) -> None:
    acked = [s for s in sent if s.response is not None]
    errors: Counter[str] = Counter()
    for message in sent:
        errors.update(message.errors)
    figures.add("messages sent", len(sent))
    figures.add("messages acknowledged (2xx)", len(acked))
    figures.add("requests, including retries", sum(s.tries for s in sent))
    figures.add("failed requests by cause", dict(errors))
    violations.check(
        len(acked) == len(sent),
        f"{len(sent) - len(acked)} messages never got a 2xx within "
        f"{harness.MESSAGE_DEADLINE_S:g} s",
    )
    unexpected = harness.unexpected_server_errors(sent, kills)
    figures.add("5xx other than 503 while chat_service was down", len(unexpected))
    violations.items.extend(unexpected)


async def _check_messages(
    client: httpx.AsyncClient,
    clients: list[LoadClient],
    sent: list[harness.Sent],
    figures: Figures,
    violations: Violations,
) -> dict[str, str]:
    """Check that every acknowledged message is stored once; return run ids."""
    by_content = {s.content: s for s in sent}
    stored: Counter[str] = Counter()
    runs: dict[str, str] = {}
    for load_client in clients:
        chats = await harness.user_messages(client, load_client.key)
        for chat_id, messages in chats.items():
            numbers = []
            for message in messages:
                stored[message["content"]] += 1
                if message["run_id"]:
                    runs[message["run_id"]] = load_client.key
                origin = by_content.get(message["content"])
                violations.check(
                    origin is not None, f"unknown message {message['content']!r}"
                )
                if origin is not None:
                    numbers.append(origin.number)
            violations.check(
                numbers == sorted(numbers),
                f"chat {chat_id}: user messages out of order {numbers}",
            )
    duplicated = [c for c, n in stored.items() if n > 1]
    lost = [s.key for s in sent if s.response is not None and stored[s.content] == 0]
    unacked_stored = sum(1 for s in sent if s.response is None and stored[s.content])
    figures.add("user messages stored", sum(stored.values()))
    figures.add("acknowledged but lost", len(lost))
    figures.add("stored twice", len(duplicated))
    figures.add("stored without a 2xx (allowed)", unacked_stored)
    violations.check(not lost, f"acknowledged messages lost: {lost[:10]}")
    violations.check(not duplicated, f"messages stored twice: {duplicated[:10]}")
    for message in sent:
        if message.response is None:
            continue
        run_id = message.response["run"]["id"]
        violations.check(run_id in runs, f"{message.key}: run {run_id} not found")
    return runs


def _check_runs(
    bodies: dict[str, dict[str, Any]],
    last_restart: float,
    config: ChaosConfig,
    figures: Figures,
    violations: Violations,
) -> None:
    statuses = Counter(body["status"] for body in bodies.values())
    errors = Counter(
        body["error"]["code"] for body in bodies.values() if body.get("error")
    )
    figures.add("runs by status", dict(statuses))
    figures.add("failed runs by error code", dict(errors))
    open_runs = [
        run_id
        for run_id, b in bodies.items()
        if b["status"] not in ("completed", "failed", "cancelled")
    ]
    violations.check(
        not open_runs,
        f"{len(open_runs)} runs not terminal {config.settle_bound_s:g} s after the "
        f"last restart: {open_runs[:10]}",
    )
    settle = [harness.finished_after(b, last_restart) for b in bodies.values()]
    worst = max(settle, default=0.0)
    figures.add("slowest run end after the last restart, s", round(worst, 1))
    violations.check(
        worst <= config.settle_bound_s,
        f"a run ended {worst:.1f} s after the last restart (bound "
        f"{config.settle_bound_s:g} s)",
    )
    double = []
    for run_id, body in bodies.items():
        completed = [a for a in body["attempts"] if a["outcome"] == "completed"]
        expected = 1 if body["status"] == "completed" else 0
        if len(completed) != expected:
            double.append(run_id)
        if body["status"] == "completed":
            violations.check(
                body["model_used"] == completed[-1]["model"] if completed else False,
                f"{run_id}: model_used {body['model_used']} is not the completed call",
            )
    figures.add("runs with a wrong number of completed calls", len(double))
    violations.check(not double, f"runs completed by two calls: {double[:10]}")


async def _check_streams(
    client: httpx.AsyncClient,
    runs: dict[str, str],
    bodies: dict[str, dict[str, Any]],
    rng: random.Random,
    figures: Figures,
    violations: Violations,
) -> None:
    completed = [b for b in bodies.values() if b["status"] == "completed"]
    semaphore = asyncio.Semaphore(SSE_CONCURRENCY)
    # The gateway allows a few open streams per user (max_streams_per_user).
    per_user = {key: asyncio.Semaphore(SSE_PER_USER) for key in set(runs.values())}
    resets: Counter[bool] = Counter()

    async def check(body: dict[str, Any], seed: int) -> None:
        key = runs[body["id"]]
        async with semaphore, per_user[key]:
            await harness.check_stream(
                client, key, body, random.Random(seed), violations
            )

    await asyncio.gather(*(check(b, rng.randrange(10**9)) for b in completed))
    for body in completed:
        resets[len(body["attempts"]) > 1] += 1
    figures.add("SSE streams replayed and resumed", len(completed))
    figures.add("completed runs with more than one model call", resets[True])


def _check_model_calls(
    fake: FakeModelThread, kills: list[Kill], figures: Figures, violations: Violations
) -> None:
    calls = fake.calls()
    outcomes = Counter(call.outcome for call in calls)
    figures.add("model calls by outcome", dict(outcomes))
    grouped = harness.completed_calls_by_content(calls)
    repeated = sum(1 for group in grouped.values() if len(group) > 1)
    unexplained = harness.unexplained_reruns(grouped, kills)
    figures.add("messages answered by more than one completed call", repeated)
    figures.add("of those, with no crash to explain it", len(unexplained))
    violations.items.extend(unexplained)


def _check_processes(stack: Stack, violations: Violations) -> None:
    exited = stack.exited()
    violations.check(not exited, f"processes exited on their own: {exited}")
