"""Walk a plan's model chain: call, retry with back-off, fall back, report.

This module does not depend on NATS or gRPC: output goes to an
:class:`OutputSink`, and the result is returned or raised, so the whole
retry and fallback policy is testable against a fake model server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from bulkhead.log import get_logger
from bulkhead.models import ModelCatalog, ModelSpec
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import to_timestamp
from bulkhead.text import sanitize
from bulkhead.worker.backoff import full_jitter_delay
from executor_service.providers.base import (
    ChatMessage,
    ChatProvider,
    ErrorKind,
    ProviderError,
    TokenUsage,
)

logger = get_logger(__name__)

_ROLES = {
    types_pb2.MESSAGE_ROLE_USER: "user",
    types_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
    types_pb2.MESSAGE_ROLE_SYSTEM: "system",
}


class OutputSink(Protocol):
    """Destination of the output that clients receive."""

    async def delta(self, text: str) -> None:
        """Send model text; the sink may batch it."""
        ...

    async def event(self, event: run_pb.OutputEvent) -> None:
        """Send a control event (reset, failed call, fallback) after pending text."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off between retries of one model.

    Attributes:
        base_s: Ceiling of the first delay; it doubles with each retry.
        max_s: Largest ceiling of the jittered delay.
        retry_after_max_s: Largest server-requested (Retry-After) delay that
            is honoured; longer requests are cut to this.
    """

    base_s: float = 0.5
    max_s: float = 8.0
    retry_after_max_s: float = 30.0

    def delay(self, retry: int, retry_after_s: float | None) -> float:
        jittered = full_jitter_delay(retry, self.base_s, self.max_s)
        if retry_after_s is None:
            return jittered
        return max(jittered, min(retry_after_s, self.retry_after_max_s))


@dataclass
class ChainResult:
    model_used: str
    usage: types_pb2.Usage
    calls: list[types_pb2.ModelCall]


class ChainExhaustedError(Exception):
    """Every model of the chain failed; ``code`` is the run's error code."""

    def __init__(self, code: str, message: str, calls: list[types_pb2.ModelCall]):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.calls = calls


def context_messages(plan: run_pb.Plan) -> list[ChatMessage]:
    """Convert the plan's context to the role/content form providers take."""
    return [
        ChatMessage(role=_ROLES.get(m.role, "user"), content=m.content)
        for m in plan.context
    ]


@dataclass
class _ChainState:
    attempt: int
    calls: list[types_pb2.ModelCall] = field(default_factory=list)
    needs_reset: bool = False
    last_error: ProviderError | None = None
    max_output_chars: int | None = None


