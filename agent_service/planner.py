"""Build a run's plan: the model chain, the context window and the output limit."""

from __future__ import annotations

from collections.abc import Sequence

from bulkhead.models import ModelCatalog
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import types_pb2


class PlanningError(Exception):
    """The run cannot be planned, and trying again will not change that."""


def build_plan(
    history: Sequence[run_pb.ContextMessage],
    requested_model: str,
    catalog: ModelCatalog,
    budget_chars: int,
    system_prompt: str = "",
) -> run_pb.Plan:
    """Return the plan for a run whose conversation is ``history``, oldest first.

    The context keeps the newest messages whose content fits ``budget_chars``
    together with the system prompt, dropping the oldest whole messages
    first. The final user message is always kept, even when it alone exceeds
    the budget; no message is ever cut.

    Raises:
        PlanningError: the model route is unknown, or the history does not
        end with a user message.
    """
    try:
        route = catalog.resolve(requested_model or None)
    except KeyError:
        raise PlanningError(f"unknown model route {requested_model!r}") from None
    if not history or history[-1].role != types_pb2.MESSAGE_ROLE_USER:
        raise PlanningError("the conversation does not end with a user message")

    kept = select_recent(history, budget_chars - len(system_prompt))
    context: list[run_pb.ContextMessage] = []
    if system_prompt:
        context.append(
            run_pb.ContextMessage(
                role=types_pb2.MESSAGE_ROLE_SYSTEM, content=system_prompt
            )
        )
    context.extend(kept)
    return run_pb.Plan(
        model_chain=catalog.chain(route),
        context=context,
        max_output_tokens=catalog.models[route].max_output_tokens,
        omitted_messages=len(history) - len(kept),
    )


def select_recent(
    history: Sequence[run_pb.ContextMessage], budget_chars: int
) -> list[run_pb.ContextMessage]:
    """Return the longest suffix of ``history`` within the budget, never empty."""
    kept = [history[-1]]
    used = len(history[-1].content)
    for message in reversed(history[:-1]):
        used += len(message.content)
        if used > budget_chars:
            break
        kept.append(message)
    kept.reverse()
    return kept
