"""The split layout: user requests and AI work reach chat_service replicas of their own.

With ``split_chat_service`` the gateway dials one chat_service replica and
the agent and the executor another, and ``async_nice`` lowers the CPU
priority of everything that serves only AI work. Runs must still complete,
events must cross from the workers' replica to the gateway's watchers, and
user requests must be served while the workers' replica is frozen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable

import httpx
import pytest

from bulkhead.devstack import Stack, StackConfig, StackError
from tests.support.api import auth, post_chat, read_events, wait_for_run

pytestmark = pytest.mark.postgres

FRONT = "chat_service"
RUNS = "chat_service-1"
NICE = 10


@pytest.fixture(scope="module")
def split_stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory(
        database="postgres",
        replicas={"chat_service": 2},
        split_chat_service=True,
        async_nice=NICE,
    )


def _new_key(stack: Stack) -> str:
    return stack.create_api_key(f"user-{uuid.uuid4().hex[:12]}")


def test_split_routing_keeps_gateway_and_workers_apart(split_stack: Stack) -> None:
    front, runs = split_stack.address_of(FRONT), split_stack.address_of(RUNS)
    assert split_stack.chat_service_addr_for("gateway") == front
    assert split_stack.chat_service_addr_for("agent_service") == runs
    assert split_stack.chat_service_addr_for("executor_service") == runs
    assert split_stack.chat_service_addr == f"ipv4:{front},{runs}"
    gateway_env = split_stack.process("gateway").env
    assert gateway_env["BULKHEAD_CHAT_SERVICE_ADDR"] == front
    assert (
        split_stack.process("executor_service").env["BULKHEAD_CHAT_SERVICE_ADDR"]
        == runs
    )


def test_split_niceness_lowers_ai_work_only(split_stack: Stack) -> None:
    niceness = {
        name: os.getpriority(os.PRIO_PROCESS, split_stack.process(name).pid or 0)
        for name in ("gateway", FRONT, RUNS, "agent_service", "executor_service")
    }
    assert niceness == {
        "gateway": 0,
        FRONT: 0,
        RUNS: NICE,
        "agent_service": NICE,
        "executor_service": NICE,
    }


async def test_split_events_reach_gateway_watchers(
    split_stack: Stack,
) -> None:
    key = _new_key(split_stack)
    async with httpx.AsyncClient(base_url=split_stack.gateway_url) as client:
        posted = await post_chat(client, key, "Hello from the split layout")
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["run"]["id"]
        response, events = await read_events(client, key, run_id)
        assert response.status_code == 200
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert events[-1].event == "run.completed"
        assert "Hello from the split layout" in "".join(
            e.data["delta"] for e in events if e.event == "message.delta"
        )


async def test_split_posts_accepted_while_runs_replica_frozen(
    split_stack: Stack,
) -> None:
    key = _new_key(split_stack)
    runs_pid = split_stack.process(RUNS).pid
    assert runs_pid is not None
    async with httpx.AsyncClient(
        base_url=split_stack.gateway_url, timeout=10.0
    ) as client:
        os.kill(runs_pid, signal.SIGSTOP)
        try:
            run_ids = []
            for number in range(3):
                posted = await post_chat(client, key, f"while frozen {number}")
                assert posted.status_code == 202, posted.text
                run_ids.append(posted.json()["run"]["id"])
            for run_id in run_ids:
                got = await client.get(f"/api/runs/{run_id}", headers=auth(key))
                assert got.status_code == 200
                assert got.json()["status"] == "queued"
            await asyncio.sleep(1.0)
        finally:
            os.kill(runs_pid, signal.SIGCONT)
        for run_id in run_ids:
            finished = await wait_for_run(client, key, run_id, timeout=90.0)
            assert finished["status"] == "completed"


def test_split_config_needs_two_replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    var_dir = tmp_path_factory.mktemp("split")
    with pytest.raises(StackError, match="at least 2 chat_service replicas"):
        Stack(
            StackConfig(
                var_dir=var_dir,
                database_url="postgresql+asyncpg://127.0.0.1:1/none",
                split_chat_service=True,
            )
        )
    with pytest.raises(StackError, match="async_nice must be 0 to 19"):
        Stack(StackConfig(var_dir=var_dir, async_nice=20))