async def run_chain(
    plan: run_pb.Plan,
    *,
    catalog: ModelCatalog,
    providers: Mapping[str, ChatProvider],
    sink: OutputSink,
    attempt: int,
    reset_first: bool = False,
    policy: RetryPolicy | None = None,
    max_output_chars: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ChainResult:
    """Call the models of ``plan.model_chain`` in order until one succeeds.

    Each model is retried on retryable errors up to its ``max_retries``, with
    full-jitter back-off that honours Retry-After; a non-retryable error goes
    straight to the next model. Every failed call is sent as
    ``attempt_failed``, every step down the chain as ``model_fallback``, and
    a call after one that streamed text is preceded by a ``reset``.

    A call whose text reaches ``max_output_chars`` is closed there and
    completes with the text cut at the limit, since a server that ignores
    ``max_tokens`` could otherwise stream without end.

    Raises:
        ChainExhaustedError: every model failed. Errors raised by the sink
        (a lost run, a cancel) propagate unchanged.
    """
    policy = policy or RetryPolicy()
    messages = context_messages(plan)
    state = _ChainState(
        attempt=attempt, needs_reset=reset_first, max_output_chars=max_output_chars
    )
    chain = list(plan.model_chain)
    if not chain:
        raise ChainExhaustedError("model_unavailable", "the plan has no models", [])

    for position, route in enumerate(chain):
        spec = catalog.models.get(route)
        if spec is None:
            # A plan from an agent with another catalogue: skip the model.
            state.last_error = ProviderError(
                f"model {route!r} is not configured",
                error_class="unknown_model",
                kind=ErrorKind.REJECTED,
                retryable=False,
            )
        else:
            max_tokens = min(
                plan.max_output_tokens or spec.max_output_tokens, spec.max_output_tokens
            )
            result = await _call_with_retries(
                route, spec, providers, messages, max_tokens, sink, state, policy, sleep
            )
            if result is not None:
                return result
        if position + 1 < len(chain):
            next_route = chain[position + 1]
            error = state.last_error
            reason = error.error_class if error else "failed"
            logger.warning(
                "model failed, falling back",
                model=route,
                next_model=next_route,
                reason=reason,
            )
            fallback = run_pb.ModelFallback(
                from_model=route, to_model=next_route, reason=reason
            )
            await sink.event(run_pb.OutputEvent(model_fallback=fallback))

    error = state.last_error
    assert error is not None
    code = error.kind.value
    raise ChainExhaustedError(
        code,
        f"all {len(chain)} models failed; last error: {error.message}",
        state.calls,
    )


async def _call_with_retries(
    route: str,
    spec: ModelSpec,
    providers: Mapping[str, ChatProvider],
    messages: Sequence[ChatMessage],
    max_tokens: int,
    sink: OutputSink,
    state: _ChainState,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]],
) -> ChainResult | None:
    # A plain loop rather than tenacity: between tries the chain must record
    # the failed call, send events and decide on a reset, and the cancel of
    # the surrounding task has to reach the stream directly.
    provider = providers[spec.provider]
    retries = 0
    while True:
        try:
            return await _call_once(
                route, spec, provider, messages, max_tokens, sink, state
            )
        except ProviderError as error:
            state.last_error = error.detached()
        error = state.last_error
        if not error.retryable or retries >= spec.max_retries:
            return None
        retries += 1
        delay = policy.delay(retries, error.retry_after_s)
        logger.warning(
            "model call failed, retrying",
            model=route,
            retry=retries,
            max_retries=spec.max_retries,
            retry_in_s=round(delay, 3),
            error_class=error.error_class,
            error=error.message,
        )
        await sleep(delay)


async def _call_once(
    route: str,
    spec: ModelSpec,
    provider: ChatProvider,
    messages: Sequence[ChatMessage],
    max_tokens: int,
    sink: OutputSink,
    state: _ChainState,
) -> ChainResult:
    if state.needs_reset:
        await sink.event(run_pb.OutputEvent(reset=run_pb.Reset(reason="retry")))
        state.needs_reset = False
    call = types_pb2.ModelCall(
        number=len(state.calls) + 1,
        model=route,
        provider=spec.provider,
        started_at=to_timestamp(datetime.now(UTC)),
        attempt=state.attempt,
    )
    usage: TokenUsage | None = None
    streamed = False
    room = state.max_output_chars
    cut = False
    try:
        stream = provider.stream(_named(spec, route), messages, max_tokens)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                if chunk.text:
                    streamed = True
                    text = sanitize(chunk.text)
                    if room is not None:
                        cut = len(text) > room
                        text = text[:room]
                        room -= len(text)
                    if text:
                        await sink.delta(text)
                    if cut:
                        break
                if chunk.usage is not None:
                    usage = chunk.usage
    except ProviderError as error:
        call.ended_at.CopyFrom(to_timestamp(datetime.now(UTC)))
        call.outcome = "failed"
        call.error_class = error.error_class
        call.error_message = error.message
        state.calls.append(call)
        # The client has seen this call's text; the next call replaces it.
        state.needs_reset = streamed
        await sink.event(run_pb.OutputEvent(attempt_failed=call))
        raise

    call.ended_at.CopyFrom(to_timestamp(datetime.now(UTC)))
    call.outcome = "completed"
    total = types_pb2.Usage(
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )
    call.usage.CopyFrom(total)
    if cut:
        call.error_class = "output_limit"
        call.error_message = (
            f"the answer was cut at {state.max_output_chars} characters"
        )
        logger.warning(
            "model output cut at the limit",
            model=route,
            call=call.number,
            max_output_chars=state.max_output_chars,
        )
    state.calls.append(call)
    logger.info("model call completed", model=route, call=call.number)
    return ChainResult(model_used=route, usage=total, calls=state.calls)


def _named(spec: ModelSpec, route: str) -> ModelSpec:
    return spec if spec.name else spec.model_copy(update={"name": route})
