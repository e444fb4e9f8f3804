"""The crash suite's moving parts: load, kills, model phases and the final checks.

A run of the suite is replayable from its seed: the seed fixes the message
plan, the pauses of each client, the kill schedule and the model phases.
What it cannot fix is timing on a loaded machine, so the checks assert only
invariants that hold for every interleaving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from bulkhead.devstack import Stack
from tests.support.api import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    answer_from,
    auth,
    read_events,
)
from tests.support.fake_models import FakeModelThread
from tests.support.fake_openai import CallRecord

PRIMARY = "chaos"
BACKUP = "chaos-backup"
PRIMARY_REPLY = "primary " + " ".join(f"p{i}" for i in range(12))
BACKUP_REPLY = "backup " + " ".join(f"b{i}" for i in range(8))
# Fake model phases, cycled on the primary model. The backup stays healthy,
# so a run fails only when a crash exhausts its attempts.
MODEL_PHASES: dict[str, dict[str, Any]] = {
    "healthy": {"reply": PRIMARY_REPLY, "chunk_delay_s": 0.02},
    "slow": {"reply": PRIMARY_REPLY, "chunk_delay_s": 0.15, "first_chunk_delay_s": 0.5},
    "failing": {"fail_status": 503, "fail_times": -1},
    "rate_limited": {"fail_status": 429, "fail_times": -1, "retry_after": "0"},
    "stalling": {"reply": PRIMARY_REPLY, "stall_after_chunks": 2},
    "dropping": {"reply": PRIMARY_REPLY, "drop_after_chunks": 3},
}
MODEL_PHASE_S = (3.0, 6.0)
KILL_KINDS = ("gateway", "chat_service", "agent_service", "executor_service", "nats")
# The services whose death can make a completed model call be repeated: an
# executor that dies between the end of the call and CompleteRun, or a
# chat_service whose outage lets the lease lapse, so that a redelivered task
# claims the run while the first executor still waits to report.
RERUN_CAUSES = ("executor_service", "chat_service")
REQUEST_TIMEOUT_S = 10.0
MESSAGE_DEADLINE_S = 120.0
# A 503 is expected while a chat_service replica is down and for this long
# after it is healthy again (gRPC reconnection back-off in the gateway).
UNAVAILABLE_MARGIN_S = 5.0


@dataclass(frozen=True)
class ChaosConfig:
    """Size and timing of one crash-suite run (seconds unless named otherwise)."""

    seed: int
    messages: int
    clients: int
    chats_per_client: int
    load_s: float
    kill_every_s: tuple[float, float]
    down_s: tuple[float, float]
    settle_bound_s: float


@dataclass
class Kill:
    name: str
    kind: str
    killed_at: float
    healthy_at: float = 0.0


@dataclass
class Sent:
    """One planned message and what the client saw while sending it."""

    client: int
    number: int
    slot: int
    content: str
    key: str
    response: dict[str, Any] | None = None
    tries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    server_errors: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Figures:
    """What the run measured; printed whether the checks pass or not."""

    values: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        self.values[name] = value

    def render(self) -> str:
        width = max(len(name) for name in self.values)
        return "\n".join(f"  {n:<{width}}  {v}" for n, v in self.values.items())


@dataclass
class Violations:
    """Broken invariants, each with enough detail to find it in the logs."""

    items: list[str] = field(default_factory=list)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.items.append(message)


# --- load -------------------------------------------------------------------


class LoadClient:
    """One user sending its share of the messages, retrying each until a 2xx."""

    def __init__(
        self,
        index: int,
        client: httpx.AsyncClient,
        key: str,
        plan: list[Sent],
        pause_s: float,
        rng: random.Random,
    ) -> None:
        self.index = index
        self.key = key
        self._client = client
        self._plan = plan
        self._pause_s = pause_s
        self._rng = rng
        self.chat_ids: dict[int, str] = {}

    async def run(self) -> None:
        for sent in self._plan:
            await asyncio.sleep(self._rng.uniform(0.0, 2 * self._pause_s))
            await self._send(sent)

    async def _send(self, sent: Sent) -> None:
        body: dict[str, Any] = {"content": sent.content}
        if sent.slot in self.chat_ids:
            body["chat_id"] = self.chat_ids[sent.slot]
        headers = auth(self.key, **{"Idempotency-Key": sent.key})
        deadline = time.monotonic() + MESSAGE_DEADLINE_S
        while time.monotonic() < deadline:
            sent.tries += 1
            try:
                response = await self._client.post(
                    "/api/chat", json=body, headers=headers, timeout=REQUEST_TIMEOUT_S
                )
            except httpx.HTTPError as error:
                sent.errors[type(error).__name__] += 1
                await asyncio.sleep(self._rng.uniform(0.2, 1.0))
                continue
            if 200 <= response.status_code < 300:
                sent.response = response.json()
                self.chat_ids.setdefault(sent.slot, sent.response["chat_id"])
                return
            sent.errors[f"http_{response.status_code}"] += 1
            if response.status_code >= 500:
                sent.server_errors.append((response.status_code, time.time()))
            delay = float(response.headers.get("retry-after", "0") or 0)
            await asyncio.sleep(max(delay, self._rng.uniform(0.2, 1.0)))


def plan_messages(config: ChaosConfig) -> list[list[Sent]]:
    """Split the messages over the clients; each goes to one of its chats."""
    rng = random.Random(config.seed)
    plans: list[list[Sent]] = [[] for _ in range(config.clients)]
    for number in range(config.messages):
        client = number % config.clients
        slot = rng.randrange(config.chats_per_client)
        content = f"chaos {config.seed} client {client} message {number}"
        key = f"chaos-{config.seed}-{number}"
        plans[client].append(Sent(client, number, slot, content, key))
    return plans


# --- faults -----------------------------------------------------------------


def kill_targets(stack: Stack) -> dict[str, list[str]]:
    """Process names by kind; "nats" only when the stack runs its own server."""
    targets = {kind: stack.replicas_of(kind) for kind in KILL_KINDS if kind != "nats"}
    if stack.nats is not None:
        targets["nats"] = ["nats"]
    return targets


async def kill_and_restart(
    stack: Stack, config: ChaosConfig, rng: random.Random, kills: list[Kill]
) -> None:
    """SIGKILL a random process every few seconds and start it again.

    Kills follow each other every ``kill_every_s`` whatever the restarts
    take, so several processes can be down at once; a process still
    restarting is not picked again. The first kills go to each kind once, in
    random order, so that every kind is killed at least once however short
    the run. Returns once every killed process is healthy again.
    """
    targets = kill_targets(stack)
    kinds = list(targets)
    rng.shuffle(kinds)
    restarting: dict[str, asyncio.Task[None]] = {}
    end = time.monotonic() + config.load_s
    for round_number in itertools.count():
        await asyncio.sleep(rng.uniform(*config.kill_every_s))
        if time.monotonic() >= end:
            break
        kind = kinds[round_number] if round_number < len(kinds) else rng.choice(kinds)
        candidates = [name for name in targets[kind] if name not in restarting]
        if not candidates:
            continue
        kill = Kill(rng.choice(candidates), kind, time.time())
        kills.append(kill)
        await asyncio.to_thread(stack.kill, kill.name)
        task = asyncio.create_task(_restart(stack, kill, rng.uniform(*config.down_s)))
        restarting[kill.name] = task
        task.add_done_callback(lambda _, name=kill.name: restarting.pop(name, None))
    await asyncio.gather(*restarting.values())


async def _restart(stack: Stack, kill: Kill, down_s: float) -> None:
    await asyncio.sleep(down_s)
    await asyncio.to_thread(stack.start_process, kill.name)
    kill.healthy_at = time.time()


async def cycle_model_phases(
    fake: FakeModelThread, rng: random.Random, stop: asyncio.Event
) -> Counter[str]:
    """Change the primary model's behaviour every few seconds until ``stop``."""
    used: Counter[str] = Counter()
    names = list(MODEL_PHASES)
    while not stop.is_set():
        phase = rng.choice(names)
        used[phase] += 1
        await asyncio.to_thread(fake.configure, PRIMARY, **MODEL_PHASES[phase])
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(*MODEL_PHASE_S))
        except TimeoutError:
            pass
    await asyncio.to_thread(fake.configure, PRIMARY, **MODEL_PHASES["healthy"])
    return used


