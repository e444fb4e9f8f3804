"""The offline model "bulkhead-echo": a deterministic reply, no network."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from bulkhead.models import ModelSpec
from executor_service.providers.base import ChatMessage, StreamChunk, TokenUsage

ECHO_PREFIX = "You said: "
ECHO_MAX_CHARS = 200
_WORD = re.compile(r"\S+\s*")


def echo_reply(messages: Sequence[ChatMessage]) -> str:
    """Return the reply to the last user message (its first 200 characters)."""
    last_user = next(
        (m["content"] for m in reversed(messages) if m["role"] == "user"), ""
    )
    return ECHO_PREFIX + last_user[:ECHO_MAX_CHARS]


def count_words(text: str) -> int:
    return len(text.split())


class BuiltinProvider:
    """Streams :func:`echo_reply` one word per delta.

    Usage is counted in words, not tokens: prompt tokens are the words of all
    messages, completion tokens the words of the reply (ignoring
    ``max_tokens``, since the reply is short and bounded).
    """

    async def stream(
        self, spec: ModelSpec, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[StreamChunk]:
        reply = echo_reply(messages)
        for index, word in enumerate(_WORD.findall(reply)):
            if index and spec.delta_interval_s:
                await asyncio.sleep(spec.delta_interval_s)
            yield StreamChunk(text=word)
        prompt_words = sum(count_words(m["content"]) for m in messages)
        yield StreamChunk(
            usage=TokenUsage(
                prompt_tokens=prompt_words, completion_tokens=count_words(reply)
            )
        )

    async def aclose(self) -> None:
        return None
