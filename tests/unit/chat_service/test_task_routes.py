"""The model route that executor tasks carry: the first route of the plan,
read from a stored plan by the sweeper and written into outbox rows."""

from __future__ import annotations

import uuid

import pytest

from bulkhead.messaging import Subjects, Topology
from bulkhead.proto.agent.v1 import agent_pb2
from bulkhead.proto.chat.v1 import run_service_pb2
from bulkhead.proto.executor.v1 import executor_pb2
from chat_service.outbox import outbox_row
from chat_service.runs import first_model

TOPOLOGY = Topology(stream="ROUTES_TEST", subjects=Subjects("routes"))


def _plan(*chain: str) -> bytes:
    return run_service_pb2.Plan(
        model_chain=list(chain), max_output_tokens=100
    ).SerializeToString()


def test_first_model_of_plan() -> None:
    assert first_model(_plan("flaky", "backup")) == "flaky"
    assert first_model(_plan("solo")) == "solo"


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(None, id="none"),
        pytest.param(b"", id="empty"),
        pytest.param(_plan(), id="no-routes"),
        pytest.param(b"\x0a\x05ab", id="truncated"),
        pytest.param(b"\xff\xff\xff", id="not-a-plan"),
    ],
)
def test_first_model_without_route_is_empty(plan: bytes | None) -> None:
    assert first_model(plan) == ""


def test_outbox_row_executor_task_names_model() -> None:
    run_id = uuid.uuid4()

    row = outbox_row(TOPOLOGY, run_id, "executor", model="flaky")

    assert row["subject"] == "routes.tasks.executor"
    task = executor_pb2.ExecutorTask.FromString(row["payload"])
    assert task.run_id == str(run_id)
    assert task.model == "flaky"


def test_outbox_row_executor_task_without_model() -> None:
    run_id = uuid.uuid4()

    row = outbox_row(TOPOLOGY, run_id, "executor")

    task = executor_pb2.ExecutorTask.FromString(row["payload"])
    assert task.run_id == str(run_id)
    assert task.model == ""


def test_outbox_row_agent_task_unchanged() -> None:
    run_id = uuid.uuid4()

    row = outbox_row(TOPOLOGY, run_id, "agent")

    assert row["subject"] == "routes.tasks.agent"
    assert row["payload"] == agent_pb2.AgentTask(run_id=str(run_id)).SerializeToString()
    assert agent_pb2.AgentTask.FromString(row["payload"]).run_id == str(run_id)