# --- final state ------------------------------------------------------------


async def get_json(client: httpx.AsyncClient, key: str, path: str) -> Any:
    """GET with a few retries: the stack is healthy now, but a request may race."""
    for _ in range(5):
        try:
            response = await client.get(path, headers=auth(key))
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        if response.status_code == 200:
            return response.json()
        await asyncio.sleep(0.5)
    raise AssertionError(f"GET {path} kept failing")


async def list_pages(client: httpx.AsyncClient, key: str, path: str) -> list[Any]:
    items: list[Any] = []
    cursor = ""
    while True:
        query = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
        page = await get_json(client, key, path + query)
        items.extend(page["items"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return items


async def user_messages(
    client: httpx.AsyncClient, key: str
) -> dict[str, list[dict[str, Any]]]:
    """Return every user message of the key's user, by chat, in chat order."""
    chats = await list_pages(client, key, "/api/chats")
    result: dict[str, list[dict[str, Any]]] = {}
    for chat in chats:
        messages = await list_pages(client, key, f"/api/chats/{chat['id']}/messages")
        result[chat["id"]] = [m for m in messages if m["role"] == "user"]
    return result


async def wait_terminal(
    client: httpx.AsyncClient, runs: dict[str, str], deadline: float
) -> dict[str, dict[str, Any]]:
    """Poll the runs (run id to API key) until all are terminal or the deadline."""
    bodies: dict[str, dict[str, Any]] = {}
    pending = dict(runs)
    while pending:
        for run_id, key in list(pending.items()):
            body = await get_json(client, key, f"/api/runs/{run_id}")
            bodies[run_id] = body
            if body["status"] in TERMINAL_STATUSES:
                del pending[run_id]
        if not pending or time.time() >= deadline:
            break
        await asyncio.sleep(1.0)
    return bodies


async def check_stream(
    client: httpx.AsyncClient,
    key: str,
    run: dict[str, Any],
    rng: random.Random,
    violations: Violations,
) -> None:
    """Read the run's SSE stream from the start and resumed from a random id."""
    run_id = run["id"]
    stored = run["assistant_message"]["content"] if run["assistant_message"] else ""
    response, events = await read_events(client, key, run_id, timeout=30.0)
    violations.check(response.status_code == 200, f"{run_id}: SSE {response}")
    if not events:
        violations.items.append(f"{run_id}: empty event stream")
        return
    ids = [e.id for e in events]
    violations.check(ids == list(range(1, len(ids) + 1)), f"{run_id}: ids {ids}")
    terminal = [e.event for e in events if e.event in TERMINAL_EVENTS]
    violations.check(len(terminal) == 1, f"{run_id}: terminal events {terminal}")
    violations.check(
        answer_from(events) == stored,
        f"{run_id}: stream answer {answer_from(events)!r} != stored {stored!r}",
    )
    after = rng.choice(ids)
    resumed, tail = await read_events(client, key, run_id, after, timeout=30.0)
    expected = [e for e in events if e.id > after]
    if after == ids[-1]:
        # Nothing follows the terminal event, so the gateway returns 204.
        violations.check(resumed.status_code == 204, f"{run_id}: resume {resumed}")
        return
    violations.check(resumed.status_code == 200, f"{run_id}: resume {resumed}")
    violations.check(
        tail == expected,
        f"{run_id}: resume after {after} gave {[e.id for e in tail]}, "
        f"expected {[e.id for e in expected]}",
    )


def completed_calls_by_content(calls: list[CallRecord]) -> dict[str, list[CallRecord]]:
    """Group the fake's completed calls by the user message they answered."""
    grouped: dict[str, list[CallRecord]] = defaultdict(list)
    for call in calls:
        if call.outcome != "completed":
            continue
        messages = call.request.get("messages") or []
        if messages:
            grouped[str(messages[-1].get("content", ""))].append(call)
    return grouped


def unexplained_reruns(
    calls: dict[str, list[CallRecord]], kills: list[Kill]
) -> list[str]:
    """Return the messages answered twice without a crash that explains it."""
    problems = []
    for content, group in calls.items():
        ordered = sorted(group, key=lambda c: c.started)
        for first, second in itertools.pairwise(ordered):
            explained = any(
                k.kind in RERUN_CAUSES
                and first.started <= k.killed_at <= second.started
                for k in kills
            )
            if not explained:
                problems.append(
                    f"{content!r}: completed calls at {first.started:.2f} and "
                    f"{second.started:.2f} with no executor or chat_service kill between"
                )
    return problems


def unexpected_server_errors(sent: list[Sent], kills: list[Kill]) -> list[str]:
    """Return 5xx responses other than a 503 while chat_service was down."""
    windows = [
        (k.killed_at, k.healthy_at + UNAVAILABLE_MARGIN_S)
        for k in kills
        if k.kind == "chat_service"
    ]
    problems = []
    for message in sent:
        for status, at in message.server_errors:
            in_window = any(start <= at <= end for start, end in windows)
            if status != 503 or not in_window:
                problems.append(f"{message.key}: HTTP {status} at {at:.2f}")
    return problems


def finished_after(run: dict[str, Any], moment: float) -> float:
    """Seconds from ``moment`` to the run's end, 0 if it ended before."""
    finished = run.get("finished_at")
    if not finished:
        return float("inf")
    return max(0.0, datetime.fromisoformat(finished).timestamp() - moment)


def describe_kills(kills: list[Kill]) -> str:
    counts = Counter(k.kind for k in kills)
    return ", ".join(f"{kind} {counts[kind]}" for kind in KILL_KINDS if counts[kind])


def as_dict(config: ChaosConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
