"""Plan building: model chain, context budget, omitted messages."""

from __future__ import annotations

import pytest

from agent_service.planner import PlanningError, build_plan
from bulkhead.models import ModelCatalog, ModelSpec
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import types_pb2

USER = types_pb2.MESSAGE_ROLE_USER
ASSISTANT = types_pb2.MESSAGE_ROLE_ASSISTANT
SYSTEM = types_pb2.MESSAGE_ROLE_SYSTEM

CATALOG = ModelCatalog(
    default_model="echo",
    models={
        "echo": ModelSpec(provider="builtin", max_output_tokens=300),
        "big": ModelSpec(
            provider="openai", fallbacks=("mid", "echo"), max_output_tokens=4000
        ),
        "mid": ModelSpec(provider="openai", fallbacks=("echo",)),
    },
)


def message(role: int, size: int, mark: str = "x") -> run_pb.ContextMessage:
    return run_pb.ContextMessage(role=role, content=mark * size)


def conversation(*sizes: int) -> list[run_pb.ContextMessage]:
    """Alternate user and assistant messages, ending with a user message."""
    roles = [
        USER if (len(sizes) - i) % 2 == 1 else ASSISTANT for i in range(len(sizes))
    ]
    return [
        message(role, size, str(i)) for i, (role, size) in enumerate(zip(roles, sizes))
    ]


def test_plan_default_model_chain() -> None:
    plan = build_plan(conversation(5), "", CATALOG, 100)

    assert list(plan.model_chain) == ["echo"]
    assert plan.max_output_tokens == 300


def test_plan_fallback_chain_each_once() -> None:
    plan = build_plan(conversation(5), "big", CATALOG, 100)

    assert list(plan.model_chain) == ["big", "mid", "echo"]
    assert plan.max_output_tokens == 4000


def test_plan_keeps_all_within_budget() -> None:
    history = conversation(10, 10, 10)

    plan = build_plan(history, "", CATALOG, 30)

    assert list(plan.context) == history
    assert plan.omitted_messages == 0


def test_plan_drops_oldest_whole_messages() -> None:
    history = conversation(10, 10, 10, 10, 10)

    plan = build_plan(history, "", CATALOG, 35)

    assert list(plan.context) == history[-3:]
    assert plan.omitted_messages == 2
    assert all(len(m.content) == 10 for m in plan.context)


def test_plan_stops_at_first_message_over_budget() -> None:
    # The small oldest message would fit, but the context stays contiguous.
    history = conversation(1, 50, 10)

    plan = build_plan(history, "", CATALOG, 30)

    assert list(plan.context) == history[-1:]
    assert plan.omitted_messages == 2


def test_plan_keeps_oversized_final_message() -> None:
    history = conversation(10, 10, 500)

    plan = build_plan(history, "", CATALOG, 100)

    assert len(plan.context) == 1
    assert plan.context[0].content == history[-1].content
    assert plan.omitted_messages == 2


def test_plan_system_prompt_first_and_counted() -> None:
    history = conversation(10, 10, 10)

    plan = build_plan(history, "", CATALOG, 30, system_prompt="be brief")

    assert plan.context[0].role == SYSTEM
    assert plan.context[0].content == "be brief"
    assert list(plan.context[1:]) == history[-2:]
    assert plan.omitted_messages == 1


def test_plan_unknown_model_rejected() -> None:
    with pytest.raises(PlanningError, match="unknown model route 'nope'"):
        build_plan(conversation(5), "nope", CATALOG, 100)


@pytest.mark.parametrize("history", [[], [message(ASSISTANT, 5)]])
def test_plan_requires_final_user_message(history) -> None:
    with pytest.raises(PlanningError):
        build_plan(history, "", CATALOG, 100)
